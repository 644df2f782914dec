"""``bisr-deploy simulate``: a ground-truth cube through a coded aperture -> the files the other commands take."""

from __future__ import annotations

import click

from ..errors import BisrError

MEASUREMENT, MASK, TRUTH = "measurement.npy", "mask.npy", "truth.npy"


@click.command("simulate")
@click.option("--scene", required=True, type=click.Path(dir_okay=False),
              help="Ground-truth cube, H x W x bands or bands x H x W, 28 CASSI bands or 31 CAVE bands (400-700 nm, "
                   "resampled to the 28 as the training loader does); uint16/uint8 are scaled to [0, 1].")
@click.option("--key", default=None, help="Variable name inside --scene when it holds several.")
@click.option("--mask", "mask_path", required=True, type=click.Path(dir_okay=False),
              help="2-D coded aperture, at least as large as the scene (its top-left crop is used).")
@click.option("--mask-key", default=None, help="Variable name inside --mask when it holds several.")
@click.option("--height", type=click.IntRange(min=8), default=None, help="Use the scene's top-left rows only.")
@click.option("--width", type=click.IntRange(min=8), default=None, help="Use the scene's top-left columns only.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help=f"Folder (created if missing) for {MEASUREMENT} [H, W+54], {MASK} [H, W] and {TRUTH} [28, H, W].")
def simulate_command(scene, key, mask_path, mask_key, height, width, output_dir):
    """Simulate the CASSI snapshot of a hyperspectral cube (the project's forward model, bisr_deploy/cassi.py)."""
    import numpy as np
    import torch

    from ..cassi import simulate_snapshot
    from ..fileio import check_output_dir, load_array, make_output_dir, save_array
    from ..data.config import DataConfig
    from ..data.datasets import load_cube
    from ..verify import crop_mask

    out = check_output_dir(output_dir, (MEASUREMENT, MASK, TRUTH), inputs=(scene, mask_path))
    cube = load_cube(scene, DataConfig(keys=[key] if key else []))
    height, width = height or cube.shape[1], width or cube.shape[2]
    if height > cube.shape[1] or width > cube.shape[2]:
        raise BisrError(f"--height/--width {height} x {width} exceed the scene's {cube.shape[1]} x {cube.shape[2]}")
    cube = np.ascontiguousarray(cube[:, :height, :width])
    mask = load_array(mask_path, mask_key)
    if mask.ndim != 2 or not np.all(np.isfinite(mask)):
        raise BisrError(f"{mask_path}: the mask must be a finite 2-D array, got shape {mask.shape}")
    mask = crop_mask(mask, height, width)
    snapshot = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    make_output_dir(out)
    for name, array in ((MEASUREMENT, snapshot), (MASK, mask), (TRUTH, cube)):
        save_array(out / name, array.astype(np.float32))
    click.echo(f"wrote {out / MEASUREMENT} ({snapshot.shape[0]} x {snapshot.shape[1]}), {out / MASK} "
               f"({height} x {width}), {out / TRUTH} (28 x {height} x {width})")
