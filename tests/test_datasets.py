"""Cube files, spectral resampling, synthetic scenes, samples and the shot-noise model of bisr_deploy.train."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from bisr_deploy.cassi import simulate_snapshot
from bisr_deploy.checkpoint import SHIPPED_DIR
from bisr_deploy.errors import BisrError
from bisr_deploy.frontend import SnapshotFrontend
from bisr_deploy.data.config import DataConfig
from bisr_deploy.data.datasets import (
    SHOT_BITS,
    SHOT_QE,
    SampleMaker,
    augment,
    epoch_order,
    heldout_synthetic,
    load_cube,
    load_folder,
    load_mask,
    shot_noise,
)
from bisr_deploy.data.spectra import CASSI_WAVELENGTHS, CAVE_WAVELENGTHS, resample_matrix, to_cassi_bands
from bisr_deploy.data.synthetic import generated_mask, reflectance_library, synthetic_scene

from .conftest import CAVE_SCENES, STANDARD_MASK


def _cave_like(h=20, w=24, seed=0) -> np.ndarray:
    """uint16 H x W x 31 cube whose spectrum is linear in wavelength (so linear resampling is exact)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 0.5, size=(h, w, 1))
    b = rng.uniform(0, 0.4, size=(h, w, 1))
    spectra = a + b * (CAVE_WAVELENGTHS - 400) / 300
    return np.round(spectra * 65535).astype(np.uint16)


def _expected_cassi(raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float64) / 65535
    a = x[..., 0:1]
    slope = (x[..., -1:] - a) / 300
    return (a + slope * (CASSI_WAVELENGTHS - 400)).transpose(2, 0, 1)


def test_resampling_is_linear_interpolation():
    weights = resample_matrix(CAVE_WAVELENGTHS)
    assert weights.shape == (28, 31)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # 453.3 nm lies between 450 (index 5) and 460 (index 6): weights 0.67 and 0.33.
    np.testing.assert_allclose(weights[0, 5:7], [0.67, 0.33], atol=1e-12)
    cube = np.random.default_rng(1).uniform(size=(28, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(to_cassi_bands(cube, CASSI_WAVELENGTHS), cube)
    with pytest.raises(BisrError, match="do not cover"):
        resample_matrix(np.arange(500.0, 701.0, 10.0))


def test_mat_v5_v73_npy_npz_give_the_same_cube(tmp_path):
    import h5py

    raw = _cave_like()
    scipy.io.savemat(tmp_path / "v5.mat", {"img": raw})
    # MATLAB v7.3: HDF5 with a 512-byte MATLAB header, arrays stored transposed (column-major).
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as fh:
        fh.create_dataset("data_slice", data=raw.T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Nov 25 00:00:00 2026 HDF5 schema 1.00 ."
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")
    np.save(tmp_path / "c.npy", raw.transpose(2, 0, 1).astype(np.float32) / 65535)
    np.savez(tmp_path / "c.npz", other=np.zeros(3), img=raw)
    config = DataConfig(keys=["img", "data_slice"])
    expected = _expected_cassi(raw)
    for name in ("v5.mat", "v73.mat", "c.npy", "c.npz"):
        cube = load_cube(tmp_path / name, config)
        assert cube.shape == (28, 20, 24) and cube.dtype == np.float32, name
        np.testing.assert_allclose(cube, expected, atol=3e-5, err_msg=name)
    names = [name for name, _ in load_folder(tmp_path, config, 16)]
    assert names == ["c.npy", "c.npz", "v5.mat", "v73.mat"]


def test_scale_option_and_out_of_range_values(tmp_path):
    raw = _cave_like()
    np.save(tmp_path / "raw.npy", raw.astype(np.float32))  # float but on a 0..65535 scale
    with pytest.raises(BisrError, match="outside \\[0, 1\\].*data.scale"):
        load_cube(tmp_path / "raw.npy", DataConfig())
    cube = load_cube(tmp_path / "raw.npy", DataConfig(scale=65535.0))
    np.testing.assert_allclose(cube, _expected_cassi(raw), atol=3e-5)


def test_bad_data_folders(tmp_path):
    with pytest.raises(BisrError, match="holds no cube files"):
        load_folder(tmp_path, DataConfig(), 16)
    with pytest.raises(BisrError, match="no such data folder"):
        load_folder(tmp_path / "missing", DataConfig(), 16)
    np.save(tmp_path / "bad.npy", np.zeros((20, 20, 30), np.float32))
    with pytest.raises(BisrError, match="neither 28 nor 31 bands"):
        load_folder(tmp_path, DataConfig(), 16)
    with pytest.raises(BisrError, match="does not have 31 bands"):
        load_cube(tmp_path / "bad.npy", DataConfig(wavelengths=list(CAVE_WAVELENGTHS)))
    np.save(tmp_path / "bad.npy", np.zeros((28, 8, 8), np.float32))
    with pytest.raises(BisrError, match="smaller than the 16 x 16 crops"):
        load_folder(tmp_path, DataConfig(), 16)


def test_real_cave_scenes_load_with_their_keys():
    folder = CAVE_SCENES
    cubes = dict(load_folder(folder, DataConfig(keys=["NRD", "Omsi", "msi"]), 64))
    assert len(cubes) == 8
    cloth = cubes["cloth_ms_256.mat"]
    assert cloth.shape == (28, 256, 256) and 0.0 <= cloth.min() and cloth.max() <= 1.0
    raw = scipy.io.loadmat(folder / "cloth_ms_256.mat")["NRD"].astype(np.float64) / 65535
    # Band 16 (536.5 nm) interpolates 530 nm and 540 nm with weights 0.35 and 0.65.
    np.testing.assert_allclose(cloth[15], 0.35 * raw[..., 13] + 0.65 * raw[..., 14], atol=1e-6)


def test_reflectance_library_is_measured_spectra():
    lib = reflectance_library()
    assert lib.shape[1] == 28 and lib.shape[0] >= 150
    assert lib.min() >= 0.0 and lib.max() <= 1.0
    # Reflectances are smooth: neighbouring bands (~4-10 nm apart) differ by little.
    assert np.abs(np.diff(lib, axis=1)).max() < 0.25 and np.median(np.abs(np.diff(lib, axis=1))) < 0.01


def test_synthetic_scene_is_deterministic_and_structured():
    a = synthetic_scene(96, 80, seed=7)
    assert a.shape == (28, 96, 80) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.mean() > 0.02
    np.testing.assert_array_equal(a, synthetic_scene(96, 80, seed=7))
    assert not np.array_equal(a, synthetic_scene(96, 80, seed=8))
    # Many distinct regions with different spectra, piecewise smooth: most neighbour steps are small.
    spectra = a.reshape(28, -1).T
    assert len(np.unique(np.round(spectra / spectra.sum(1, keepdims=True).clip(1e-6), 2), axis=0)) > 20
    steps = np.abs(np.diff(a, axis=2)).mean(axis=0)
    assert np.median(steps) < 0.01 < steps.max()


def test_heldout_synthetic_uses_odd_seeds():
    scenes = heldout_synthetic(2, 32)
    np.testing.assert_array_equal(scenes[1], synthetic_scene(32, 32, 3))


def test_generated_mask_is_binary_half_open():
    mask = generated_mask(256, 256)
    assert set(np.unique(mask)) == {0.0, 1.0} and abs(mask.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(mask, generated_mask(256, 256, 0))
    assert load_mask(DataConfig()).shape == (256, 256)


def test_augment_permutes_pixels():
    cube = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    seen = set()
    for seed in range(40):
        out = augment(cube, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(cube, axis=None))
        assert out[0, 0, 0] in (0, 3, 12, 15)  # a corner stays a corner
        seen.add(out.tobytes())
    assert len(seen) == 8  # the dihedral group of the square


def test_samples_are_deterministic_and_measured_like_the_authors():
    config = DataConfig(patch_size=32, synthetic_fraction=0.5, mask=str(STANDARD_MASK), mask_key="mask")
    mask = load_mask(config)
    cave = np.clip(np.random.default_rng(0).uniform(size=(28, 40, 40)), 0, 1).astype(np.float32)
    maker = SampleMaker(config, mask, [cave], seed=3, noisy=False)
    truth, crop, y = maker.sample(2, 5)
    again = maker.sample(2, 5)
    for x, z in zip((truth, crop, y), again):
        np.testing.assert_array_equal(x, z)
    assert not np.array_equal(truth, maker.sample(2, 6)[0])
    assert truth.shape == (28, 32, 32) and crop.shape == (32, 32) and y.shape == (32, 32 + 54)
    # The mask patch is a crop of the standard mask.
    hits = [(i, j) for i in range(256 - 31) for j in range(256 - 31) if mask[i, j] == crop[0, 0]
            and np.array_equal(mask[i : i + 32, j : j + 32], crop)]
    assert hits
    # Network input: band c of frontend(y) = columns [2c, 2c+32) of y * 2 / 28; y = sum_c shift(mask * x).
    np.testing.assert_allclose(y, simulate_snapshot(torch.from_numpy(truth)[None], torch.from_numpy(crop))[0].numpy())
    h, mask3d = SnapshotFrontend("sim")(torch.from_numpy(y)[None], torch.from_numpy(crop)[None])
    np.testing.assert_allclose(h[0, 27].numpy(), y[:, 54:86] / 14, rtol=1e-6)
    assert torch.equal(mask3d[0, 5], torch.from_numpy(crop))
    batch = maker.batch(2, [5, 6])
    assert [tuple(t.shape) for t in batch] == [(2, 28, 32, 32), (2, 32, 32), (2, 32, 86)]
    np.testing.assert_array_equal(batch[0][0].numpy(), truth)


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(0, 3, 50)
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, epoch_order(0, 3, 50))
    assert not np.array_equal(order, epoch_order(0, 4, 50))


def test_shot_noise_statistics():
    y = np.full((400, 500), 7.0, np.float32)  # normalised measurement m = 7 * 2 / 28 = 0.5
    noisy = shot_noise(y, np.random.default_rng(0))
    m = noisy * 2 / 28
    assert abs(m.mean() - 0.5) < 1e-3
    expected_var = 0.5 * (1 - SHOT_QE) / SHOT_BITS  # Binomial(n = m bit / QE, QE) / bit
    assert abs(m.var() / expected_var - 1) < 0.03
    # Counts are integers on the 1/bit grid.
    np.testing.assert_allclose(m * SHOT_BITS, np.round(m * SHOT_BITS), atol=1e-3)


def test_shipped_generated_mask_file_is_the_generated_mask():
    shipped = np.load(SHIPPED_DIR / "mask-generated-256.npy")
    assert shipped.dtype == np.uint8
    np.testing.assert_array_equal(shipped.astype(np.float32), generated_mask(256, 256, 0))
