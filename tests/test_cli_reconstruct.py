"""`bisr-deploy reconstruct` and `info` through the real console script: outputs, metrics, and every bad input."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from .conftest import KAIST_NPZ, REAL_PTH, REAL_SCENES, SIM_PTH

pytestmark = pytest.mark.needs_data


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bisr_deploy.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def kaist_files(tmp_path_factory, kaist, kaist_snapshot):
    d = tmp_path_factory.mktemp("kaist")
    cube, mask = kaist
    np.save(d / "y.npy", kaist_snapshot)
    np.save(d / "mask.npy", mask)
    np.save(d / "truth.npy", cube)
    scipy.io.savemat(d / "y.mat", {"meas": kaist_snapshot})
    scipy.io.savemat(d / "two.mat", {"meas": kaist_snapshot, "other": kaist_snapshot})
    # MATLAB v7.3: HDF5 behind a 512-byte MATLAB header, arrays stored column-major (transposed)
    with h5py.File(d / "y73.mat", "w", userblock_size=512) as fh:
        fh["meas"] = kaist_snapshot.T
    with open(d / "y73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Nov 25 2026 HDF5 schema 1.00 .".ljust(116))
        fh.write(b"\x00" * 8 + b"\x00\x02IM")
    with h5py.File(d / "y.h5", "w") as fh:
        fh["meas"] = kaist_snapshot
    return d


def test_reconstruct_with_truth_prints_authors_psnr(kaist_files, tmp_path):
    out = tmp_path / "cube.npy"
    res = run_cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", kaist_files / "y.mat",
                  "--mask", kaist_files / "mask.npy", "--output", out, "--truth", KAIST_NPZ, "--truth-key", "img")
    assert res.returncode == 0, res.stderr
    psnr = float(res.stdout.split("PSNR ")[1].split(" dB")[0])
    assert psnr == pytest.approx(29.10, abs=0.05)
    cube = np.load(out)
    assert cube.shape == (28, 128, 128) and cube.dtype == np.float32


def test_mat_v73_h5_npy_inputs_agree(kaist_files, tmp_path):
    a, b, c = tmp_path / "a.npy", tmp_path / "b.mat", tmp_path / "c.npy"
    for source, out in ((kaist_files / "y73.mat", a), (kaist_files / "y.h5", c)):
        res = run_cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", source, "--mask", kaist_files / "mask.npy", "--output", out)
        assert res.returncode == 0, res.stderr
    res = run_cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", kaist_files / "y.npy",
                  "--mask", kaist_files / "mask.npy", "--output", b, "--preview", tmp_path / "p.png")
    assert res.returncode == 0, res.stderr
    assert np.array_equal(np.load(a), scipy.io.loadmat(b)["cube"])
    assert np.array_equal(np.load(a), np.load(c))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_checkpoint_on_real_snapshot(tmp_path):
    out = tmp_path / "scene.npy"
    crop = tmp_path / "crop.npy"
    np.save(crop, scipy.io.loadmat(REAL_SCENES / "scene1.mat")["meas_real"][:64, : 64 + 54])
    res = run_cli("reconstruct", "--checkpoint", REAL_PTH, "--measurement", crop, "--output", out)
    assert res.returncode == 0, res.stderr
    assert np.load(out).shape == (28, 64, 64)


def _bad(kaist_files, tmp_path, **override):
    args = {"--checkpoint": SIM_PTH, "--measurement": kaist_files / "y.npy", "--mask": kaist_files / "mask.npy",
            "--output": tmp_path / "out.npy"}
    args.update(override)
    flat = [x for k, v in args.items() if v is not None for x in (k, v)]
    res = run_cli("reconstruct", *flat)
    out = args["--output"]
    return res, out


@pytest.mark.parametrize(
    "case, message",
    [
        ("ambiguous_key", "holds several variables (meas, other); choose one with --key"),
        ("wrong_key", "no variable 'nope'"),
        ("wrong_shape", "must be a 2-D snapshot"),
        ("nan", "contains NaN or Inf"),
        ("inf", "contains NaN or Inf"),
        ("mask_size", "mask shape (64, 64) does not match the scene size 128 x 128"),
        ("mask_missing", "give the 2-D coded-aperture mask with --mask"),
        ("mask_3d", "must be the 2-D coded aperture"),
        ("band_count", "--truth must be a 28-band cube"),
        ("truncated_ckpt", "truncated or corrupt"),
        ("not_ckpt", "not a checkpoint"),
        ("unwritable", "directory"),
        ("bad_suffix", "output must be .npy or .mat"),
        ("too_narrow", "too small for 28 bands"),
    ],
)
def test_bad_input_one_line_no_output(case, message, kaist_files, tmp_path, kaist_snapshot):
    d = tmp_path
    over = {}
    if case == "ambiguous_key":
        over["--measurement"] = kaist_files / "two.mat"
    elif case == "wrong_key":
        over.update({"--measurement": kaist_files / "y.mat", "--key": "nope"})
    elif case == "wrong_shape":
        np.save(d / "y3.npy", np.stack([kaist_snapshot] * 2))
        over["--measurement"] = d / "y3.npy"
    elif case in ("nan", "inf"):
        y = kaist_snapshot.copy()
        y[3, 5] = np.nan if case == "nan" else np.inf
        np.save(d / "bad.npy", y)
        over["--measurement"] = d / "bad.npy"
    elif case == "mask_size":
        np.save(d / "m.npy", np.ones((64, 64), np.float32))
        over["--mask"] = d / "m.npy"
    elif case == "mask_missing":
        over["--mask"] = None
    elif case == "mask_3d":
        np.save(d / "m.npy", np.ones((128, 128, 28), np.float32))
        over["--mask"] = d / "m.npy"
    elif case == "band_count":
        np.save(d / "t.npy", np.zeros((31, 128, 128), np.float32))
        over["--truth"] = d / "t.npy"
    elif case == "truncated_ckpt":
        (d / "t.pth").write_bytes(SIM_PTH.read_bytes()[:100_000])
        over["--checkpoint"] = d / "t.pth"
    elif case == "not_ckpt":
        over["--checkpoint"] = kaist_files / "y.npy"
    elif case == "unwritable":
        over["--output"] = d / "no" / "such" / "dir" / "out.npy"
    elif case == "bad_suffix":
        over["--output"] = d / "out.txt"
    elif case == "too_narrow":
        np.save(d / "narrow.npy", np.ones((128, 50), np.float32))
        over["--measurement"] = d / "narrow.npy"
    res, out = _bad(kaist_files, d, **over)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists()
    if case == "unwritable":
        assert not out.parent.exists()  # the missing directory was not created either
    else:  # no temporary file (atomic_output names them ".<name>.*") was left beside the output
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_info_reports_paper_counts():
    res = run_cli("info", SIM_PTH)
    assert res.returncode == 0, res.stderr
    assert "binarized 611,072   full-precision 48,247" in res.stdout
    assert "binarized 9.44 G   full-precision 1.03 G" in res.stdout
    assert "(binarized/64 + full-precision): 1.18 G" in res.stdout


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == "bisr-deploy, version 0.1.0"
    for cmd in ("reconstruct", "info", "train", "evaluate", "export", "compile", "run", "verify", "bench", "estimate"):
        res = run_cli(cmd, "--help")
        assert res.returncode == 0 and "Usage:" in res.stdout
