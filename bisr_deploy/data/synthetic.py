"""Synthetic 28-band scenes built from measured reflectance spectra, and a generated coded aperture.

Spectra: the measured surface reflectances that colour-science ships (ColorChecker patches from four
sources, the 30 PMC patches, the CIE 1995 test colour samples and the CQS samples), resampled to the 28
CASSI bands (``CASSI_WAVELENGTHS``). Structure: a dead-leaves model (random occluding discs, ellipses and
rectangles with power-law sizes, the classic model of natural-image statistics); each leaf has a spectrum
(a mixture of two library spectra), a smooth shading gradient, and sometimes a stripe texture mixing in a
second spectrum. Edges are softened by a small blur. Values are reflectance x illumination, in [0, 1].

Every scene is a pure function of ``(height, width, seed)``: the same call gives the same bytes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import BisrError
from .spectra import resample_matrix

# Distinct measured sets (colour-science also registers aliases such as 'babel_average'; those are skipped).
_CHECKER_SETS = ("BabelColor Average", "ColorChecker N Ohta", "ISO 17321-1", "PMC")


@lru_cache(maxsize=1)
def reflectance_library() -> np.ndarray:
    """Measured reflectance spectra on the 28 CASSI bands: float32 [K, 28], values in [0, 1]."""
    try:
        import colour
        from colour.quality import SDS_TCS, SDS_VS
    except ImportError as exc:
        raise BisrError("synthetic scenes need colour-science (pip install colour-science)") from exc
    sds = []
    for name in _CHECKER_SETS:
        sds.extend(colour.SDS_COLOURCHECKERS[name].values())
    for group in (SDS_TCS, SDS_VS):
        for collection in group.values():
            sds.extend(collection.values())
    spectra = [resample_matrix(np.asarray(sd.wavelengths, dtype=np.float64)) @ np.asarray(sd.values, dtype=np.float64)
               for sd in sds]
    return np.clip(np.stack(spectra), 0.0, 1.0).astype(np.float32)


def _leaf_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: float) -> np.ndarray:
    cy, cx = rng.uniform(-0.1, 1.1, size=2) * np.array(yy.shape)
    kind = rng.integers(3)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    aspect = rng.uniform(0.3, 1.0)
    if kind == 0:  # disc
        return dx * dx + dy * dy <= size * size
    if kind == 1:  # ellipse
        return (u / size) ** 2 + (v / (size * aspect)) ** 2 <= 1.0
    return (np.abs(u) <= size) & (np.abs(v) <= size * aspect)  # rectangle


def synthetic_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A plausible hyperspectral scene: float32 [28, height, width] in [0, 1], deterministic in ``seed``."""
    if height < 1 or width < 1:
        raise BisrError(f"scene size must be positive, got {height} x {width}")
    rng = np.random.default_rng([0x5C3E, int(seed)])
    lib = reflectance_library()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    extent = float(max(height, width))
    n_leaves = int(rng.integers(40, 120))

    def spectrum():
        a, b = lib[rng.integers(len(lib), size=2)]
        t = rng.uniform()
        return t * a + (1 - t) * b

    # Background leaf covers everything; later leaves occlude earlier ones.
    spec_a = np.empty((n_leaves + 1, lib.shape[1]), np.float32)
    spec_b = np.empty_like(spec_a)
    spec_a[0], spec_b[0] = spectrum(), spectrum()
    label = np.zeros((height, width), np.int32)
    texture = np.zeros((height, width), np.float32)
    shading = np.ones((height, width), np.float32)
    for i in range(1, n_leaves + 1):
        # Power-law radii between 1.5 % and 40 % of the extent (dead-leaves statistics).
        size = extent * 0.015 * (0.4 / 0.015) ** (rng.uniform() ** 2.0)
        inside = _leaf_mask(rng, yy, xx, size)
        if not inside.any():
            continue
        spec_a[i], spec_b[i] = spectrum(), spectrum()
        label[inside] = i
        gy, gx = rng.normal(0, 0.6 / extent, size=2)
        shade = 1.0 + gy * (yy[inside] - yy[inside].mean()) + gx * (xx[inside] - xx[inside].mean())
        shading[inside] = np.clip(shade * rng.uniform(0.6, 1.0), 0.2, 1.2)
        if rng.uniform() < 0.3:  # stripes mixing the second spectrum in
            freq = rng.uniform(0.05, 0.5)
            theta = rng.uniform(0, np.pi)
            phase = xx[inside] * np.cos(theta) + yy[inside] * np.sin(theta)
            texture[inside] = 0.5 + 0.5 * np.sin(phase * freq)
        else:
            texture[inside] = 0.0
    weight = texture[..., None]
    cube = (1 - weight) * spec_a[label] + weight * spec_b[label]
    cube *= shading[..., None]
    # Global illumination: a smooth spectral tilt and a brightness level.
    tilt = 1.0 + rng.uniform(-0.3, 0.3) * np.linspace(-1, 1, lib.shape[1], dtype=np.float32)
    cube *= tilt * rng.uniform(0.6, 1.0)
    cube = gaussian_filter(cube, sigma=(rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0), 0.0))
    return np.ascontiguousarray(np.clip(cube, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def generated_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random binary coded aperture (Bernoulli 1/2, as in the CASSI literature): float32 [height, width] of 0/1."""
    rng = np.random.default_rng([0x3A5C, int(seed)])
    return (rng.uniform(size=(height, width)) < 0.5).astype(np.float32)
