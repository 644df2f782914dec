"""README's command lines, as written and in order: the list below must equal them, and a walk runs them.

``WALK`` pairs every README command with what the walk runs: the line itself, or the same command at a fast
size (the commands and flags stay; only sizes, epochs and scene counts shrink), or None for the two lines
that cannot run inside the test suite (the installer and the test suite itself; CI runs both as `.ci/run`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bisr_deploy.metrics import psnr

from .conftest import REPO, SHARED

MASK = "../shared/data/tsa-cassi/mask_simulation_256.mat"
SCENE1 = "../shared/data/tsa-cassi/real_measurements/scene1.mat"
KAIST = "../shared/data/hsi-scenes/kaist/kaist_crop128.npz"
TINY_TRAIN = ("--set data.samples_per_epoch=8 --set data.patch_size=16 --set data.val_size=16 "
              "--set data.val_synthetic=1 --set train.epochs=1 --set train.batch_size=2")
FAST_SIZE = "--height 32 --width 32"

WALK = [
    ("bash tools/install.sh && bisr-deploy compile --target arm --output out/bisrnet-arm && bisr-deploy verify out/bisrnet-arm",
     f"bisr-deploy compile --target arm {FAST_SIZE} --output out/bisrnet-arm && "
     f"bisr-deploy verify out/bisrnet-arm --synthetic 1 --scenes {Path(KAIST).parent}"),
    ("python3 -m pytest -q", None),
    (f"bisr-deploy reconstruct --checkpoint authors-real --measurement {SCENE1} --output scene1.npy --preview scene1.png", "="),
    (f"bisr-deploy simulate --scene ../shared/data/hsi-scenes/cave/cloth_ms_256.mat --mask {MASK} --output-dir sim",
     f"bisr-deploy simulate --scene ../shared/data/hsi-scenes/cave/cloth_ms_256.mat --mask {MASK} --output-dir sim {FAST_SIZE}"),
    ("bisr-deploy reconstruct --checkpoint authors-sim --measurement sim/measurement.npy --mask sim/mask.npy --output cube.mat "
     "--truth sim/truth.npy", "="),
    ("bisr-deploy info authors-sim", "="),
    ("bisr-deploy train --config configs/train-small.toml --output-dir runs/small",
     f"bisr-deploy train --config configs/train-small.toml --output-dir runs/small {TINY_TRAIN}"),
    ("bisr-deploy train --config configs/train-small.toml --output-dir runs/small --resume",
     f"bisr-deploy train --config configs/train-small.toml --output-dir runs/small --resume {TINY_TRAIN}"),
    ("torchrun --nproc_per_node 2 -m bisr_deploy.cli train --config configs/train-small.toml --output-dir runs/ddp",
     f"torchrun --nproc_per_node 2 -m bisr_deploy.cli train --config configs/train-small.toml --output-dir runs/ddp {TINY_TRAIN}"),
    ("bisr-deploy train --config configs/finetune-real-mask.toml --init authors-sim --output-dir runs/finetune-real-mask",
     "bisr-deploy train --config configs/finetune-real-mask.toml --init authors-sim --output-dir runs/finetune-real-mask "
     f"{TINY_TRAIN}"),
    (f"bisr-deploy evaluate --checkpoint trained-sim --checkpoint authors-sim --scene {KAIST} --key img --mask {MASK} "
     "--synthetic 8 --size 256",
     f"bisr-deploy evaluate --checkpoint trained-sim --checkpoint authors-sim --scene {KAIST} --key img --mask {MASK} "
     "--synthetic 1 --size 32"),
    ("bisr-deploy export --checkpoint authors-sim --output bisrnet.onnx",
     f"bisr-deploy export --checkpoint authors-sim --output bisrnet.onnx {FAST_SIZE}"),
    ("python3 tools/export_parity.py --sizes 256,128 --layers", "python3 tools/export_parity.py --sizes 32 --layers --skip-plain"),
    ("bisr-deploy compile bisrnet.onnx --target x86 --cpu native --output art-x86", "="),
    ("bisr-deploy compile bisrnet.onnx --target arm --output art-arm", "="),
    ("bisr-deploy compile --target android-arm64 --output art-android",
     f"bisr-deploy compile --target android-arm64 --output art-android {FAST_SIZE}"),
    ("bisr-deploy run art-x86 --measurement sim/measurement.npy --mask sim/mask.npy --output cube.npy", "="),
    ("bisr-deploy verify art-x86 --checkpoint authors-sim --json report.json", "="),
    ("bisr-deploy bench --checkpoint authors-sim --artifact art-x86 --output-dir bench/",
     f"bisr-deploy bench --checkpoint authors-sim --artifact art-x86 --output-dir bench/ {FAST_SIZE} --repeat 1 "
     "--skip tvm-fp32"),
    ("bisr-deploy estimate art-arm --core cortex-a76 --threads 4 --json a76.json", "="),
    ("bisr-deploy compile --checkpoint authors-real --height 660 --width 660 --output art-real", "="),
    (f"bisr-deploy run art-real --measurement {SCENE1} --output scene1-art.npy", "="),
]


def readme_commands() -> list[str]:
    """The command lines of README's indented code blocks from "Set up" to "What the numbers are":
    continuation lines joined, trailing comments (after two spaces) and comment lines dropped."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Set up"))
    end = next(i for i, line in enumerate(lines) if line.startswith("## What the numbers are"))
    commands, current = [], ""
    for line in lines[start:end]:
        if not line.startswith("    ") or line.strip().startswith("#"):
            continue
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        commands.append(re.split(r"\s{2,}#", current)[0].strip())
        current = ""
    return commands


def test_walk_lists_every_readme_command_in_order():
    assert [readme for readme, _ in WALK] == readme_commands()


def _android_ndk_missing(proc) -> bool:
    errors = proc.stderr.strip().splitlines()
    return proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error:") and "NDK" in errors[0]


@pytest.mark.slow
def test_readme_lines_run_in_order_on_a_fresh_clone(tmp_path):
    """Every README line in order, in a fresh folder laid out like a clone with ../shared beside it."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("configs", "tools"):
        (clone / name).symlink_to(REPO / name)
    (tmp_path / "shared").symlink_to(SHARED.parent)
    bin_dir = tmp_path / "bin"  # `bisr-deploy` of this checkout, whatever is installed
    bin_dir.mkdir()
    (bin_dir / "bisr-deploy").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bisr_deploy.cli "$@"\n')
    (bin_dir / "bisr-deploy").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    for readme, fast in WALK:
        if fast is None:
            continue
        command = readme if fast == "=" else fast
        if "--target arm" in command and shutil.which("qemu-aarch64") is None:
            continue  # test_arm.py reports the missing toolchain
        print(f"$ {command}", flush=True)  # shown with pytest -s: where a long walk is
        proc = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
        if "android-arm64" in command and _android_ndk_missing(proc):
            continue
        assert proc.returncode == 0, f"{readme}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert json.loads((clone / "report.json").read_text())["passed"]
    assert json.loads((clone / "bench" / "bench.json").read_text())["size"] == [32, 32]
    assert (clone / "runs" / "ddp" / "checkpoint.safetensors").is_file()
    # the real camera through the deploy path gives reconstruct's cube (sign flips only)
    assert psnr(np.load(clone / "scene1-art.npy"), np.load(clone / "scene1.npy")) >= 35.0
