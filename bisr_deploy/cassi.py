"""The CASSI forward model: coded aperture, per-band dispersion, detector integration.

Conventions (those of the BiSRNet authors' code, TSA-Net data):
- a cube is float [B, C, H, W] (C bands, band 0 is the shortest wavelength);
- a 2-D mask is [H, W] (or [B, H, W]) and is applied identically to every band;
- band c is dispersed ``step * c`` pixels to the right, so a snapshot is [B, H, W + step * (C - 1)];
- ``shift_back`` inverts the dispersion geometrically: band c of the result is snapshot columns
  ``[step * c, step * c + W)`` (Eq. 1 of the paper).
"""

from __future__ import annotations

import torch

from .errors import BisrError
from .snapshot import DEFAULT_BANDS, DEFAULT_STEP, scene_width, snapshot_width


def shift(cube: torch.Tensor, step: int = DEFAULT_STEP) -> torch.Tensor:
    """Disperse: [B, C, H, W] -> [B, C, H, W + step*(C-1)], band c moved right by step*c, zeros elsewhere."""
    if cube.dim() != 4:
        raise BisrError(f"a cube must be [B, C, H, W], got shape {tuple(cube.shape)}")
    b, c, h, w = cube.shape
    out = cube.new_zeros(b, c, h, snapshot_width(w, c, step))
    for band in range(c):
        out[:, band, :, step * band : step * band + w] = cube[:, band]
    return out


def shift_back(snapshot: torch.Tensor, n_bands: int = DEFAULT_BANDS, step: int = DEFAULT_STEP) -> torch.Tensor:
    """Undo the dispersion: [B, H, W'] -> [B, n_bands, H, W' - step*(n_bands-1)], band c = columns [step*c, step*c+W)."""
    if snapshot.dim() != 3:
        raise BisrError(f"a snapshot batch must be [B, H, W'], got shape {tuple(snapshot.shape)}")
    w = scene_width(snapshot.shape[-1], n_bands, step)
    return torch.stack([snapshot[:, :, step * c : step * c + w] for c in range(n_bands)], dim=1)


def _check_mask(cube: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() not in (2, 3) or mask.shape[-2:] != cube.shape[-2:]:
        raise BisrError(
            f"mask shape {tuple(mask.shape)} does not match the scene's {tuple(cube.shape[-2:])} (H, W)"
        )
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.shape[0] not in (1, cube.shape[0]):
        raise BisrError(f"mask batch {mask.shape[0]} does not match the cube batch {cube.shape[0]}")
    return mask.unsqueeze(1)


def simulate_snapshot(cube: torch.Tensor, mask: torch.Tensor, step: int = DEFAULT_STEP) -> torch.Tensor:
    """The CASSI measurement: sum over bands of shift(mask * cube). cube [B,C,H,W], mask [H,W] or [B,H,W] -> [B,H,W+step*(C-1)]."""
    if cube.dim() != 4:
        raise BisrError(f"a cube must be [B, C, H, W], got shape {tuple(cube.shape)}")
    return shift(cube * _check_mask(cube, mask).to(cube.dtype), step).sum(dim=1)


def adjoint(snapshot: torch.Tensor, mask: torch.Tensor, n_bands: int = DEFAULT_BANDS, step: int = DEFAULT_STEP) -> torch.Tensor:
    """Adjoint of ``simulate_snapshot``: mask * shift_back(snapshot). Satisfies <A x, y> = <x, A^T y>."""
    back = shift_back(snapshot, n_bands, step)
    return back * _check_mask(back, mask).to(back.dtype)
