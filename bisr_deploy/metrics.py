"""Image-quality metrics as the CASSI toolbox defines them: per band on [0, 1], averaged over bands.

Both take cubes [C, H, W] with values nominally in [0, 1] (peak 1).
- PSNR: PSNR_c = 10 log10(1 / MSE_c) per band c, mean over bands. (The toolbox's ``torch_psnr`` variant that
  first quantises to round(x * 256) reads about 0.05 dB lower; the reference figures of this project — e.g.
  29.10 dB for the authors' simulation model on the KAIST crop — use the unquantised definition.)
- SSIM (``ssim_torch``): Gaussian window 11 x 11, sigma 1.5, per band, zero padding 5 (same-size maps),
  C1 = 0.01^2, C2 = 0.03^2; mean over the whole map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(cube) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(cube, dtype=np.float64))
    if t.dim() != 3:
        raise ValueError(f"metrics take cubes [C, H, W], got shape {tuple(t.shape)}")
    return t


def psnr(img, ref) -> float:
    """Mean over bands of 10·log10(1 / MSE_c) for cubes [C, H, W] on [0, 1]."""
    img, ref = _as_tensor(img), _as_tensor(ref)
    if img.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    mse = ((img - ref) ** 2).mean(dim=(1, 2))
    return float((10 * torch.log10(1.0 / mse)).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(img, ref) -> float:
    """Mean SSIM of cubes [C, H, W], per-band Gaussian 11x11 (sigma 1.5) statistics, C1 = 1e-4, C2 = 9e-4."""
    img, ref = _as_tensor(img), _as_tensor(ref)
    if img.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    c = img.shape[0]
    window = _gaussian_window().expand(c, 1, 11, 11).contiguous()
    a, b = img[None], ref[None]

    def blur(x):
        return F.conv2d(x, window, padding=5, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
