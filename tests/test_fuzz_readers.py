"""Property-based fuzzing of every reader: arrays, checkpoints, artifact manifests, TOML configs.

Property: any byte string (random, or a valid file with bytes flipped, inserted or cut) either loads or raises
``BisrError``, never another exception, within a memory bound: with the input limit at 64 MiB
(``BISR_MAX_ARRAY_MB``), the peak resident memory of one read grows by at most 256 MiB (Linux's VmHWM, reset
before each read). RLIMIT_DATA 2 GiB above the current use guards the machine meanwhile; hitting it is
reported by the readers as a ``BisrError`` ("out of memory"), which is allowed: nothing was allocated.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from bisr_deploy.artifact import is_artifact, read_manifest
from bisr_deploy.checkpoint import load_checkpoint
from bisr_deploy.errors import BisrError
from bisr_deploy.fileio import MAX_ARRAY_ENV, load_array
from bisr_deploy.train.config import load_config

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
RESIDENT_BOUND = 256 << 20
GUARD = 2 << 30


def _status(field: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))


@contextlib.contextmanager
def memory_bound():
    """Assert that the body raises the peak resident memory by at most RESIDENT_BOUND (see module docstring)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    guard = _status("VmData") + GUARD
    resource.setrlimit(resource.RLIMIT_DATA, (guard if hard == resource.RLIM_INFINITY else min(guard, hard), hard))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current resident size
    start = _status("VmRSS")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    grew = _status("VmHWM") - start
    assert grew <= RESIDENT_BOUND, f"peak resident memory grew by {grew >> 20} MiB"


@pytest.fixture(autouse=True)
def small_input_limit(monkeypatch):
    monkeypatch.setenv(MAX_ARRAY_ENV, "64")


def loads_or_refuses(read, path: Path):
    """Call ``read(path)``: a value or a ``BisrError`` with a message pass; anything else fails."""
    with memory_bound():
        try:
            read(path)
        except BisrError as exc:
            assert str(exc).strip(), "an empty error message"


def fuzz(read, contents, path: Path) -> None:
    """Write every example of the strategy ``contents`` (bytes) to ``path``, then ``loads_or_refuses(read, path)``."""
    @FUZZ
    @given(data=contents)
    def check(data):
        path.write_bytes(data)
        loads_or_refuses(read, path)

    check()


@st.composite
def damaged(draw, seed: bytes):
    """``seed`` with up to 8 bytes replaced, an inserted run, and/or a cut; or pure random bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=4096))
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _seed_arrays() -> dict[str, bytes]:
    import h5py
    import scipy.io

    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        value = np.arange(24, dtype=np.float32).reshape(4, 6)
        np.save(tmp / "a.npy", value)
        np.savez(tmp / "a.npz", y=value)
        scipy.io.savemat(tmp / "a.mat", {"y": value}, do_compression=True)
        with h5py.File(tmp / "a.h5", "w") as fh:
            fh.create_dataset("y", data=value, compression="gzip")
        for path in tmp.iterdir():
            arrays[path.suffix] = path.read_bytes()
    return arrays


SEED_ARRAYS = _seed_arrays()


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5"])
def test_array_reader(suffix, tmp_path_factory):
    fuzz(load_array, damaged(SEED_ARRAYS[suffix]), tmp_path_factory.mktemp("arrays") / f"input{suffix}")


def _seed_checkpoints() -> dict[str, bytes]:
    state = {"conv_in.weight": torch.ones(4, 28, 3, 3), "body.0.x": torch.zeros(3), "conv_out.weight": torch.ones(28, 4, 1, 1)}
    buf = io.BytesIO()
    torch.save(state, buf)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        save_file(state, str(path), metadata={"format": "bisr-deploy-checkpoint", "format_version": "1",
                                              "config": json.dumps({"architecture": {"n_feat": 4}})})
        return {".pth": buf.getvalue(), ".safetensors": path.read_bytes()}


SEED_CHECKPOINTS = _seed_checkpoints()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_reader(suffix, tmp_path_factory):
    fuzz(load_checkpoint, damaged(SEED_CHECKPOINTS[suffix]), tmp_path_factory.mktemp("checkpoints") / f"ckpt{suffix}")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = ("inputs", "output", "target", "files", "params", "mode", "layers")


@st.composite
def manifests(draw):
    """Bytes of a manifest.json: random bytes, or an object of the right format whose fields are random JSON."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=512))
    manifest = {"format": "bisr-deploy-artifact", "format_version": 1, "mode": draw(st.sampled_from(["sim", "real", 3])),
                "inputs": [{"name": "measurement", "shape": [1, 8, 62]}, {"name": "mask", "shape": [1, 8, 8]}],
                "output": {"name": "cube", "shape": [1, 28, 8, 8]}, "target": {"triple": "x86_64-linux-gnu"},
                "files": {"model.so": {"sha256": "0" * 64, "bytes": 1}}, "params": [], "layers": []}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        manifest[name] = draw(JSON)
    return json.dumps(manifest).encode()


def test_manifest_reader(tmp_path_factory):
    def read(path):
        assert isinstance(is_artifact(path.parent), bool)
        read_manifest(path.parent)

    fuzz(read, manifests(), tmp_path_factory.mktemp("artifact") / "manifest.json")


KEYS = {"model": ["n_feat", "stage", "mode", "sign_approx"], "data": ["patch_size", "scale", "keys", "mask_size"],
        "train": ["lr", "epochs", "batch_size", "threads", "output_dir"]}
TOML_VALUES = st.sampled_from(["1", "0", "-3", "2.5e-4", "inf", "nan", "-inf", '"auto"', '"x"', "true", "[1, 2]",
                               '["img"]', "{a = 1}", "1e400", "99999999999999999999", "[[1]]", '"""\\u0000"""'])


@st.composite
def configs(draw):
    """Bytes of a TOML config: random bytes, or tables of known keys with values of any type."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=512))
    lines = []
    for section in draw(st.lists(st.sampled_from([*KEYS, "extra"]), max_size=3, unique=True)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(KEYS.get(section, ["x"])), max_size=3, unique=True)):
            lines.append(f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(lines).encode()


def test_config_reader(tmp_path_factory):
    fuzz(load_config, configs(), tmp_path_factory.mktemp("configs") / "train.toml")
