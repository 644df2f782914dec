"""Scoring checkpoints on ground-truth scenes: simulate each scene's snapshot, reconstruct, PSNR/SSIM.

A scene is a cube [28, H, W] on [0, 1] and the top-left H x W crop of a 2-D mask (the convention of the
KAIST test crop, whose mask is the top-left 128 x 128 of the standard 256 x 256 one). Every checkpoint sees
the same noise-free snapshot, made by ``bisr_deploy.cassi.simulate_snapshot``, and is run by
``bisr_deploy.reconstruct.reconstruct`` (the deploy path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import progress
from ..checkpoint import load_checkpoint
from ..errors import BisrError
from ..metrics import psnr, ssim
from ..reconstruct import reconstruct
from ..data.datasets import measure


@dataclass
class Scene:
    name: str
    truth: np.ndarray  # [28, H, W] float32
    mask: np.ndarray  # [H, W] float32


def scene_with_mask(name: str, truth: np.ndarray, mask: np.ndarray) -> Scene:
    """The scene with the top-left crop of ``mask`` of the cube's size."""
    h, w = truth.shape[1:]
    if mask.shape[0] < h or mask.shape[1] < w:
        raise BisrError(f"mask {mask.shape} is smaller than scene {name} ({h} x {w})")
    return Scene(name, truth, np.ascontiguousarray(mask[:h, :w], dtype=np.float32))


def score(checkpoints: dict[str, str | None], scenes: list[Scene]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{checkpoint label: {scene name: (PSNR dB, SSIM)}}``; paths are resolved by ``load_checkpoint`` (names, ``None`` = the default)."""
    results = {}
    for label, path in checkpoints.items():
        ckpt = load_checkpoint(path)
        if ckpt.config.mode != "sim":
            raise BisrError(f"{label}: a {ckpt.config.mode}-mode checkpoint; evaluation simulates masked snapshots (sim mode)")
        model = ckpt.build_model()
        results[label] = {}
        for scene in progress.items(scenes, f"{label}, scenes"):
            cube = reconstruct(model, measure(scene.truth, scene.mask), scene.mask)
            results[label][scene.name] = (psnr(cube, scene.truth), ssim(cube, scene.truth))
    return results


def markdown_table(results: dict[str, dict[str, tuple[float, float]]], groups: dict[str, list[str]]) -> str:
    """Rows = scenes, then one mean row per group of scene names; columns = PSNR / SSIM per checkpoint."""
    labels = list(results)
    lines = ["| scene | " + " | ".join(f"{lab} PSNR (dB) | {lab} SSIM" for lab in labels) + " |",
             "|---|" + "---|---|" * len(labels)]
    names = list(next(iter(results.values())))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{results[lab][name][0]:.2f} | {results[lab][name][1]:.4f}" for lab in labels) + " |")
    for group, members in groups.items():
        if len(members) > 1:
            cells = []
            for lab in labels:
                vals = np.array([results[lab][m] for m in members])
                cells.append(f"{vals[:, 0].mean():.2f} | {vals[:, 1].mean():.4f}")
            lines.append(f"| **{group}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)
