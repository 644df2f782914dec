"""``bisr-deploy info``: what a checkpoint holds, and what it costs."""

from __future__ import annotations

import json

import click

from .. import complexity
from ..checkpoint import load_checkpoint
from ..errors import BisrError


@click.command("info")
@click.argument("checkpoint_path", required=False, type=click.Path(dir_okay=False))
@click.option("--height", default=256, show_default=True, type=int, help="Scene height for the operation count.")
@click.option("--width", default=256, show_default=True, type=int, help="Scene width for the operation count.")
def info_command(checkpoint_path, height, width):
    """Parameter counts and operations of CHECKPOINT (default: the shipped one) at a given size."""
    if height < 8 or width < 8 or height % 4 or width % 4:
        raise BisrError(f"--height/--width must be multiples of 4 and at least 8, got {height} x {width}")
    ckpt = load_checkpoint(checkpoint_path)
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
