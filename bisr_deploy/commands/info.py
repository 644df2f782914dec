"""``bisr-deploy info``: what a checkpoint holds, and what it costs."""

from __future__ import annotations

import json

import click

from ..shipped import DEFAULT_CHECKPOINT, NAMED_CHECKPOINTS, SHIPPED_DIR, resolve_checkpoint
from ..errors import BisrError


@click.command("info", help=f"""The named checkpoints, then parameter counts and operations of one checkpoint
    at a given size. NAME is one of {", ".join(NAMED_CHECKPOINTS)} (default {DEFAULT_CHECKPOINT}); PATH a
    project .safetensors or an authors' .pth.""")
@click.argument("checkpoint_path", required=False, metavar="[NAME|PATH]", type=click.Path(dir_okay=False))
@click.option("--height", default=256, show_default=True, type=int, help="Scene height for the operation count.")
@click.option("--width", default=256, show_default=True, type=int, help="Scene width for the operation count.")
def info_command(checkpoint_path, height, width):
    from .. import complexity
    from ..checkpoint import load_checkpoint

    if height < 8 or width < 8 or height % 4 or width % 4:
        raise BisrError(f"--height/--width must be multiples of 4 and at least 8, got {height} x {width}")
    ckpt = load_checkpoint(checkpoint_path)
    click.echo(f"named checkpoints (in {SHIPPED_DIR}; model card and licenses: MODEL_CARD.md there):")
    for name, description in NAMED_CHECKPOINTS.items():
        default = "  [default]" if name == DEFAULT_CHECKPOINT else ""
        click.echo(f"  {name:<13} {description}{default}")
    click.echo(f"checkpoint    {resolve_checkpoint(checkpoint_path)}")
    counts = complexity.count(ckpt.build_model(), height, width)
    click.echo(f"architecture  {json.dumps(ckpt.config.to_dict())}")
    if ckpt.provenance:
        click.echo(f"provenance    {json.dumps(ckpt.provenance)}")
    if ckpt.training:
        click.echo(f"training      {json.dumps(ckpt.training)}")
    click.echo(f"parameters    binarized {counts.params_binary:,}   full-precision {counts.params_full:,}   "
               f"total {counts.params_binary + counts.params_full:,}")
    click.echo(f"              paper convention (binarized/32 + full-precision): {counts.params_paper / 1e3:.2f} K")
    click.echo(f"MACs at {height} x {width}   binarized {counts.macs_binary / 1e9:.2f} G   full-precision {counts.macs_full / 1e9:.2f} G")
    click.echo(f"              OPs, paper convention (binarized/64 + full-precision): {counts.ops_paper / 1e9:.2f} G")
