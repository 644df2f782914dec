"""Reliability and security (issue 12): each fault found by probing the commands, reproduced and refused.

Rows of the issue's table: 1 compile --output over a user's directory, 2 threads on one loaded model, 3 a file
swapped between hash and load, 4 damaged zip checkpoints, 5 finiteness after the float32 cast, 6 non-finite
weights and training, 7 malformed checkpoints/manifests/params, 8-9 output validation, 10 one-line usage
errors, 11 declared sizes before allocating, 12 temp siblings left by kill -9.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bisr_deploy import artifact as artifact_format
from bisr_deploy import runtime
from bisr_deploy.checkpoint import load_checkpoint, save_checkpoint
from bisr_deploy.cli import main
from bisr_deploy.errors import BisrError
from bisr_deploy.fileio import atomic_directory, atomic_output, load_array, save_array

from .conftest import ARTIFACT_SIZE, NATIVE_DIR, REPO, SIM_PTH, host_site, run_native_host

SIZE = ARTIFACT_SIZE


def cli(*args, env=None):
    """Run ``bisr-deploy`` in-process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def assert_one_error_line(code, stderr, fragment):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def inputs64(tmp_path_factory):
    """A 64 x 64 snapshot and mask (random scene through the standard forward model) as .npy files."""
    from bisr_deploy.cassi import simulate_snapshot

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    mask = (rng.random((SIZE, SIZE)) > 0.5).astype(np.float32)
    cube = rng.random((28, SIZE, SIZE)).astype(np.float32)
    y = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    np.save(d / "y.npy", y)
    np.save(d / "mask.npy", mask)
    return d / "y.npy", d / "mask.npy"


@pytest.fixture
def artifact(x86_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(x86_artifact, copy)
    return copy


def _rewrite_manifest(directory: Path, edit) -> None:
    path = directory / artifact_format.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# ---- row 1: never destroy what the command did not make ----

def test_compile_refuses_a_users_directory_with_a_manifest_json(tmp_path):
    user = tmp_path / "project"
    (user / "src").mkdir(parents=True)
    (user / "manifest.json").write_text('{"name": "my-web-app"}')
    (user / "notes.txt").write_text("notes")
    (user / "src" / "main.js").write_text("console.log(1)")
    code, _, err = cli("compile", "--checkpoint", SIM_PTH, "--height", 64, "--width", 64, "--output", user)
    assert_one_error_line(code, err, "is not a bisr-deploy artifact")
    assert "remove it yourself or choose another path" in err
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == ["manifest.json", "notes.txt", "src", "src/main.js"]
    assert (user / "notes.txt").read_text() == "notes"
    (tmp_path / "f").write_text("keep")
    code, _, err = cli("compile", "--checkpoint", SIM_PTH, "--output", tmp_path / "f")
    assert_one_error_line(code, err, "is a file")
    assert (tmp_path / "f").read_text() == "keep"


def test_an_artifact_with_extra_files_is_not_replaceable(artifact, tmp_path):
    assert artifact_format.is_artifact(artifact)
    (artifact / "my-results.csv").write_text("1,2")
    assert not artifact_format.is_artifact(artifact)
    code, _, err = cli("compile", "--checkpoint", SIM_PTH, "--height", 64, "--width", 64, "--output", artifact)
    assert_one_error_line(code, err, "not a bisr-deploy artifact holding only its own files")
    with pytest.raises(BisrError, match="not a bisr-deploy artifact holding only its own files"):
        with atomic_directory(artifact, artifact_format.is_artifact) as tmp:
            (tmp / "new").write_text("x")
    assert (artifact / "my-results.csv").read_text() == "1,2"
    (artifact / "my-results.csv").unlink()
    with atomic_directory(artifact, artifact_format.is_artifact) as tmp:  # a real artifact is replaced whole
        (tmp / "new").write_text("x")
    assert [p.name for p in artifact.iterdir()] == ["new"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- row 2: one loaded model, many threads ----

def test_three_threads_calling_one_model_give_the_serial_cubes(x86_artifact, inputs64):
    model = runtime.load(x86_artifact)
    rng = np.random.default_rng(1)
    y0 = np.load(inputs64[0])
    mask = np.load(inputs64[1])
    snapshots = [y0 * s for s in (1.0, 0.5, 1.5)] + [y0 * rng.uniform(0.5, 1.5, y0.shape).astype(np.float32)]
    serial = [model(y, mask) for y in snapshots]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors = []

    def worker(t):
        try:
            for k in range(len(snapshots)):
                i = (k + t) % len(snapshots)
                results[(t, i)] = model(snapshots[i], mask)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 3 * len(snapshots)
    for (t, i), cube in results.items():
        assert np.array_equal(cube, serial[i]), (t, i)


# ---- row 3: load what was hashed ----

def test_a_library_swapped_after_the_hash_is_never_loaded(artifact, inputs64, monkeypatch):
    y, mask = np.load(inputs64[0]), np.load(inputs64[1])
    reference = runtime.load(artifact)(y, mask)
    checked = runtime.verified_copy
    loaded = []

    def check_then_swap(directory, manifest, private):
        checked(directory, manifest, private)
        (Path(directory) / artifact_format.LIBRARY).write_bytes(b"\x7fELF swapped in after the check")
        (Path(directory) / artifact_format.PARAMS).write_bytes(b"swapped")

    import tvm

    real_load_module = tvm.runtime.load_module
    monkeypatch.setattr(runtime, "verified_copy", check_then_swap)
    monkeypatch.setattr(tvm.runtime, "load_module", lambda path: loaded.append(path) or real_load_module(path))
    model = runtime.load(artifact)
    assert np.array_equal(model(y, mask), reference)
    assert len(loaded) == 1 and not loaded[0].startswith(str(artifact))
    assert not Path(loaded[0]).exists()  # the private copy is gone once mapped
    with pytest.raises(BisrError, match="sha256 does not match|bytes, the manifest says"):
        runtime.load(artifact)  # and the swapped files themselves are refused


# ---- rows 4, 6, 7, 11: checkpoints ----

def _data_members(path: Path):
    with zipfile.ZipFile(path) as archive:
        return [i for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")]


def test_a_damaged_pth_is_refused_by_its_zip_crcs(tmp_path):
    raw = bytearray(SIM_PTH.read_bytes())
    for info in _data_members(SIM_PTH):
        local_extra = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
        start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
        if info.file_size >= 4:
            raw[start + 3] ^= 0x40  # the exponent byte of the first little-endian float32
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BisrError, match="CRC-32 of .* does not match"):
        load_checkpoint(bad)


def _sim_state() -> dict:
    return dict(torch.load(SIM_PTH, map_location="cpu", weights_only=True))


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, sim_checkpoint):
    state = _sim_state()
    name = [k for k in state if k.startswith("body.") and state[k].dim() == 4][5]
    state[name].view(-1)[7] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(BisrError, match=f"tensor {name} holds NaN or Inf"):
        load_checkpoint(tmp_path / "nan.pth")
    from bisr_deploy.checkpoint import Checkpoint

    tensors = dict(sim_checkpoint.state_dict)
    tensors["conv_in.weight"] = tensors["conv_in.weight"].clone()
    tensors["conv_in.weight"][0, 0, 0, 0] = float("inf")
    save_checkpoint(Checkpoint(sim_checkpoint.config, tensors), tmp_path / "inf.safetensors")
    code, _, err = cli("reconstruct", "--checkpoint", tmp_path / "inf.safetensors", "--measurement", SIM_PTH,
                       "--output", tmp_path / "c.npy")
    assert_one_error_line(code, err, "tensor conv_in.weight holds NaN or Inf")


def test_malformed_tensor_shapes_are_one_line(tmp_path):
    state = _sim_state()
    state["conv_in.weight"] = state["conv_in.weight"].flatten()
    torch.save(state, tmp_path / "flat.pth")
    with pytest.raises(BisrError, match=r"conv_in.weight has shape \(\d+,\); a convolution weight is 4-D"):
        load_checkpoint(tmp_path / "flat.pth")
    state = _sim_state()
    key = next(k for k in state if k.startswith("body.") and state[k].dim() == 4)
    state[key] = state[key][:, :1]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(BisrError, match=f"of wrong shape .*{key}"):
        load_checkpoint(tmp_path / "narrow.pth").build_model()


def pickled_module(monkeypatch, parameters: dict, protocol: int = 2) -> bytes:
    """A torch file holding a whole pickled module (class ``architecture.BiSRNet``), like the authors' real-data
    checkpoint, with these parameters."""
    fake = types.ModuleType("architecture")
    fake.BiSRNet = type("BiSRNet", (), {"__module__": "architecture"})
    monkeypatch.setitem(sys.modules, "architecture", fake)
    module = fake.BiSRNet()
    module.__dict__["_parameters"] = parameters
    buf = io.BytesIO()
    torch.save(module, buf, pickle_protocol=protocol)
    return buf.getvalue()


def test_declared_sizes_are_checked_before_allocating(tmp_path, monkeypatch):
    # A pickled module whose one tensor is a stride-0 view of 40000 x 40000 floats over a 4-byte storage.
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(pickled_module(monkeypatch, {"weight": torch.zeros(1).as_strided((40000, 40000), (0, 0))}))
    assert bomb.stat().st_size < 2000
    with pytest.raises(BisrError, match=r"size \(40000, 40000\) \(stride \(0, 0\), offset 0\) does not fit its storage of 1"):
        load_checkpoint(bomb)
    torch.save({"weight": torch.zeros(1).as_strided((40000, 40000), (0, 0))}, tmp_path / "bomb-dict.pth")
    with pytest.raises(BisrError, match=r"tensor weight declares \(40000, 40000\) = 1,600,000,000 elements, more than its 4 bytes"):
        load_checkpoint(tmp_path / "bomb-dict.pth")
    # An HDF5 file of a few KB that declares 40000 x 40054 doubles (gzip of zeros).
    import h5py

    with h5py.File(tmp_path / "big.h5", "w") as fh:
        fh.create_dataset("y", shape=(40000, 40054), dtype="f8", chunks=(1000, 1000), compression="gzip")
    assert (tmp_path / "big.h5").stat().st_size < 100_000
    with pytest.raises(BisrError, match=r"40000 x 40054 array .* over the 4,096 MiB input limit \(raise it with BISR_MAX_ARRAY_MB\)"):
        load_array(tmp_path / "big.h5")
    # .npy and .mat declare their shapes too; the limit is the user's to raise.
    header = {"descr": "<f8", "fortran_order": False, "shape": (40000, 40054)}
    with open(tmp_path / "big.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
    with pytest.raises(BisrError, match="over the 4,096 MiB input limit"):
        load_array(tmp_path / "big.npy")
    np.save(tmp_path / "small.npy", np.zeros((300, 300)))
    os.environ["BISR_MAX_ARRAY_MB"] = "0.5"
    try:
        with pytest.raises(BisrError, match="over the 0 MiB input limit"):
            load_array(tmp_path / "small.npy")
    finally:
        del os.environ["BISR_MAX_ARRAY_MB"]
    assert load_array(tmp_path / "small.npy").shape == (300, 300)
    truncated = (tmp_path / "small.npy").read_bytes()[:5000]
    (tmp_path / "cut.npy").write_bytes(truncated)
    with pytest.raises(BisrError, match="truncated or corrupt"):
        load_array(tmp_path / "cut.npy")


def test_manifest_shapes_and_params_are_checked(artifact, inputs64, tmp_path):
    cases = {
        "files as a list": lambda m: m.update(files=list(m["files"])),
        "files entry as a string": lambda m: m["files"].update({"model.so": "abc"}),
        "target as a string": lambda m: m.update(target="x86_64"),
        "cache size as a string": lambda m: m["target"].update(l2_bytes="2 MiB"),
        "empty inputs": lambda m: m.update(inputs=[]),
        "output shape of strings": lambda m: m["output"].update(shape=["1", "28"]),
    }
    for what, edit in cases.items():
        broken = tmp_path / what.replace(" ", "-")
        shutil.copytree(artifact, broken)
        _rewrite_manifest(broken, edit)
        with pytest.raises(BisrError, match="malformed manifest"):
            runtime.load(broken)
        code, _, err = cli("run", broken, "--measurement", inputs64[0], "--mask", inputs64[1], "--output", tmp_path / "c.npy")
        assert_one_error_line(code, err, "malformed manifest")
    # A params.npz with one array fewer, and a manifest made consistent with it: refused, never a crash.
    with np.load(artifact / artifact_format.PARAMS) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.pop(sorted(arrays)[-1])
    np.savez(artifact / artifact_format.PARAMS, **arrays)

    def fewer(m):
        m["params"] = m["params"][:-1]
        m["files"][artifact_format.PARAMS] = {"bytes": (artifact / artifact_format.PARAMS).stat().st_size,
                                             "sha256": hashlib.sha256((artifact / artifact_format.PARAMS).read_bytes()).hexdigest()}

    _rewrite_manifest(artifact, fewer)
    code, _, err = cli("run", artifact, "--measurement", inputs64[0], "--mask", inputs64[1], "--output", tmp_path / "c.npy")
    assert_one_error_line(code, err, "the compiled model failed")
    assert not (tmp_path / "c.npy").exists()


# ---- row 5: finiteness after the cast ----

def test_float64_beyond_float32_is_refused(tmp_path, inputs64):
    np.save(tmp_path / "huge.npy", np.full((SIZE, SIZE + 54), 1e300))
    code, _, err = cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", tmp_path / "huge.npy",
                       "--mask", inputs64[1], "--output", tmp_path / "c.npy")
    assert_one_error_line(code, err, "the measurement contains NaN or Inf values (in float32")
    assert not (tmp_path / "c.npy").exists()


# ---- row 6: training ----

def test_training_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from bisr_deploy.train import trainer

    calls = {"n": 0}
    real_mse = trainer.F.mse_loss

    def mse_then_nan(out, truth):
        calls["n"] += 1
        loss = real_mse(out, truth)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(trainer.F, "mse_loss", mse_then_nan)
    out = tmp_path / "run"
    code, _, err = cli("train", "--output-dir", out, "--set", "data.patch_size=32", "--set", "data.samples_per_epoch=16",
                       "--set", "train.batch_size=2", "--set", "train.threads=1", "--set", "data.val_synthetic=1",
                       "--set", "data.val_size=32", "--set", "train.progress=false", "--set", "data.mask_size=64",
                       "--set", "train.checkpoint_every=1")
    assert_one_error_line(code, err, "training stopped at epoch 1, step 4: the loss is nan (not finite)")
    assert f"{out / 'checkpoint.safetensors'} keeps the last good weights" in err
    kept = load_checkpoint(out / "checkpoint.safetensors")  # finite, or load_checkpoint would refuse it
    assert kept.training["global_step"] == 3
    code, _, err = cli("train", "--output-dir", tmp_path / "r2", "--set", "train.lr=inf")
    assert_one_error_line(code, err, "config train.lr = inf: must be a finite number")


def test_train_refuses_to_overwrite_checkpoints_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"my weights")
    code, _, err = cli("train", "--output-dir", out, "--set", "data.patch_size=32", "--set", "data.mask_size=64",
                       "--set", "data.val_synthetic=0")
    assert_one_error_line(code, err, "already holds checkpoints or a history but no training state")
    assert (out / "checkpoint.safetensors").read_bytes() == b"my weights"


# ---- rows 8, 9: outputs ----

def test_outputs_are_validated_before_anything_is_written(tmp_path, inputs64):
    y, mask = inputs64
    base = ["reconstruct", "--checkpoint", SIM_PTH, "--measurement", y, "--mask", mask]
    code, _, err = cli(*base, "--output", tmp_path / "cube.npy", "--preview", tmp_path / "missing-dir" / "p.png")
    assert_one_error_line(code, err, "does not exist")
    assert not (tmp_path / "cube.npy").exists()
    code, _, err = cli(*base, "--output", tmp_path / "cube.npy", "--preview", tmp_path / "p.txt")
    assert_one_error_line(code, err, "--preview")
    assert "output must be .png" in err and not (tmp_path / "cube.npy").exists()
    for name, bad in (("--output", tmp_path / "x.json"), ("--output", tmp_path)):
        code, _, err = cli(*base, name, bad)
        assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = cli("export", "--checkpoint", SIM_PTH, "--height", 64, "--width", 64, "--output", tmp_path / "m.txt")
    assert_one_error_line(code, err, "output must be .onnx")


def test_an_output_that_names_an_input_is_refused(tmp_path, inputs64):
    y = tmp_path / "y.npy"
    mask = tmp_path / "mask.npy"
    shutil.copy(inputs64[0], y)
    shutil.copy(inputs64[1], mask)
    before = y.read_bytes(), mask.read_bytes()
    for target in (y, mask, tmp_path / "." / "y.npy"):
        code, _, err = cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", y, "--mask", mask, "--output", target)
        assert_one_error_line(code, err, "names an input of this command")
    code, _, err = cli("run", tmp_path, "--measurement", y, "--mask", mask, "--output", mask)
    assert_one_error_line(code, err, "names an input of this command")
    art = tmp_path / "art"
    art.mkdir()
    (art / "params.npy").write_bytes(b"artifact file")
    code, _, err = cli("run", art, "--measurement", y, "--mask", mask, "--output", art / "params.npy")
    assert_one_error_line(code, err, "names an input of this command")
    assert (art / "params.npy").read_bytes() == b"artifact file"
    (tmp_path / "link.npy").symlink_to(y)
    code, _, err = cli("reconstruct", "--checkpoint", SIM_PTH, "--measurement", y, "--mask", mask, "--output", tmp_path / "link.npy")
    assert_one_error_line(code, err, "names an input of this command")
    assert (y.read_bytes(), mask.read_bytes()) == before


# ---- row 10: one line for usage errors, no library warning in front ----

def test_usage_errors_are_one_error_line(tmp_path, inputs64):
    (tmp_path / "file").write_text("x")
    cases = [
        (["reconstruct", "--measurement", tmp_path, "--output", tmp_path / "c.npy"], "is a directory"),
        (["run", tmp_path / "file", "--measurement", inputs64[0], "--output", tmp_path / "c.npy"], "is a file"),
        (["compile", "--target", "riscv", "--output", tmp_path / "a"], "'riscv' is not one of"),
        (["run", tmp_path, "--measurement", inputs64[0], "--output", tmp_path / "c.npy", "--threads", "0"], "0 is not in the range x>=1"),
        (["run", tmp_path, "--measurement", inputs64[0], "--output", tmp_path / "c.npy", "--threads", "-3"], "is not in the range"),
        (["reconstruct", "--no-such-option"], "No such option"),
    ]
    for args, fragment in cases:
        code, out, err = cli(*args)
        assert_one_error_line(code, err, fragment)
        assert "Usage:" not in err and out == ""


def test_a_library_warning_does_not_precede_the_error_line(tmp_path, monkeypatch):
    path = tmp_path / "p4.pth"  # torch.load warns about protocol 4, then the restricted reader reads it
    path.write_bytes(pickled_module(monkeypatch, {"weight": torch.zeros(4)}, protocol=4))
    y = tmp_path / "y.npy"
    np.save(y, np.ones((8, 62), np.float32))
    proc = subprocess.run([sys.executable, "-W", "always", "-m", "bisr_deploy.cli", "reconstruct", "--checkpoint", path,
                           "--measurement", y, "--output", tmp_path / "c.npy"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_one_error_line(proc.returncode, proc.stderr, "not a BiSRNet checkpoint")
    code, out, err = cli("run", "--help")
    assert code == 0 and "at least 1" in out


# ---- row 12: temporary siblings of a killed writer ----

def test_temp_siblings_of_a_killed_writer_are_cleaned_up(tmp_path):
    out = tmp_path / "cube.npy"
    killer = ("import os, signal, sys, numpy as np\n"
              "from bisr_deploy.fileio import atomic_output\n"
              "with atomic_output(sys.argv[1]) as tmp:\n"
              "    np.save(open(tmp, 'wb'), np.zeros(10))\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", killer, out], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".cube.npy.bisr-tmp-") and not out.exists()
    live = tmp_path / f".cube.npy.bisr-tmp-{os.getpid()}-inflight.npy"  # a writer that still runs: kept
    live.write_bytes(b"")
    stale_dir = tmp_path / f".cube.npy.bisr-tmp-{left[0].split('-')[2]}-dir"
    stale_dir.mkdir()
    save_array(out, np.ones((2, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cube.npy", live.name])
    assert np.array_equal(np.load(out), np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            Path(tmp).write_text("partial")
            raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cube.npy", live.name])


# ---- row 2 for the C++ loader: one bisr_open handle, three threads ----

THREADS_CC = r"""
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "bisr_native.h"

static std::vector<float> read_f32(const char* path) {
  std::vector<float> v;
  FILE* f = std::fopen(path, "rb");
  float x;
  while (f && std::fread(&x, 4, 1, f) == 1) v.push_back(x);
  if (f) std::fclose(f);
  return v;
}

int main(int argc, char** argv) {  // ARTIFACT MEASUREMENT.f32 MASK.f32 -> "runs mismatches failures"
  bisr_artifact* model = bisr_open(argv[1]);
  if (model == nullptr) { std::fprintf(stderr, "error: %s\n", bisr_last_error()); return 2; }
  const std::vector<float> y = read_f32(argv[2]), mask = read_f32(argv[3]);
  const size_t n_out = bisr_numel(model, -1);
  std::vector<std::vector<float>> inputs, serial;
  for (float scale : {1.0f, 0.5f, 1.5f, 0.75f}) {
    std::vector<float> scaled(y);
    for (float& v : scaled) v *= scale;
    inputs.push_back(scaled);
    serial.emplace_back(n_out);
    const float* in[2] = {inputs.back().data(), mask.data()};
    if (bisr_run(model, in, serial.back().data()) != 0) return 3;
  }
  int runs[3] = {0, 0, 0}, mismatches[3] = {0, 0, 0}, failures[3] = {0, 0, 0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> out(n_out);
      for (int k = 0; k < 8; ++k) {
        const size_t i = (k + t) % inputs.size();
        const float* in[2] = {inputs[i].data(), mask.data()};
        if (bisr_run(model, in, out.data()) != 0) { ++failures[t]; continue; }
        ++runs[t];
        if (std::memcmp(out.data(), serial[i].data(), n_out * sizeof(float)) != 0) ++mismatches[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  bisr_close(model);
  std::printf("%d %d %d\n", runs[0] + runs[1] + runs[2], mismatches[0] + mismatches[1] + mismatches[2],
              failures[0] + failures[1] + failures[2]);
  return 0;
}
"""


def test_three_threads_on_one_native_handle_give_the_serial_cubes(native_host, x86_artifact, inputs64, tmp_path):
    build, site = native_host.parent, host_site()
    (tmp_path / "threads.cc").write_text(THREADS_CC)
    subprocess.run(["g++", "-std=c++17", "-O1", "-pthread", f"-I{NATIVE_DIR}", "-o", str(tmp_path / "threads"),
                    str(tmp_path / "threads.cc"), f"-L{build}", "-lbisr_native", f"-L{site}/tvm/lib", f"-L{site}/tvm_ffi/lib",
                    "-ltvm_runtime", "-ltvm_ffi", f"-Wl,-rpath,{build}"],
                   check=True, capture_output=True, text=True)
    np.load(inputs64[0]).astype("<f4").tofile(tmp_path / "y.f32")
    np.load(inputs64[1]).astype("<f4").tofile(tmp_path / "mask.f32")
    proc = run_native_host(tmp_path / "threads", x86_artifact, tmp_path / "y.f32", tmp_path / "mask.f32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["24", "0", "0"]  # 3 threads x 8 runs, each equal to its serial cube
