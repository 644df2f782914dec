"""Training and validation samples: cube folders, synthetic scenes, the coded aperture, the simulated measurement.

A sample is ``(truth [28, P, P], mask [P, P], measurement [P, P + 54])``, float32 numpy. Training sample
``index`` of ``epoch`` is a pure function of ``(seed, epoch, index)`` (its own ``numpy`` generator), and the
order of an epoch's indices a pure function of ``(seed, epoch)`` (``epoch_order``), so a run resumed at any
step, or split over several processes, sees exactly the samples an uninterrupted single run would. The network input is then made from the measurement by ``bisr_deploy.frontend`` (the
authors' preprocessing), in the trainer.

Shot noise (real mode, or ``data.shot_noise``): the TSA-Net/BiSCI 11-bit model. With the normalised
measurement m = y * 2 / 28 (the scale the simulation frontend feeds the network), QE = 0.4 and bit = 2048:
m_noisy = Binomial(round(m * bit / QE), QE) / bit, so E[m_noisy] = m; y_noisy = m_noisy * 28 / 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cassi import simulate_snapshot
from ..errors import BisrError
from ..fileio import ARRAY_SUFFIXES, load_array
from .config import DataConfig
from .spectra import default_wavelengths, to_cassi_bands
from .synthetic import generated_mask, synthetic_scene

N_BANDS = 28
SHOT_QE = 0.4
SHOT_BITS = 2048


def _scale_of(path: str, raw: np.ndarray, scale) -> float:
    if scale != "auto":
        return float(scale)
    if raw.dtype == np.uint16:
        return 65535.0
    if raw.dtype == np.uint8:
        return 255.0
    if np.issubdtype(raw.dtype, np.integer):
        raise BisrError(f"{path}: integer cube of dtype {raw.dtype}; set data.scale to its full-scale value")
    return 1.0


def _read_variable(path: str, keys: list[str]) -> np.ndarray:
    """The first of ``keys`` that the file holds (no keys: its only variable)."""
    if not keys:
        return load_array(path)
    for key in keys[:-1]:
        try:
            return load_array(path, key)
        except BisrError as exc:
            if "no variable" not in str(exc):
                raise
    return load_array(path, keys[-1])


def load_cube(path: str | os.PathLike, config: DataConfig) -> np.ndarray:
    """One cube file -> float32 [28, H, W] on the CASSI bands, values in [0, 1]. Raises ``BisrError``."""
    path = str(path)
    raw = _read_variable(path, config.keys)
    if raw.ndim != 3:
        raise BisrError(f"{path}: a cube must be 3-D (H x W x bands or bands x H x W), got shape {raw.shape}")
    if config.wavelengths:
        n_bands = len(config.wavelengths)
    else:
        candidates = [n for n in (raw.shape[-1], raw.shape[0]) if n in (28, 31)]
        if not candidates:
            raise BisrError(f"{path}: cube of shape {raw.shape} has neither 28 nor 31 bands on its first or last axis; "
                            "set data.wavelengths for other band counts")
        n_bands = candidates[0]
    if raw.shape[-1] == n_bands:
        raw = raw.transpose(2, 0, 1)
    elif raw.shape[0] != n_bands:
        raise BisrError(f"{path}: cube of shape {raw.shape} does not have {n_bands} bands on its first or last axis")
    wavelengths = np.asarray(config.wavelengths, dtype=np.float64) if config.wavelengths else default_wavelengths(n_bands)
    cube = raw.astype(np.float32) / np.float32(_scale_of(path, raw, config.scale))
    if not np.all(np.isfinite(cube)):
        raise BisrError(f"{path}: cube contains NaN or Inf values")
    if cube.min() < -1e-3 or cube.max() > 1.0 + 1e-3:
        raise BisrError(f"{path}: values {cube.min():.4g}..{cube.max():.4g} are outside [0, 1] after dividing by "
                        f"the scale; set data.scale")
    return np.clip(to_cassi_bands(cube, wavelengths), 0.0, 1.0)


def load_folder(folder: str | os.PathLike, config: DataConfig, min_size: int) -> list[tuple[str, np.ndarray]]:
    """``(file name, cube)`` for every cube file in ``folder`` (sorted), each at least ``min_size`` high and wide."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BisrError(f"{folder}: no such data folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise BisrError(f"{folder}: data folder holds no cube files ({', '.join(ARRAY_SUFFIXES)})")
    cubes = []
    for path in files:
        cube = load_cube(path, config)
        if min(cube.shape[1:]) < min_size:
            raise BisrError(f"{path}: cube {cube.shape[1]} x {cube.shape[2]} is smaller than the {min_size} x {min_size} crops")
        cubes.append((path.name, cube))
    return cubes


def load_mask(config: DataConfig) -> np.ndarray:
    """The 2-D coded aperture float32 [H, W]: a file, or ``generated_mask(mask_size, mask_size, mask_seed)``."""
    if config.mask == "generated":
        return generated_mask(config.mask_size, config.mask_size, config.mask_seed)
    mask = load_array(config.mask, config.mask_key or None).astype(np.float32)
    if mask.ndim != 2:
        raise BisrError(f"{config.mask}: a mask must be 2-D, got shape {mask.shape}")
    if not np.all(np.isfinite(mask)) or mask.min() < 0:
        raise BisrError(f"{config.mask}: mask values must be finite and non-negative")
    if min(mask.shape) < config.patch_size:
        raise BisrError(f"{config.mask}: mask {mask.shape} is smaller than data.patch_size {config.patch_size}")
    return mask


def shot_noise(measurement: np.ndarray, rng: np.random.Generator, n_bands: int = N_BANDS) -> np.ndarray:
    """The 11-bit shot-noise model of the module docstring, on a raw snapshot (any shape, float32)."""
    normalised = measurement.astype(np.float64) * 2 / n_bands
    counts = np.round(np.clip(normalised, 0, None) * SHOT_BITS / SHOT_QE).astype(np.int64)
    noisy = rng.binomial(counts, SHOT_QE) / SHOT_BITS
    return (noisy * n_bands / 2).astype(np.float32)


def measure(truth: np.ndarray, mask: np.ndarray, step: int = 2) -> np.ndarray:
    """Noise-free CASSI snapshot of one cube: truth [C, H, W], mask [H, W] -> [H, W + step*(C-1)] float32."""
    y = simulate_snapshot(torch.from_numpy(truth)[None], torch.from_numpy(mask), step)
    return y[0].numpy()


def augment(cube: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal/vertical flips and a random multiple of 90° rotation of a square [C, P, P] crop."""
    if rng.uniform() < 0.5:
        cube = cube[:, :, ::-1]
    if rng.uniform() < 0.5:
        cube = cube[:, ::-1, :]
    return np.ascontiguousarray(np.rot90(cube, k=int(rng.integers(4)), axes=(1, 2)))


def _crop(array: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = array.shape[-2:]
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return array[..., top : top + size, left : left + size]


@dataclass
class SampleMaker:
    """Makes training samples; see the module docstring for the determinism contract."""

    config: DataConfig
    mask: np.ndarray  # [Hm, Wm]
    cubes: list[np.ndarray]  # training cubes [28, H, W]
    seed: int
    noisy: bool

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0, epoch, index])
        size = self.config.patch_size
        if not self.cubes or rng.uniform() < self.config.synthetic_fraction:
            # Even seeds for training scenes; held-out scenes (``heldout_synthetic``) use odd ones.
            truth = synthetic_scene(size, size, 2 * int(rng.integers(2**61)))
        else:
            truth = _crop(self.cubes[int(rng.integers(len(self.cubes)))], size, rng)
        truth = augment(truth, rng)
        mask = np.ascontiguousarray(_crop(self.mask, size, rng))
        y = measure(truth, mask)
        if self.noisy:
            y = shot_noise(y, rng)
        return truth, mask, y

    def batch(self, epoch: int, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked samples: truth [B, 28, P, P], mask [B, P, P], measurement [B, P, P+54]."""
        parts = [self.sample(epoch, int(i)) for i in indices]
        return tuple(torch.from_numpy(np.stack(p)) for p in zip(*parts))


def heldout_seed(index: int) -> int:
    """The seed of held-out synthetic scene ``index`` (0, 1, ...): odd seeds 1, 3, 5, ... (training uses even ones)."""
    return 2 * index + 1


def heldout_name(index: int) -> str:
    """The report name of held-out synthetic scene ``index``: its seed, so that 1, 3, 5 read as seeds."""
    return f"synthetic-seed{heldout_seed(index)}"


def heldout_synthetic(count: int, size: int) -> list[np.ndarray]:
    """Held-out synthetic scenes [28, size, size] (``heldout_seed``)."""
    return [synthetic_scene(size, size, heldout_seed(i)) for i in range(count)]


def validation_set(config: DataConfig, mask: np.ndarray, noisy: bool) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(name, truth, mask, measurement)`` per validation scene: val_size crops (top-left of cubes and mask)."""
    size = config.val_size
    if min(mask.shape) < size:
        raise BisrError(f"mask {mask.shape} is smaller than data.val_size {size}")
    crop_mask = np.ascontiguousarray(mask[:size, :size])
    scenes = [(heldout_name(i), cube) for i, cube in enumerate(heldout_synthetic(config.val_synthetic, size))]
    for folder in config.val_folders:
        scenes += [(name, np.ascontiguousarray(cube[:, :size, :size])) for name, cube in load_folder(folder, config, size)]
    rng = np.random.default_rng([0x7A1, 0])
    out = []
    for name, truth in scenes:
        y = measure(truth, crop_mask)
        out.append((name, truth, crop_mask, shot_noise(y, rng) if noisy else y))
    return out


def epoch_order(seed: int, epoch: int, samples_per_epoch: int) -> np.ndarray:
    """The order in which the epoch's sample indices are visited (a permutation, pure in seed and epoch)."""
    return np.random.default_rng([seed, 1, epoch]).permutation(samples_per_epoch)
