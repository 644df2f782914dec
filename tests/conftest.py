"""Shared fixtures: paths into ../shared, the authors' checkpoints, the KAIST crop."""

from __future__ import annotations

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
