"""Shared fixtures: paths into ../shared, the authors' checkpoints, the KAIST crop."""

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
# `bisr-deploy verify` (also in the subprocesses tests start) finds the reference data here, whatever the cwd.
os.environ.setdefault("BISR_DATA", str(SHARED))


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
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no aarch64 toolchain on this host ({', '.join(missing)} missing; .ci/setup-arm.sh installs it)")
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
