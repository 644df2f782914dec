"""The 28 CASSI bands and per-pixel spectral resampling onto them.

CASSI_WAVELENGTHS are the band centres (nm) of the TSA-Net/BiSRNet system. Cubes measured on other grids
(CAVE: 31 bands, 400..700 nm by 10) are resampled by linear interpolation between neighbouring bands.
"""

from __future__ import annotations

import numpy as np

from ..errors import BisrError

CASSI_WAVELENGTHS = np.array([
    453.3, 457.6, 462.1, 466.8, 471.6, 476.5, 481.6, 486.9, 492.4, 498.0, 503.9, 509.9, 516.2, 522.7,
    529.5, 536.5, 543.8, 551.4, 558.6, 567.5, 575.3, 584.3, 594.4, 604.2, 614.4, 625.1, 636.3, 648.1,
])
CAVE_WAVELENGTHS = np.arange(400.0, 701.0, 10.0)


def resample_matrix(source: np.ndarray, target: np.ndarray = CASSI_WAVELENGTHS) -> np.ndarray:
    """Linear-interpolation weights [len(target), len(source)]: ``target_values = W @ source_values``."""
    source = np.asarray(source, dtype=np.float64)
    if source.ndim != 1 or len(source) < 2 or np.any(np.diff(source) <= 0):
        raise BisrError("source wavelengths must be a strictly increasing list of at least two values")
    if target.min() < source[0] or target.max() > source[-1]:
        raise BisrError(f"source wavelengths {source[0]:g}-{source[-1]:g} nm do not cover {target.min():g}-{target.max():g} nm")
    eye = np.eye(len(source))
    return np.stack([np.interp(target, source, eye[j]) for j in range(len(source))], axis=1)


def default_wavelengths(n_bands: int) -> np.ndarray:
    """The grid a cube with ``n_bands`` bands is assumed to use: 28 -> CASSI, 31 -> CAVE; else an error."""
    if n_bands == len(CASSI_WAVELENGTHS):
        return CASSI_WAVELENGTHS
    if n_bands == len(CAVE_WAVELENGTHS):
        return CAVE_WAVELENGTHS
    raise BisrError(f"cubes have {n_bands} bands; expected 28 (CASSI) or 31 (CAVE, 400-700 nm), "
                    "or give data.wavelengths in the config")


def to_cassi_bands(cube: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
    """cube [C, H, W] on ``wavelengths`` -> float32 [28, H, W] on CASSI_WAVELENGTHS."""
    if cube.shape[0] != len(wavelengths):
        raise BisrError(f"cube has {cube.shape[0]} bands but {len(wavelengths)} wavelengths are configured")
    if len(wavelengths) == len(CASSI_WAVELENGTHS) and np.allclose(wavelengths, CASSI_WAVELENGTHS):
        return cube.astype(np.float32)
    weights = resample_matrix(wavelengths).astype(np.float32)
    return np.einsum("tc,chw->thw", weights, cube.astype(np.float32))
