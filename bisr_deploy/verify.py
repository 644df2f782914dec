"""Numerical parity of a compiled artifact with the PyTorch model, designed around BiSRNet's sign flips.

A bit-exact or single tight end-to-end threshold cannot work: a pre-sign value within rounding of 0 flips
under any change of summation order, and the flip propagates (1 vs 2 PyTorch threads agree only to ~49 dB).
So the criteria are:

1. **Per layer** (``layer_agreement``): every BiSR-Conv of the artifact is fed the *same* full-precision input
   as the PyTorch layer (captured from a PyTorch run) and must reproduce its output: elements equal within
   float rounding / all elements >= ``LAYER_MIN_AGREEMENT``. One flipped activation or weight bit changes the
   integer accumulator by 2 and shows as a mismatch.
2. **End to end against ground truth**: on scenes with ground truth, the artifact's PSNR may differ from the
   PyTorch model's by at most ``MAX_MEAN_PSNR_GAP_DB`` on average and ``MAX_SCENE_PSNR_GAP_DB`` per scene.
3. **End to end against PyTorch**: every output (scenes with ground truth and real snapshots) is finite and
   within ``MIN_PSNR_VS_TORCH_DB`` of the PyTorch output.

The PyTorch reference uses Sign(0) = -1 (``sign_zero="negative"``), the convention of the bit-packed
operators (docs/custom-ops.md); the authors' ``torch.sign`` differs from it only at exact ties.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import progress
from .artifact import Manifest
from .cassi import simulate_snapshot
from .checkpoint import Checkpoint
from .data.reference import ReferenceData
from .errors import BisrError
from .fileio import ARRAY_SUFFIXES, load_array
from .metrics import psnr, ssim
from .model import with_negative_sign
from .reconstruct import bisr_conv_io, reconstruct

MAX_MEAN_PSNR_GAP_DB = 0.1
MAX_SCENE_PSNR_GAP_DB = 0.3
MIN_PSNR_VS_TORCH_DB = 30.0
LAYER_MIN_AGREEMENT = 0.999
LAYER_RTOL = 1e-4  # relative to the layer output's largest magnitude

CUBE_KEYS = ["img", "NRD", "Omsi", "msi"]


@dataclass
class Scene:
    """One verification input. ``truth`` is None for real snapshots."""

    name: str
    measurement: np.ndarray  # [H, W + 54]
    mask: np.ndarray | None  # [H, W] (simulation mode)
    truth: np.ndarray | None  # [28, H, W] on [0, 1]


@dataclass
class SceneResult:
    name: str
    kind: str  # "synthetic" | "ground-truth" | "real"
    finite: bool
    psnr_vs_torch: float
    ssim_vs_torch: float
    psnr_truth_artifact: float | None = None
    psnr_truth_torch: float | None = None
    ssim_truth_artifact: float | None = None
    ssim_truth_torch: float | None = None
    latency_ms: float | None = None

    @property
    def psnr_gap(self) -> float | None:
        if self.psnr_truth_artifact is None:
            return None
        return self.psnr_truth_artifact - self.psnr_truth_torch


@dataclass
class Report:
    artifact: str
    checkpoint: str
    scenes: list[SceneResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    layers: dict[str, float] = field(default_factory=dict)  # layer name -> agreement fraction
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        out = asdict(self)
        for scene, result in zip(out["scenes"], self.scenes):
            scene["psnr_gap"] = result.psnr_gap
        out["passed"] = self.passed
        out["criteria"] = {
            "max_mean_psnr_gap_db": MAX_MEAN_PSNR_GAP_DB, "max_scene_psnr_gap_db": MAX_SCENE_PSNR_GAP_DB,
            "min_psnr_vs_torch_db": MIN_PSNR_VS_TORCH_DB, "layer_min_agreement": LAYER_MIN_AGREEMENT,
            "layer_rtol": LAYER_RTOL, "torch_reference": "sign_zero=negative (Sign(0) = -1)",
        }
        return out


def crop_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape[0] < height or mask.shape[1] < width:
        raise BisrError(f"mask {mask.shape} is smaller than the scene size {height} x {width}")
    return np.ascontiguousarray(mask[:height, :width], dtype=np.float32)


def default_mask(mode: str, height: int, width: int, data: ReferenceData | None) -> np.ndarray:
    """The coded aperture that simulated snapshots go through: the top-left crop of the TSA-Net mask of the
    mode (simulation 256 x 256, real camera 660 x 660) from ``data`` when it is large enough, else the
    project's generated mask."""
    if data is not None:
        mask = load_array(data.mask(mode), "mask")
        if mask.shape[0] >= height and mask.shape[1] >= width:
            return crop_mask(mask, height, width)
    from .data.synthetic import generated_mask

    return generated_mask(height, width, 0)


def _scene(name: str, truth: np.ndarray, aperture: np.ndarray, mode: str) -> Scene:
    """The snapshot of ``truth`` through ``aperture``; simulation-mode models also get the aperture as input."""
    snapshot = simulate_snapshot(torch.from_numpy(truth)[None], torch.from_numpy(aperture))[0].numpy()
    return Scene(name, snapshot, aperture if mode == "sim" else None, truth)


def ground_truth_scenes(folder: Path, height: int, width: int, aperture: np.ndarray, mode: str) -> list[Scene]:
    """Top-left height x width crops of every cube in ``folder`` (recursively). A smaller cube (the 128 x 128
    KAIST crop in a 256 x 256 artifact) is mirror-extended to that size (``mirror_extend``) and named
    ``NAME (mirrored)``; its PSNR covers the whole extended scene, whose copies meet other parts of the mask."""
    from .data.config import DataConfig
    from .data.datasets import load_cube

    config = DataConfig(keys=CUBE_KEYS)
    scenes = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in ARRAY_SUFFIXES and p.is_file()):
        cube = load_cube(path, config)
        name = path.stem
        if cube.shape[1] < height or cube.shape[2] < width:
            cube, name = mirror_extend(cube, height, width), f"{name} (mirrored)"
        truth = np.ascontiguousarray(cube[:, :height, :width])
        scenes.append(_scene(name, truth, aperture, mode))
    return scenes


def mirror_extend(cube: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cube`` [C, h, w] extended to at least height x width by mirroring at its bottom and right edges
    (edge pixels repeated: ``np.pad`` mode ``symmetric``), so the extension has no seams."""
    pad_h, pad_w = max(height - cube.shape[1], 0), max(width - cube.shape[2], 0)
    return np.pad(cube, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")


def synthetic_scenes(count: int, height: int, width: int, aperture: np.ndarray, mode: str) -> list[Scene]:
    """Held-out synthetic scenes (odd seeds; training uses even ones)."""
    from .data.datasets import heldout_name, heldout_seed
    from .data.synthetic import synthetic_scene

    scenes = []
    for i in range(count):
        scenes.append(_scene(heldout_name(i), synthetic_scene(height, width, heldout_seed(i)), aperture, mode))
    return scenes


def real_snapshots(folder: Path, height: int, width: int, skipped: list[str]) -> list[Scene]:
    """Top-left height x (width + 54) crops of the real snapshots in ``folder``."""
    scenes = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES):
        y = load_array(path)
        if y.ndim != 2 or y.shape[0] < height or y.shape[1] < width + 54:
            skipped.append(f"{path.name}: snapshot {y.shape} is smaller than {height} x {width + 54}")
            continue
        scenes.append(Scene(path.stem, np.ascontiguousarray(y[:height, : width + 54], dtype=np.float32), None, None))
    return scenes


def compare_scene(scene: Scene, kind: str, artifact_out: np.ndarray, torch_out: np.ndarray, latency_ms: float | None) -> SceneResult:
    finite = bool(np.all(np.isfinite(artifact_out)))
    vs_torch = (psnr(artifact_out, torch_out), ssim(artifact_out, torch_out)) if finite else (float("nan"), float("nan"))
    result = SceneResult(scene.name, kind, finite, *vs_torch, latency_ms=latency_ms)
    if scene.truth is not None and finite:
        result.psnr_truth_artifact = psnr(artifact_out, scene.truth)
        result.psnr_truth_torch = psnr(torch_out, scene.truth)
        result.ssim_truth_artifact = ssim(artifact_out, scene.truth)
        result.ssim_truth_torch = ssim(torch_out, scene.truth)
    return result


def judge(report: Report) -> None:
    """Fill ``report.failures`` from the criteria in this module's docstring."""
    for r in report.scenes:
        if not r.finite:
            report.failures.append(f"{r.name}: output has NaN/Inf")
            continue
        if r.psnr_vs_torch < MIN_PSNR_VS_TORCH_DB:
            report.failures.append(f"{r.name}: {r.psnr_vs_torch:.2f} dB against PyTorch < {MIN_PSNR_VS_TORCH_DB} dB")
        if r.psnr_gap is not None and abs(r.psnr_gap) > MAX_SCENE_PSNR_GAP_DB:
            report.failures.append(f"{r.name}: PSNR vs truth differs from PyTorch's by {r.psnr_gap:+.3f} dB "
                                   f"(limit ±{MAX_SCENE_PSNR_GAP_DB})")
    gaps = [r.psnr_gap for r in report.scenes if r.psnr_gap is not None]
    if gaps and abs(float(np.mean(gaps))) > MAX_MEAN_PSNR_GAP_DB:
        report.failures.append(f"mean PSNR gap to PyTorch {np.mean(gaps):+.3f} dB exceeds ±{MAX_MEAN_PSNR_GAP_DB} dB")
    for name, agreement in report.layers.items():
        if agreement < LAYER_MIN_AGREEMENT:
            report.failures.append(f"layer {name}: {agreement:.4%} of outputs agree (< {LAYER_MIN_AGREEMENT:.1%})")
    if not report.scenes:
        report.failures.append("no scene was verified")


def torch_outputs(ckpt: Checkpoint, scenes: list[Scene]) -> list[np.ndarray]:
    model = with_negative_sign(ckpt.build_model())
    return [reconstruct(model, s.measurement, s.mask) for s in progress.items(scenes, "PyTorch reference, scenes")]


def timed_outputs(run, scenes: list[Scene]) -> tuple[list[np.ndarray], list[float]]:
    """Run an in-process artifact on every scene; latency in ms per call."""
    outputs, latencies = [], []
    for s in progress.items(scenes, "artifact, scenes"):
        start = time.perf_counter()
        outputs.append(run(s.measurement, s.mask))
        latencies.append((time.perf_counter() - start) * 1e3)
    return outputs, latencies


def agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of elements of ``out`` equal to ``ref`` within ``LAYER_RTOL`` of ref's largest magnitude."""
    tol = LAYER_RTOL * max(float(np.abs(ref).max()), 1.0)
    return float(np.mean(np.abs(out - ref) <= tol))


def layer_agreement(artifact, manifest: Manifest, ckpt: Checkpoint, scene: Scene | None) -> dict[str, float]:
    """Run every BiSR-Conv of the artifact on PyTorch's input for that layer (captured on ``scene``)."""
    from . import emulation, runtime

    if scene is None:
        return {}
    io = {name: (x.numpy(), y.numpy()) for name, (x, y) in
          bisr_conv_io(with_negative_sign(ckpt.build_model()), scene.measurement, scene.mask).items()}
    names = [layer.name for layer in manifest.bisrconv_layers()]
    missing = sorted(set(io) - set(names))
    if missing:
        raise BisrError(f"the artifact has no BiSR-Conv named {missing[0]} (and {len(missing) - 1} more): "
                        "was it compiled from this checkpoint?")
    if emulation.is_foreign(manifest):
        progress.stage(f"running {len(io)} BiSR-Conv layers on the aarch64 artifact under emulation")
        _, outputs = emulation.run_emulated(artifact, [], {name: x for name, (x, _) in io.items()})
    else:
        model = runtime.load(artifact)
        outputs = {name: model.run_bisrconv(name, x) for name, (x, _) in progress.items(io.items(), "BiSR-Conv layers")}
    return {name: agreement(outputs[name], y) for name, (_, y) in io.items()}
