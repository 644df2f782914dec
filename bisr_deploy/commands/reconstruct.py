"""``bisr-deploy reconstruct``: one snapshot -> 28-band cube with the PyTorch model."""

from __future__ import annotations

import click
import numpy as np

from ..errors import BisrError
from ..fileio import ARRAY_OUTPUT_SUFFIXES, check_output, load_array, save_array
from . import checkpoint_option


@click.command("reconstruct")
@checkpoint_option("The model")
@click.option("--measurement", required=True, type=click.Path(dir_okay=False),
              help="Raw 2-D snapshot H x (W+54): .npy, .mat (v5/v7.3) or .h5.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="2-D coded-aperture mask H x W (required by simulation-mode checkpoints).")
@click.option("--key", default=None, help="Variable name inside --measurement when it holds several.")
@click.option("--mask-key", default=None, help="Variable name inside --mask when it holds several.")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None,
              help="Input mode of an authors' .pth (inferred from the file by default).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Cube 28 x H x W: .npy (float32) or .mat.")
@click.option("--truth", type=click.Path(dir_okay=False), default=None,
              help="Ground-truth cube (28 x H x W or H x W x 28) on [0, 1]: print PSNR and SSIM.")
@click.option("--truth-key", default=None, help="Variable name inside --truth.")
@click.option("--preview", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: RGB rendering of the cube and the spectra of a few regions.")
def reconstruct_command(checkpoint_path, measurement, mask_path, key, mask_key, mode, output, truth, truth_key, preview):
    """Reconstruct a hyperspectral cube from one CASSI snapshot."""
    from ..checkpoint import load_checkpoint
    from ..metrics import psnr, ssim
    from ..reconstruct import reconstruct

    inputs = (checkpoint_path, measurement, mask_path, truth)
    check_output(output, "--output", ARRAY_OUTPUT_SUFFIXES, inputs)
    if preview:
        check_output(preview, "--preview", (".png",), inputs + (output,))
    model = load_checkpoint(checkpoint_path, mode).build_model()
    y = load_array(measurement, key)
    mask = load_array(mask_path, mask_key) if mask_path else None
    if mask is not None and model.mode == "real":
        raise BisrError("this is a real-mode checkpoint: it takes no --mask")
    truth_cube = _load_truth(truth, truth_key, model.n_bands) if truth else None
    cube = reconstruct(model, y, mask)
    if truth_cube is not None and truth_cube.shape != cube.shape:
        raise BisrError(f"--truth has shape {truth_cube.shape}, the reconstruction {cube.shape}")
    save_array(output, cube)
    click.echo(f"wrote {output}: cube {cube.shape[0]} x {cube.shape[1]} x {cube.shape[2]} float32")
    if preview:
        from ..preview import write_preview

        write_preview(preview, cube)
        click.echo(f"wrote {preview}")
    if truth_cube is not None:
        click.echo(f"PSNR {psnr(cube, truth_cube):.2f} dB  SSIM {ssim(cube, truth_cube):.4f}")


def _load_truth(path: str, key: str | None, n_bands: int) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes Inf, refused below
        cube = load_array(path, key).astype(np.float32)
    if cube.ndim != 3 or n_bands not in (cube.shape[0], cube.shape[-1]):
        raise BisrError(f"--truth must be a {n_bands}-band cube, got shape {cube.shape}")
    if cube.shape[0] != n_bands:
        cube = np.ascontiguousarray(cube.transpose(2, 0, 1))
    if not np.all(np.isfinite(cube)):
        raise BisrError("--truth contains NaN or Inf values")
    return cube
