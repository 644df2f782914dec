"""`bisr-deploy verify`: the criteria, the report, x86 and emulated ARM artifacts, and that it catches a broken layer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bisr_deploy import verify as v
from bisr_deploy.artifact import read_manifest
from bisr_deploy.fileio import file_sha256

from .conftest import KAIST_NPZ, REAL_PTH, REAL_SCENES, SIM_PTH

pytestmark = [pytest.mark.needs_tvm, pytest.mark.needs_data]


def run_verify(artifact, *extra):
    return subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(artifact), "--checkpoint", str(SIM_PTH),
                           "--scenes", str(KAIST_NPZ.parent), "--synthetic", "1", *map(str, extra)],
                          capture_output=True, text=True)


def _check_passing_report(proc, report_path):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: every criterion holds" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["failures"] == []
    assert [s["name"] for s in report["scenes"]] == ["synthetic-seed1", "kaist_crop128"]
    assert len(report["layers"]) == 59 and min(report["layers"].values()) >= v.LAYER_MIN_AGREEMENT
    kaist = report["scenes"][1]
    assert kaist["finite"] and kaist["psnr_vs_torch"] > v.MIN_PSNR_VS_TORCH_DB
    assert abs(kaist["psnr_gap"]) <= v.MAX_SCENE_PSNR_GAP_DB
    assert kaist["psnr_truth_artifact"] > 25  # a 64 x 64 top-left crop of the KAIST scene
    return report


def test_x86_artifact_passes(x86_artifact, tmp_path):
    report = _check_passing_report(run_verify(x86_artifact, "--json", tmp_path / "r.json"), tmp_path / "r.json")
    assert all(s["latency_ms"] > 0 for s in report["scenes"])


def test_arm_artifact_passes_under_emulation(arm_artifact, tmp_path):
    report = _check_passing_report(run_verify(arm_artifact, "--json", tmp_path / "r.json"), tmp_path / "r.json")
    assert all(s["latency_ms"] is None for s in report["scenes"])  # emulated: no honest latency


def _compile_x86(checkpoint, out):
    from bisr_deploy.compile.build import build_artifact
    from bisr_deploy.compile.targets import resolve_target
    from bisr_deploy.export import export_onnx

    build_artifact(export_onnx(checkpoint, 64, 64), out, resolve_target("x86", "haswell"))
    return out


def test_shipped_checkpoint_artifact_passes(tmp_path):
    """CI's verify of the project's own trained checkpoint, named on the command line."""
    artifact = _compile_x86("trained-sim", tmp_path / "trained-sim")
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(artifact), "--synthetic", "2",
                           "--checkpoint", "trained-sim", "--scenes", str(KAIST_NPZ.parent), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and len(report["scenes"]) == 3 and len(report["layers"]) == 59


def test_real_checkpoint_artifact_passes_on_real_snapshots(tmp_path):
    """The authors' real-data model: real camera snapshots (no truth) and scenes through the real mask."""
    artifact = _compile_x86(REAL_PTH, tmp_path / "real")
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(artifact), "--checkpoint", str(REAL_PTH),
                           "--synthetic", "1", "--scenes", str(KAIST_NPZ.parent), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = [s["kind"] for s in report["scenes"]]
    assert kinds == ["synthetic", "ground-truth"] + ["real"] * 5
    real = [s for s in report["scenes"] if s["kind"] == "real"]
    assert all(s["psnr_truth_artifact"] is None and s["psnr_vs_torch"] > v.MIN_PSNR_VS_TORCH_DB for s in real)


@pytest.mark.slow
def test_real_camera_snapshot_at_a_size_not_multiple_of_8(tmp_path):
    """compile (61 x 53, padded to 64 x 56 inside the graph) -> run gives reconstruct's cube on a real snapshot.

    The same path as the full 660 x 660 camera frame (README), at a size CI compiles in seconds; the crop is
    from the lit middle of scene1 (dark corners are all sign-flip noise, see README: Parity under sign flips)."""
    from bisr_deploy.checkpoint import load_checkpoint
    from bisr_deploy.fileio import load_array
    from bisr_deploy.metrics import psnr

    height, width = 61, 53
    snapshot = load_array(REAL_SCENES / "scene1.mat")[200:200 + height, 200:200 + width + 54].astype(np.float32)
    np.save(tmp_path / "y.npy", snapshot)
    cli = [sys.executable, "-m", "bisr_deploy.cli"]
    steps = [["compile", "--checkpoint", REAL_PTH, "--height", height, "--width", width, "--cpu", "haswell",
              "--output", tmp_path / "art"],
             ["run", tmp_path / "art", "--measurement", tmp_path / "y.npy", "--output", tmp_path / "deploy.npy"],
             ["reconstruct", "--checkpoint", REAL_PTH, "--measurement", tmp_path / "y.npy", "--output", tmp_path / "torch.npy"]]
    for step in steps:
        proc = subprocess.run(cli + [str(a) for a in step], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, height, width + 54]
    assert manifest["output"]["shape"] == [1, 28, height, width]
    assert {layer["shape"][2:] == [64, 56] for layer in manifest["layers"] if layer["name"] == "body.0.embedding"} == {True}
    deployed, reference = np.load(tmp_path / "deploy.npy"), np.load(tmp_path / "torch.npy")
    assert deployed.shape == reference.shape == (28, height, width)
    assert psnr(deployed, reference) >= 35.0
    layers = v.layer_agreement(tmp_path / "art", read_manifest(tmp_path / "art"), load_checkpoint(REAL_PTH),
                               v.Scene("scene1", snapshot, None, None))
    assert len(layers) == 59 and min(layers.values()) >= v.LAYER_MIN_AGREEMENT


def test_a_flipped_weight_bit_fails_the_layer_check(x86_artifact, tmp_path):
    """Corrupt one weight word of one layer (and re-sign the manifest): verify must name that layer and fail."""
    broken = tmp_path / "broken"
    shutil.copytree(x86_artifact, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    params = dict(np.load(broken / "params.npz"))
    layer = "body.0.encoder_layers.0.0.blocks.0.fn.net.0.biconv_1"
    key = f"p{manifest['params'].index(f'{layer}.wwords'):04d}"
    params[key] = params[key] ^ np.uint32(0b1011)
    np.savez(broken / "params.npz", **params)
    manifest["files"]["params.npz"] = {"sha256": file_sha256(broken / "params.npz"),
                                       "bytes": (broken / "params.npz").stat().st_size}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    proc = run_verify(broken, "--json", tmp_path / "r.json")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["passed"]
    assert report["layers"][layer] < v.LAYER_MIN_AGREEMENT
    assert f"FAIL layer {layer}:" in proc.stderr


def test_wrong_checkpoint_is_refused(x86_artifact, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(x86_artifact), "--checkpoint",
                           str(REAL_PTH)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: the artifact is a sim-mode model, the checkpoint a real-mode one"
    from bisr_deploy.checkpoint import load_checkpoint, save_checkpoint

    # a project checkpoint with the same weights but no record of the .pth the artifact came from; a converted
    # checkpoint that records it (its provenance sha256, as the named authors-sim does) is accepted
    unrelated = load_checkpoint(SIM_PTH)
    unrelated.provenance.clear()
    copy = tmp_path / "copy.safetensors"
    save_checkpoint(unrelated, copy)
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(x86_artifact), "--checkpoint", str(copy)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "compiled from another checkpoint" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "verify", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a bisr-deploy artifact" in proc.stderr


def _result(name, psnr_vs_torch=45.0, art=30.0, torch=30.0, finite=True):
    if not finite:  # compare_scene scores no non-finite output against the truth
        return v.SceneResult(name, "ground-truth", False, float("nan"), float("nan"))
    return v.SceneResult(name, "ground-truth", finite, psnr_vs_torch, 0.99, art, torch, 0.9, 0.9)


def test_judge_criteria():
    report = v.Report("a", "c", scenes=[_result("ok"), _result("small-gap", art=30.15)], layers={"x": 1.0})
    v.judge(report)
    assert report.passed
    report = v.Report("a", "c", scenes=[_result("big-gap", art=29.6), _result("far", psnr_vs_torch=25.0),
                                        _result("nan", finite=False)], layers={"layer.a": 0.99})
    v.judge(report)
    assert report.failures == [
        "big-gap: PSNR vs truth differs from PyTorch's by -0.400 dB (limit ±0.3)",
        "far: 25.00 dB against PyTorch < 30.0 dB",
        "nan: output has NaN/Inf",
        "mean PSNR gap to PyTorch -0.200 dB exceeds ±0.1 dB",
        "layer layer.a: 99.0000% of outputs agree (< 99.9%)",
    ]
    empty = v.Report("a", "c")
    v.judge(empty)
    assert empty.failures == ["no scene was verified"]


def test_agreement_counts_elements_within_tolerance():
    ref = np.array([0.0, 1.0, -2.0, 4.0], np.float32)
    assert v.agreement(ref + 1e-6, ref) == 1.0
    flipped = ref.copy()
    flipped[2] += 0.05  # what one flipped bit does: the accumulator moves by 2 times the weight scale
    assert v.agreement(flipped, ref) == pytest.approx(0.75)
