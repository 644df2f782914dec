"""``bisr-deploy convert``: an authors' ``.pth`` (or any checkpoint) -> the project's ``.safetensors`` format.

The shipped ``authors-sim`` and ``authors-real`` checkpoints are this command's output on the BiSCI release
(bisr_deploy/shipped/MODEL_CARD.md); the source file's name and sha256 stay in the provenance metadata.
"""

from __future__ import annotations

import click

from ..fileio import check_output, file_sha256
from ..shipped import resolve_checkpoint


@click.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write (atomically).")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None,
              help="Input mode of an authors' .pth (inferred from the file by default).")
def convert_command(source, output, mode):
    """Convert SOURCE (an authors' .pth, a project checkpoint or a checkpoint name) to a project .safetensors."""
    from ..checkpoint import load_checkpoint, save_checkpoint

    check_output(output, "--output", (".safetensors",), (resolve_checkpoint(source),))
    ckpt = load_checkpoint(source, mode)
    save_checkpoint(ckpt, output)
    click.echo(f"wrote {output}: {ckpt.config.mode}-mode, {len(ckpt.state_dict)} tensors, sha256 {file_sha256(output)}")
    if "sha256" in ckpt.provenance:
        click.echo(f"source {ckpt.provenance.get('file')} sha256 {ckpt.provenance['sha256']} (recorded in the metadata)")
