"""``bisr-deploy run``: one snapshot -> cube with a compiled artifact."""

from __future__ import annotations

from pathlib import Path

import click

from ..fileio import ARRAY_OUTPUT_SUFFIXES, check_output, load_array, save_array


@click.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--measurement", required=True, type=click.Path(dir_okay=False), help="Raw snapshot H x (W+54).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None, help="2-D mask H x W (sim mode).")
@click.option("--key", default=None, help="Variable name inside --measurement when it holds several.")
@click.option("--mask-key", default=None, help="Variable name inside --mask when it holds several.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads, at least 1 (default: all cores).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Cube 28 x H x W: .npy or .mat.")
def run_command(artifact, measurement, mask_path, key, mask_key, threads, output):
    """Reconstruct a cube with a compiled artifact (made by `bisr-deploy compile`).

    An aarch64 artifact on an x86 machine runs under emulation (docs/arm.md); the output is the same, the speed is not."""
    from .. import emulation
    from ..artifact import read_manifest
    from ..runtime import load, set_num_threads

    check_output(output, "--output", ARRAY_OUTPUT_SUFFIXES, (measurement, mask_path, *Path(artifact).glob("*")))
    y = load_array(measurement, key)
    mask = load_array(mask_path, mask_key) if mask_path else None
    if emulation.is_foreign(read_manifest(artifact)):
        cube = emulation.run_artifact(artifact, y, mask)
    else:
        model = load(artifact)
        if threads is not None:
            set_num_threads(threads)
        cube = model(y, mask)
    save_array(output, cube)
    click.echo(f"wrote {output}: cube {cube.shape[0]} x {cube.shape[1]} x {cube.shape[2]} float32")
