"""Compiled artifacts: building, loading, refusing bad ones, and the `compile` / `run` commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from bisr_deploy.cli import main
from bisr_deploy.errors import BisrError

from .conftest import KAIST_NPZ as KAIST
from .conftest import SIM_PTH

pytestmark = [pytest.mark.needs_tvm, pytest.mark.needs_data]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 64 x 64 simulation-mode artifact compiled by the CLI from the authors' checkpoint."""
    out = tmp_path_factory.mktemp("rt") / "art"
    result = CliRunner().invoke(main, ["compile", "--checkpoint", str(SIM_PTH), "--height", "64", "--width", "64",
                                       "--target", "x86", "--cpu", "native", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "59 bitserial BiSRConvs" in result.output
    return out


@pytest.fixture
def artifact(built, tmp_path):
    """A private copy that a test may damage."""
    copy = tmp_path / "art"
    shutil.copytree(built, copy)
    return copy


def scene64():
    """A real KAIST crop (top-left 64 x 64, its mask) and its simulated snapshot."""
    from bisr_deploy.cassi import simulate_snapshot

    data = np.load(KAIST)
    cube = np.ascontiguousarray(data["img"][:64, :64].transpose(2, 0, 1)).astype(np.float32)
    mask = data["mask"][:64, :64].astype(np.float32)
    import torch

    snapshot = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    return cube, mask, snapshot


def test_manifest_contents(built):
    from bisr_deploy.fileio import file_sha256

    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format"] == "bisr-deploy-artifact" and manifest["mode"] == "sim"
    assert manifest["inputs"] == [{"name": "measurement", "shape": [1, 64, 118], "dtype": "float32"},
                                  {"name": "mask", "shape": [1, 64, 64], "dtype": "float32"}]
    assert manifest["output"] == {"name": "cube", "shape": [1, 28, 64, 64], "dtype": "float32"}
    assert manifest["target"]["triple"] == "x86_64-linux-gnu"
    assert manifest["source"]["checkpoint_sha256"] == file_sha256(SIM_PTH)
    assert len(manifest["source"]["onnx_sha256"]) == 64
    for name, record in manifest["files"].items():
        assert file_sha256(built / name) == record["sha256"]
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    assert built.stat().st_mode & 0o777 == 0o755  # world-readable like other build outputs, not mkdtemp's 0700


def test_reconstruction_quality_close_to_pytorch(built):
    from bisr_deploy.checkpoint import load_checkpoint
    from bisr_deploy.metrics import psnr
    from bisr_deploy.reconstruct import reconstruct
    from bisr_deploy.runtime import load

    cube, mask, snapshot = scene64()
    compiled = load(built)(snapshot, mask)
    torch_cube = reconstruct(load_checkpoint(str(SIM_PTH)).build_model(), snapshot, mask)
    assert compiled.shape == (28, 64, 64) and compiled.dtype == np.float32
    # BiSRNet's output flips under float noise (see shared/data/README.md): compare quality, not bits.
    assert abs(psnr(compiled, cube) - psnr(torch_cube, cube)) < 0.5
    assert psnr(compiled, torch_cube) > 30


def test_outputs_are_owned_by_the_caller(built):
    """The cube views the VM's output buffer (no copy); a buffer the caller still holds is never handed to a
    later run, and one it dropped is reused (no fresh pages per run)."""
    from bisr_deploy.runtime import load

    model = load(built)
    rng = np.random.default_rng(3)
    inputs = [(rng.random((64, 118), np.float32), (rng.random((64, 64)) > 0.5).astype(np.float32)) for _ in range(3)]
    first = model(*inputs[0])
    kept = first.copy()
    later = [model(*pair) for pair in inputs[1:]]
    assert first.flags.writeable and first.dtype == np.float32 and first.shape == (28, 64, 64)
    np.testing.assert_array_equal(first, kept)
    assert not any(np.shares_memory(first, out) for out in later) and not np.array_equal(first, later[0])
    again = model(*inputs[0])
    np.testing.assert_array_equal(again, kept)  # same input, same cube

    def address(cube):
        return cube.__array_interface__["data"][0]

    pooled = {address(cube) for cube in [first, again, *later]}
    del first, again, later
    assert {address(model(*inputs[0])) for _ in range(4)} <= pooled  # dropped cubes' buffers are reused


def test_refuses_tampered_and_truncated_files(artifact):
    from bisr_deploy.runtime import load

    lib = artifact / "model.so"
    original = lib.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(BisrError, match="sha256 does not match"):
        load(artifact)
    lib.write_bytes(original)
    load(artifact)
    params = artifact / "params.npz"
    params.write_bytes(params.read_bytes()[:-100])
    with pytest.raises(BisrError, match="truncated"):
        load(artifact)


def test_refuses_missing_and_foreign_manifests(artifact, tmp_path):
    from bisr_deploy.runtime import load

    manifest = artifact / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(BisrError, match="format version 99"):
        load(artifact)
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(BisrError, match="corrupt manifest"):
        load(artifact)
    manifest.unlink()
    with pytest.raises(BisrError, match="not a bisr-deploy artifact"):
        load(artifact)
    with pytest.raises(BisrError, match="not a directory"):
        load(tmp_path / "nothing")


def test_refuses_cpu_feature_mismatch(artifact):
    from bisr_deploy.runtime import load

    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["target"]["required_cpu_features"].append("avx10_9_imaginary")
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BisrError, match="lacks: avx10_9_imaginary"):
        load(artifact)


def test_refuses_wrong_input_shapes(built):
    from bisr_deploy.runtime import load

    model = load(built)
    with pytest.raises(BisrError, match="compiled for snapshots 64 x 118"):
        model(np.ones((128, 182), np.float32), np.ones((128, 128), np.float32))
    with pytest.raises(BisrError, match="mask"):
        model(np.ones((64, 118), np.float32), None)
    with pytest.raises(BisrError, match="mask shape"):
        model(np.ones((64, 118), np.float32), np.ones((32, 32), np.float32))


def test_run_command_and_errors(built, tmp_path):
    from bisr_deploy.runtime import load

    _, mask, snapshot = scene64()
    np.save(tmp_path / "y.npy", snapshot)
    np.save(tmp_path / "m.npy", mask)
    out = tmp_path / "cube.npy"
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(built), "--measurement", str(tmp_path / "y.npy"),
                                  "--mask", str(tmp_path / "m.npy"), "--threads", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), load(built)(snapshot, mask))
    bad = runner.invoke(main, ["run", str(tmp_path), "--measurement", str(tmp_path / "y.npy"), "--output",
                               str(tmp_path / "x.npy")])
    assert bad.exit_code == 2 and "not a bisr-deploy artifact" in bad.output
    assert not (tmp_path / "x.npy").exists()


def test_compile_refuses_bad_inputs(tmp_path):
    runner = CliRunner()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    result = runner.invoke(main, ["compile", str(junk), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a readable ONNX model" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    result = runner.invoke(main, ["compile", "--checkpoint", str(SIM_PTH), "--height", "64", "--width", "64",
                                  "--output", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not a bisr-deploy artifact" in result.output
    assert (tmp_path / "taken" / "keep.txt").read_text() == "x"
    result = runner.invoke(main, ["compile", "--checkpoint", str(SIM_PTH), "--cpu", "pentium", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_bench_command_reports(built, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "--checkpoint", str(SIM_PTH), "--artifact", str(built), "--height", "64",
                                  "--width", "64", "--repeat", "2", "--skip", "tvm-fp32", "--skip", "pytorch-eager",
                                  "--output-dir", str(tmp_path / "new" / "bench")])  # created with its parent
    assert result.exit_code == 0, result.output
    out = tmp_path / "new" / "bench"
    report = json.loads((out / "bench.json").read_text())
    backends = {(r["backend"], r["threads"]) for r in report["results"]}
    assert ("compiled", 1) in backends and ("onnxruntime-fp32", 1) in backends
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in report["results"])
    assert report["artifact_bytes"] == sum(f["bytes"] for f in
                                           json.loads((built / "manifest.json").read_text())["files"].values())
    kinds = report["layers_by_kind_ms"]
    assert set(kinds) == {"bisrconv", "conv2d", "upsample2x", "fused"} and all(v > 0 for v in kinds.values())
    assert sum(row["bisrconvs"] for row in report["layers"] if row["kind"] == "bisrconv") == 59  # fused pairs count 2
    # the same calls timed inside the network run, in execution order
    network = report["network_layers"]
    assert [row["function"] for row in network if row["kind"] in ("bisrconv", "conv2d", "upsample2x")] == \
        [row["function"] for row in report["layers"] if row["kind"] in ("bisrconv", "conv2d", "upsample2x")]
    assert all(row["ms"] > 0 for row in network) and set(report["network_layers_by_kind_ms"]) >= {"bisrconv", "conv2d"}
    outside = report["outside_kernels"]  # from the same instrumented run, at 1 thread
    assert outside["kernels_ms"] == pytest.approx(sum(row["ms"] for row in network))
    assert outside["total_ms"] == pytest.approx(outside["kernels_ms"] + outside["vm_ms"] + outside["python_ms"])
    assert outside["outside_ms"] == pytest.approx(outside["vm_ms"] + outside["python_ms"]) and outside["python_ms"] > 0
    assert outside["vm_builtin_calls"] > 0 and outside["page_faults"] < 28 * 64 * 64 * 4 // 4096  # no fresh cube
    assert "| outside kernels: VM" in (out / "bench.md").read_text() and "outside kernels" in result.output
    assert "compiled@1" in report["speedups_vs_onnxruntime"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| compiled | 1 |" in (out / "bench.md").read_text()
    # the isolated and the in-network views time the same calls
    assert [row["function"] for row in report["layers"]] == [row["function"] for row in network]
    # A size other than the artifact's, and PyTorch on another checkpoint than the artifact's, are refused.
    bad = runner.invoke(main, ["bench", "--artifact", str(built), "--height", "32", "--skip", "tvm-fp32",
                               "--skip", "pytorch-eager", "--output-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--height 32 does not match the artifact's height 64" in bad.output
    bad = runner.invoke(main, ["bench", "--checkpoint", "trained-sim", "--artifact", str(built), "--skip", "tvm-fp32",
                               "--skip", "onnxruntime-fp32", "--output-dir", str(tmp_path / "other")])
    assert bad.exit_code == 2 and "compiled from another checkpoint" in bad.output
    assert not (tmp_path / "other").exists()
    (tmp_path / "file").write_text("x")
    bad = runner.invoke(main, ["bench", "--artifact", str(built), "--output-dir", str(tmp_path / "file" / "sub")])
    assert bad.exit_code == 2 and f"--output-dir {tmp_path / 'file' / 'sub'}: directory {tmp_path / 'file'} does not exist" in bad.output


def test_compile_real_mode_onnx_file(tmp_path):
    """The MODEL.onnx path of `compile`, on a real-mode export: one input, no mask, output clamped to [0, 1]."""
    import onnxruntime as ort

    from bisr_deploy.fileio import file_sha256
    from bisr_deploy.export import export_onnx, save_onnx
    from bisr_deploy.runtime import load

    model = export_onnx(str(SIM_PTH), 32, 32, mode="real")
    onnx_path = tmp_path / "real32.onnx"
    save_onnx(model, onnx_path)
    runner = CliRunner()
    bad = runner.invoke(main, ["compile", str(onnx_path), "--height", "64", "--output", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "does not match the model's static height 32" in bad.output
    result = runner.invoke(main, ["compile", str(onnx_path), "--output", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["mode"] == "real" and [i["name"] for i in manifest["inputs"]] == ["measurement"]
    assert manifest["source"]["sha256"] == file_sha256(onnx_path)
    compiled = load(tmp_path / "a")
    y = np.random.default_rng(4).random((32, 86)).astype(np.float32)
    with pytest.raises(BisrError, match="real-mode artifact: it takes no mask"):
        compiled(y, np.ones((32, 32), np.float32))
    got = compiled(y)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"measurement": y[None]})[0][0]
    assert got.min() >= 0 and got.max() <= 1
    diff = np.abs(got - want)  # float-conv rounding may flip a sign locally (see test_compile)
    assert np.median(diff) < 1e-6 and np.mean(diff > 1e-4) < 0.01 and diff.max() < 0.05
    # Compiling again over an existing artifact replaces it whole; no temporary directories stay behind.
    again = runner.invoke(main, ["compile", str(onnx_path), "--cpu", "haswell", "--output", str(tmp_path / "a")])
    assert again.exit_code == 0, again.output
    assert load(tmp_path / "a").manifest.target.cpu == "haswell"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "real32.onnx"]


def test_run_single_bisrconv_layer(built):
    """One compiled BiSRConv, fed a full-precision input, against the PyTorch module (Sign(0) = -1)."""
    import torch

    from bisr_deploy.checkpoint import load_checkpoint
    from bisr_deploy.model import with_negative_sign
    from bisr_deploy.runtime import load

    compiled = load(built)
    names = compiled.bisrconv_layers()
    assert len(names) == 59 and names[0] == "body.0.embedding"
    modules = with_negative_sign(load_checkpoint(str(SIM_PTH)).build_model()).bisr_convs()
    rng = np.random.default_rng(9)
    for name in (names[0], "body.0.encoder_layers.0.0.blocks.0.fn.net.3"):  # 3x3 28 ch; grouped 3x3 112 ch
        module = modules[name]
        shape = compiled.manifest.layer(name).shape
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(compiled.run_bisrconv(name, x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(BisrError, match="no BiSRConv named"):
        compiled.run_bisrconv("conv_in", np.zeros((1, 28, 64, 64), np.float32))
    with pytest.raises(BisrError, match="takes input"):
        compiled.run_bisrconv(names[0], np.zeros((1, 28, 32, 32), np.float32))
