"""`bisr-deploy simulate`: a cube (28 or 31 bands) and a mask -> measurement, mask and truth files for the other commands."""

from __future__ import annotations

import numpy as np
import scipy.io
from click.testing import CliRunner

from bisr_deploy.cli import main
from bisr_deploy.data.spectra import CASSI_WAVELENGTHS, CAVE_WAVELENGTHS

from .conftest import SHARED, SIM_PTH, STANDARD_MASK

CAVE_CLOTH = SHARED / "hsi-scenes" / "cave" / "cloth_ms_256.mat"


def _simulate(*args):
    return CliRunner().invoke(main, ["simulate", *map(str, args)])


def test_cave_31_band_uint16_scene_feeds_reconstruct(tmp_path):
    out = tmp_path / "new" / "cave"  # created with its parent
    result = _simulate("--scene", CAVE_CLOTH, "--mask", STANDARD_MASK, "--height", 40, "--width", 48, "--output-dir", out)
    assert result.exit_code == 0, result.output
    y, mask, truth = (np.load(out / name) for name in ("measurement.npy", "mask.npy", "truth.npy"))
    assert y.shape == (40, 48 + 54) and mask.shape == (40, 48) and truth.shape == (28, 40, 48)
    assert y.dtype == mask.dtype == truth.dtype == np.float32
    raw = scipy.io.loadmat(CAVE_CLOTH)["NRD"]
    assert raw.dtype == np.uint16 and raw.shape[-1] == 31
    # 31 CAVE bands (400..700 nm) -> the 28 CASSI bands by linear interpolation of raw / 65535, per pixel
    for r, c in [(0, 0), (17, 33), (39, 47)]:
        want = np.interp(CASSI_WAVELENGTHS, CAVE_WAVELENGTHS, raw[r, c].astype(np.float64) / 65535)
        np.testing.assert_allclose(truth[:, r, c], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mask, scipy.io.loadmat(STANDARD_MASK)["mask"][:40, :48])
    # the snapshot: band b of mask * truth lands at columns [2b, 2b + W)
    want_y = np.zeros((40, 102), np.float64)
    for b in range(28):
        want_y[:, 2 * b:2 * b + 48] += mask * truth[b]
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    rec = CliRunner().invoke(main, ["reconstruct", "--checkpoint", str(SIM_PTH), "--measurement", str(out / "measurement.npy"),
                                    "--mask", str(out / "mask.npy"), "--truth", str(out / "truth.npy"),
                                    "--output", str(tmp_path / "cube.npy")])
    assert rec.exit_code == 0, rec.output
    assert float(rec.output.split("PSNR ")[1].split(" dB")[0]) > 15.0


def test_bad_input_is_one_error_line(tmp_path):
    cube = tmp_path / "cube.npy"
    np.save(cube, np.random.default_rng(0).random((32, 32, 28)).astype(np.float32))
    np.save(tmp_path / "small_mask.npy", np.ones((16, 16), np.float32))
    np.save(tmp_path / "bands.npy", np.zeros((32, 32, 5), np.float32))
    cases = [
        (["--scene", cube, "--mask", tmp_path / "small_mask.npy"], "mask (16, 16) is smaller than the scene size 32 x 32"),
        (["--scene", tmp_path / "bands.npy", "--mask", STANDARD_MASK], "has neither 28 nor 31 bands"),
        (["--scene", cube, "--mask", STANDARD_MASK, "--height", 64], "--height/--width 64 x 32 exceed the scene's 32 x 32"),
    ]
    for args, message in cases:
        result = _simulate(*args, "--output-dir", tmp_path / "out")
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
