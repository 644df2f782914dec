"""The package's structural contracts: one home per contract, and a runtime that ships without the toolchain."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bisr_deploy import artifact, bisrconv_op

from .conftest import REPO

PACKAGE = REPO / "bisr_deploy"


def _modules_spelling(text: str) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if text in p.read_text())


@pytest.mark.parametrize("text,home", [(bisrconv_op.DOMAIN, "bisr_deploy/bisrconv_op.py"),
                                       (artifact.FORMAT_NAME, "bisr_deploy/artifact.py")])
def test_contract_strings_have_one_home(text, home):
    assert _modules_spelling(text) == [home]


def test_operator_input_names_have_one_home():
    """The names of the operator's weight inputs are spelled as a sequence only in bisrconv_op."""
    sequence = ", ".join(f'"{name}"' for name in bisrconv_op.WEIGHT_INPUTS[:3])
    assert _modules_spelling(sequence) == ["bisr_deploy/bisrconv_op.py"]


def test_native_loader_mirrors_the_artifact_module():
    source = (REPO / "targets" / "native" / "bisr_native.cc").read_text()
    constants = dict(re.findall(r'constexpr (?:const char\*|int64_t) (k\w+) = "?([^";]+)"?;', source))
    assert constants["kFormat"] == artifact.FORMAT_NAME
    assert int(constants["kFormatVersion"]) == artifact.FORMAT_VERSION
    assert (constants["kLibrary"], constants["kParams"]) == (artifact.LIBRARY, artifact.PARAMS)
    assert "bisr_deploy/artifact.py" in source


# Makes torch, onnx and onnxruntime impossible to import (as on a board with the runtime only) and records which
# modules tried to import one (TVM's tvm_ffi tries torch, optionally, for DLPack interop).
_BLOCK = """
import json, sys
BLOCKED = ("torch", "onnx", "onnxruntime")
attempts = set()
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            frame = sys._getframe(1)
            while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                frame = frame.f_back
            attempts.add(frame.f_globals.get("__name__", "?").split(".")[0])
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None
sys.meta_path.insert(0, Block())
"""
# Loads the artifact, runs it end to end and one BiSRConv alone, then reports the modules it imported.
_RUN_ARTIFACT = _BLOCK + """
import numpy as np
import bisr_deploy.runtime as runtime
model = runtime.load(sys.argv[1])
h, w = model.manifest.output.shape[2:]
rng = np.random.default_rng(0)
cube = model(rng.random((h, w + 54), dtype=np.float32), (rng.random((h, w)) > 0.5).astype(np.float32))
layer = model.manifest.bisrconv_layers()[0]
y = model.run_bisrconv(layer.name, rng.standard_normal(layer.shape).astype(np.float32))
print(json.dumps({"cube": list(cube.shape), "finite": bool(np.isfinite(cube).all() and np.isfinite(y).all()),
                  "modules": sorted(sys.modules), "attempts": sorted(attempts)}))
"""
FORBIDDEN = ("bisr_deploy.compile", "bisr_deploy.export", "bisr_deploy.train", "torch", "onnx", "onnxruntime")


@pytest.mark.needs_tvm
@pytest.mark.needs_data
def test_runtime_runs_without_the_toolchain(x86_artifact):
    """Loading and running an artifact through bisr_deploy.runtime imports nothing of the compiler, exporter or
    trainer, and works where torch, onnx and onnxruntime are not installed."""
    proc = subprocess.run([sys.executable, "-c", _RUN_ARTIFACT, str(x86_artifact)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cube"] == [28, 64, 64] and result["finite"]
    assert [m for m in result["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)] == []
    assert "bisr_deploy" not in result["attempts"]
    assert {"bisr_deploy.artifact", "bisr_deploy.runtime", "tvm"} <= set(result["modules"])


_PROBE = """
import pytest
from tests.conftest import EXPECTED

def test_skips_for_no_stated_reason():
    pytest.skip("the data is not there")

def test_skips_for_a_reason_ci_expects():
    pytest.skip(EXPECTED + "this CPU lacks avx512_vpopcntdq")

@pytest.mark.needs_tool("no-such-program-bisr")
def test_needs_a_missing_tool():
    pass
"""


# Runs the CLI with the arguments given, then reports its exit status and the modules it imported.
_RUN_CLI = _BLOCK + """
from bisr_deploy.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules), "attempts": sorted(attempts)}))
"""


@pytest.mark.needs_tvm
@pytest.mark.needs_data
def test_bench_of_an_artifact_runs_without_the_toolchain(x86_artifact, tmp_path):
    """`bisr-deploy bench --artifact A` with only the compiled backend (as on a board with the runtime and click)
    runs where torch, onnx and onnxruntime are not installed: latency, isolated and in-network kernel times."""
    skips = [arg for backend in ("onnxruntime-fp32", "tvm-fp32", "pytorch-eager") for arg in ("--skip", backend)]
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, "--quiet", "bench", "--artifact", str(x86_artifact),
                           "--repeat", "2", *skips, "--output-dir", str(tmp_path / "bench")],
                          capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stdout + proc.stderr
    registry = {"bisr_deploy.compile", "bisr_deploy.compile.targets", "bisr_deploy.compile.schedule"}  # the
    # CLI's options list the targets; the registry imports nothing of the compiler
    assert [m for m in result["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
            and m not in registry] == []
    assert "bisr_deploy" not in result["attempts"]
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {r["backend"] for r in report["results"]} == {"compiled"} and report["size"] == [64, 64]
    assert report["layers"] and [r["function"] for r in report["layers"]] == \
        [r["function"] for r in report["network_layers"]]


@pytest.mark.parametrize("ci", ["", "true"])
def test_unexpected_skips_fail_in_ci(ci, tmp_path):
    """tests/conftest.py's hooks: locally every skip stays a skip; with CI=true only an expected one does."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport, pytest_runtest_setup"
                                          "  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(_PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    summary = proc.stdout.strip().splitlines()[-1]
    if ci:
        # a skip in the test body fails it; one from an unmet marker (setup) is an error
        assert proc.returncode == 1 and "1 failed, 1 skipped, 1 error" in summary, proc.stdout
        assert "unexpected skip in CI: Skipped: the data is not there" in proc.stdout
        assert "unexpected skip in CI: Skipped: needs no-such-program-bisr on PATH" in proc.stdout
    else:
        assert proc.returncode == 0 and "3 skipped" in summary, proc.stdout
