"""A raw CASSI snapshot's geometry and validation, without torch (the compiled runtime uses them too).

A snapshot is [H, W + step * (C - 1)] for a scene [C, H, W] whose band c is dispersed ``step * c`` pixels
(``bisr_deploy.cassi`` is the forward model).
"""

from __future__ import annotations

import numpy as np

from .errors import BisrError

DEFAULT_STEP = 2
DEFAULT_BANDS = 28
PAD_MULTIPLE = 8  # scenes are reflect-padded to a multiple of this, as in the authors' code (the body halves twice)
MIN_SCENE_SIZE = PAD_MULTIPLE  # reflect padding by up to PAD_MULTIPLE - 1 needs that many rows and columns


def reflect_padding(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) that ``BiSRNet.forward`` reflect-pads below and to the right of an H x W scene."""
    return (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE


def check_scene_size(height: int, width: int, origin: str = "") -> None:
    """Every scene of at least ``MIN_SCENE_SIZE`` pixels each way runs (the network reflect-pads it to a
    multiple of ``PAD_MULTIPLE`` and crops the result). Raises ``BisrError``."""
    if min(height, width) < MIN_SCENE_SIZE:
        raise BisrError(f"scene size {height} x {width}{origin} is too small: BiSRNet needs at least "
                        f"{MIN_SCENE_SIZE} x {MIN_SCENE_SIZE}")


def snapshot_width(width: int, n_bands: int = DEFAULT_BANDS, step: int = DEFAULT_STEP) -> int:
    """Width of the snapshot of a ``width``-pixel-wide scene."""
    return width + step * (n_bands - 1)


def scene_width(snap_width: int, n_bands: int = DEFAULT_BANDS, step: int = DEFAULT_STEP) -> int:
    """Width of the scene behind a ``snap_width``-pixel-wide snapshot; fails when there is none."""
    width = snap_width - step * (n_bands - 1)
    if width < 1:
        raise BisrError(
            f"snapshot width {snap_width} is too small for {n_bands} bands dispersed by {step} pixels "
            f"(needs more than {step * (n_bands - 1)})"
        )
    return width


def validate_inputs(measurement: np.ndarray, mask: np.ndarray | None, mode: str, n_bands: int = 28, step: int = 2):
    """Check shapes, finiteness (after the cast to float32) and mode requirements; return float32 arrays.
    Raises ``BisrError``."""
    measurement = np.asarray(measurement)
    if measurement.ndim == 3 and measurement.shape[0] == 1:
        measurement = measurement[0]
    if measurement.ndim != 2:
        raise BisrError(f"the measurement must be a 2-D snapshot H x (W+{step * (n_bands - 1)}), got shape {measurement.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf, refused just below
        measurement = measurement.astype(np.float32)
    if not np.all(np.isfinite(measurement)):
        raise BisrError("the measurement contains NaN or Inf values (in float32, the network's precision)")
    h, snap_w = measurement.shape
    w = scene_width(snap_w, n_bands, step)
    check_scene_size(h, w, f" (from snapshot {h} x {snap_w})")
    if mode == "sim":
        if mask is None:
            raise BisrError("this is a simulation-mode checkpoint: give the 2-D coded-aperture mask with --mask")
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[-1] == n_bands and mask.shape[:2] == (h, w):
            raise BisrError(f"the mask must be the 2-D coded aperture {h} x {w}, got a 3-D array {mask.shape}")
        if mask.shape != (h, w):
            raise BisrError(f"mask shape {mask.shape} does not match the scene size {h} x {w} of snapshot {measurement.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            mask = mask.astype(np.float32)
        if not np.all(np.isfinite(mask)):
            raise BisrError("the mask contains NaN or Inf values (in float32, the network's precision)")
    elif not np.any(np.clip(measurement, 0, 1) > 0):
        raise BisrError("the measurement is all zero (after clipping to [0, 1]); nothing to reconstruct")
    return measurement, mask
