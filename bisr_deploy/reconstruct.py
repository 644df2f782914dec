"""One reconstruction from a raw snapshot: validation, the authors' preprocessing, the network.

Contract: ``measurement`` float [H, W + step*(C-1)] (raw sensor snapshot), ``mask`` float [H, W] for
simulation-mode models; result float32 [C, H, W]. Real-mode results are clamped to [0, 1] as the authors'
test code does; simulation-mode results are returned as the network computes them.
"""

from __future__ import annotations

import numpy as np
import torch

from .cassi import scene_width
from .errors import BisrError
from .frontend import SnapshotFrontend
from .model import BiSRNet


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
    if h % 4 or w % 4:
        raise BisrError(f"scene size {h} x {w} (from snapshot {h} x {snap_w}) must be a multiple of 4 in both directions")
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


@torch.no_grad()
def bisr_conv_io(model: BiSRNet, measurement: np.ndarray, mask: np.ndarray | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BiSR-Conv name: (its input X, its output Y)}, each [1, C, H, W] float32, from one forward pass of
    ``model`` on a raw snapshot [H, W'] (+ mask [H, W])."""
    measurement, mask = validate_inputs(measurement, mask, model.mode, model.n_bands)
    captured = {}
    hooks = [conv.register_forward_hook(lambda m, args, out, name=name: captured.__setitem__(name, (args[0], out)))
             for name, conv in model.bisr_convs().items()]
    try:
        frontend = SnapshotFrontend(model.mode, model.n_bands)
        model(*frontend(torch.from_numpy(measurement)[None], None if mask is None else torch.from_numpy(mask)[None]))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@torch.no_grad()
def reconstruct(model: BiSRNet, measurement: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Raw snapshot [H, W'] (+ mask [H, W]) -> cube float32 [C, H, W]."""
    measurement, mask = validate_inputs(measurement, mask, model.mode, model.n_bands)
    frontend = SnapshotFrontend(model.mode, model.n_bands)
    y = torch.from_numpy(measurement)[None]
    m = torch.from_numpy(mask)[None] if mask is not None else None
    h, mask3d = frontend(y, m)
    out = model(h, mask3d)
    if model.mode == "real":
        out = out.clamp(0.0, 1.0)
    return out[0].numpy().astype(np.float32)
