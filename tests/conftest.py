"""Shared fixtures: paths into ../shared (the only place tests name them), the authors' checkpoints, the KAIST
crop, compiled artifacts; and the markers that say what a test needs.

Markers (registered in pyproject.toml), checked before the test runs; an unmet need skips the test:

    needs_tvm                TVM imports            needs_data        the reference data (../shared/data)
    needs_arm_env            the aarch64 cross toolchain and qemu (.ci/setup-arm.sh)
    needs_tool("a", ...)     programs on PATH       needs_cpu("flag") a CPU feature of this machine (Linux name)

With ``CI=true`` every skip fails the run except those CI expects: a CPU feature the CI machine lacks, or a
test that cannot apply to this host (``pytest.skip(EXPECTED + reason)``). Everything else is installed by
tools/install.sh, so a skip there means a broken setup.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SIM_PTH = SHARED / "bisci-official" / "simulation" / "bisrnet.pth"
REAL_PTH = SHARED / "bisci-official" / "real" / "bisrnet.pth"
KAIST_NPZ = SHARED / "hsi-scenes" / "kaist" / "kaist_crop128.npz"
STANDARD_MASK = SHARED / "tsa-cassi" / "mask_simulation_256.mat"
REAL_SCENES = SHARED / "tsa-cassi" / "real_measurements"
CAVE_SCENES = SHARED / "hsi-scenes" / "cave"

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXPECTED = "expected on this host: "  # skip reasons CI accepts start with this

# `bisr-deploy verify` (also in the subprocesses tests start) finds the reference data here, whatever the cwd.
os.environ.setdefault("BISR_DATA", str(SHARED))


def _unmet(mark) -> str | None:
    """Why the need stated by ``mark`` is not met here (None if it is, or if ``mark`` states no need)."""
    from bisr_deploy.hostcpu import host_cpu_flags

    if mark.name == "needs_tvm":
        return None if importlib.util.find_spec("tvm") else "needs TVM (apache-tvm is not installed)"
    if mark.name == "needs_data":
        return None if SHARED.is_dir() else f"needs the reference data at {SHARED} (CI lays ../shared beside the clone)"
    if mark.name == "needs_arm_env":
        missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
        return f"needs the aarch64 toolchain ({', '.join(missing)} missing; .ci/setup-arm.sh)" if missing else None
    if mark.name == "needs_tool":
        missing = [tool for tool in mark.args if shutil.which(tool) is None]
        return f"needs {', '.join(missing)} on PATH (tools/install.sh, .ci/setup-arm.sh)" if missing else None
    if mark.name == "needs_cpu":
        missing = sorted(set(mark.args) - host_cpu_flags())
        return f"{EXPECTED}this CPU lacks {', '.join(missing)}" if missing else None
    return None


# Fixtures that imply a need: a test using one is marked with it at collection.
FIXTURE_NEEDS = {"arm_env": ("needs_arm_env", "needs_tvm"),
                 "arm_artifact": ("needs_arm_env", "needs_tvm", "needs_data"),
                 "x86_artifact": ("needs_tvm", "needs_data"), "sim_checkpoint": ("needs_data",),
                 "real_checkpoint": ("needs_data",), "kaist": ("needs_data",),
                 "artifact64": ("needs_tvm", "needs_data")}  # tests/test_compile.py


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, needs in FIXTURE_NEEDS.items():
            if fixture in item.fixturenames:
                for need in needs:
                    item.add_marker(need)


def pytest_runtest_setup(item):
    for mark in item.iter_markers():
        reason = _unmet(mark)
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a skip that CI does not expect (see module docstring) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if EXPECTED not in reason:
            report.outcome = "failed"
            report.longrepr = f"unexpected skip in CI: {reason}"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (CI lays ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def sim_checkpoint():
    from bisr_deploy.checkpoint import load_checkpoint

    return load_checkpoint(_need(SIM_PTH))


@pytest.fixture(scope="session")
def real_checkpoint():
    from bisr_deploy.checkpoint import load_checkpoint

    return load_checkpoint(_need(REAL_PTH))


@pytest.fixture(scope="session")
def kaist():
    """(cube [28,128,128] float32, mask [128,128] float32) of the held-out KAIST crop."""
    data = np.load(_need(KAIST_NPZ))
    return np.ascontiguousarray(data["img"].transpose(2, 0, 1)), data["mask"].astype(np.float32)


@pytest.fixture(scope="session")
def kaist_snapshot(kaist):
    """The CASSI snapshot [128, 182] of the KAIST crop through its mask, by the project's forward model."""
    from bisr_deploy.cassi import simulate_snapshot

    cube, mask = kaist
    return simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()


# ---- compiled artifacts shared by the compile, ARM and verify tests ----

HOST_TOOLS = ("qemu-aarch64", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump")


def arm_env_tool():
    """tools/arm_env.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("arm_env_tool", REPO / "tools" / "arm_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def arm_env():
    """The aarch64 emulation environment (built on first use); tests using it are marked ``needs_arm_env``."""
    from bisr_deploy import emulation

    env, _ = arm_env_tool().build(emulation.default_env_dir())
    return env


ARTIFACT_SIZE = 64  # scene H = W of the test artifacts; the snapshot is SIZE x (SIZE + 54)


@pytest.fixture(scope="session")
def arm_artifact(arm_env, tmp_path_factory):
    """The simulation checkpoint compiled for aarch64 at 64 x 64 through the CLI."""
    out = tmp_path_factory.mktemp("arm-artifact") / "arm"
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "compile", "--checkpoint", SIM_PTH, "--height",
                           str(ARTIFACT_SIZE), "--width", str(ARTIFACT_SIZE), "--target", "arm", "--output", out],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "target aarch64-linux-gnu cpu generic" in proc.stdout
    return out


@pytest.fixture(scope="session")
def x86_artifact(tmp_path_factory):
    """The same network for x86 with AVX2 (haswell): code that any CI machine of this kind runs."""
    from bisr_deploy.compile.build import build_artifact
    from bisr_deploy.compile.targets import resolve_target
    from bisr_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("x86-artifact") / "x86"
    build_artifact(export_onnx(SIM_PTH, ARTIFACT_SIZE, ARTIFACT_SIZE), out, resolve_target("x86", "haswell"))
    return out


# ---- the native C++ loader (targets/native), built for this host ----

NATIVE_DIR = REPO / "targets" / "native"


def host_site() -> str:
    """The site-packages folder that holds the installed TVM wheels (the native loader links their runtime)."""
    import tvm

    return os.path.dirname(os.path.dirname(tvm.__file__))


def make_native(site, build, cxx):
    """Build targets/native (bisr_run, libbisr_native) into ``build`` with ``cxx`` against the TVM in ``site``."""
    subprocess.run(["make", "-s", "-C", str(NATIVE_DIR), f"TVM_SITE={site}", f"BUILD={build}", f"CXX={cxx}"],
                   check=True, capture_output=True, text=True)
    return build / "bisr_run"


@pytest.fixture(scope="session")
def native_host(tmp_path_factory):
    """bisr_run built for this x86_64 host against the installed TVM wheels."""
    return make_native(host_site(), tmp_path_factory.mktemp("native-host"), "g++")


def run_native_host(binary, *args):
    """The host build as docs/arm.md runs it: no LD_LIBRARY_PATH (the rpath finds the TVM wheels' libraries)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env)
