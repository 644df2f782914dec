"""Export the authors' and the project's trained-sim checkpoints and measure the exported files against PyTorch; print tables.

    python tools/export_parity.py [--sizes 128,256] [--skip-plain] [--layers] [--out-dir DIR]

For each checkpoint (the authors' simulation and real ones, the project's trained-sim) and size:
- sizes: the exported file (bit-packed ai.bisr ops) next to a plain fp32 ``torch.onnx.export`` of the same
  snapshot-to-cube model (TorchScript exporter, opset 18);
- ``onnx.checker.check_model(full_check=True)``, and TVM's Relax ONNX importer on the graph minus the ai.bisr ops;
- per-layer parity: each BiSRConv fed the same full-precision input (the activations of one scene) in
  PyTorch (Sign(0) = -1) and in ONNX Runtime's ``ai.bisr::BiSRConv`` function: sign bits compared, output
  difference relative to the output's range;
- end to end (simulation model): PSNR vs ground truth of PyTorch and of ONNX Runtime on the KAIST crop (128),
  CAVE scenes (256, resampled to the 28 bands) and synthetic scenes, with the standard TSA-Net mask;
  real model (no ground truth): PSNR and max |difference| of ONNX Runtime's cube vs PyTorch's on crops of the
  real TSA-Net snapshots.
Reads ../shared/data relative to the repository root. ONNX Runtime and PyTorch run on 1 thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bisr_deploy.cassi import simulate_snapshot  # noqa: E402
from bisr_deploy.checkpoint import load_checkpoint  # noqa: E402
from bisr_deploy.errors import BisrError  # noqa: E402
from bisr_deploy.export import export_onnx, save_onnx, strip_custom_ops  # noqa: E402
from bisr_deploy.export.parity import layer_parity, ort_session, run_onnx, scene_parity  # noqa: E402
from bisr_deploy.fileio import load_array  # noqa: E402
from bisr_deploy.frontend import SnapshotFrontend  # noqa: E402
from bisr_deploy.metrics import psnr  # noqa: E402
from bisr_deploy.reconstruct import reconstruct  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CHECKPOINTS = {"simulation": SHARED / "bisci-official/simulation/bisrnet.pth",
               "real": SHARED / "bisci-official/real/bisrnet.pth",
               "trained-sim": "trained-sim"}
KAIST = SHARED / "hsi-scenes/kaist/kaist_crop128.npz"
STANDARD_MASK = SHARED / "tsa-cassi/mask_simulation_256.mat"
CAVE_256 = ["chart_and_stuffed_toy_ms_256.mat", "cloth_ms_256.mat", "real_and_fake_apples_ms_256.mat"]
REAL_SCENES = [SHARED / f"tsa-cassi/real_measurements/scene{i}.mat" for i in (1, 2, 3)]
SYNTHETIC_SEEDS = (1, 2)


class _PlainModel(torch.nn.Module):
    """Snapshot (+ mask) -> cube in plain PyTorch, for the fp32 baseline export."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.frontend = SnapshotFrontend(model.mode, model.n_bands)

    def forward(self, measurement, mask=None):
        out = self.model(*self.frontend(measurement, mask))
        return out.clamp(0.0, 1.0) if self.model.mode == "real" else out


def plain_export_size(model, height: int, width: int, directory: str) -> int:
    path = os.path.join(directory, f"plain-{model.mode}-{height}.onnx")
    args = (torch.zeros(1, height, width + 54),) + ((torch.zeros(1, height, width),) if model.mode == "sim" else ())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(_PlainModel(model), args, path, dynamo=False, opset_version=18)
    return os.path.getsize(path)


def tvm_import(exported: onnx.ModelProto) -> str:
    """Import ``exported`` minus its custom ops with TVM's Relax ONNX frontend; the main function's result type."""
    from tvm.relax.frontend.onnx import from_onnx

    return str(from_onnx(strip_custom_ops(exported))["main"].ret_ty)


def sim_scenes(size: int):
    """(name, cube [28, size, size], mask [size, size]) with ground truth."""
    from bisr_deploy.data.spectra import CAVE_WAVELENGTHS, to_cassi_bands
    from bisr_deploy.data.synthetic import synthetic_scene

    mask = load_array(STANDARD_MASK, "mask").astype(np.float32)[:size, :size]
    if size == 128:
        data = np.load(KAIST)
        cube = np.ascontiguousarray(data["img"].transpose(2, 0, 1))
        yield "KAIST crop 128 (own mask)", cube, data["mask"].astype(np.float32)
    if size == 256:
        for name in CAVE_256:
            raw = load_array(SHARED / "hsi-scenes/cave" / name, "NRD").astype(np.float64) / 65535.0
            cube = to_cassi_bands(np.ascontiguousarray(raw.transpose(2, 0, 1)), CAVE_WAVELENGTHS)
            yield f"CAVE {name.split('_ms')[0]}", np.clip(cube, 0, 1).astype(np.float32), mask
    try:
        for seed in SYNTHETIC_SEEDS:
            yield f"synthetic seed {seed}", synthetic_scene(size, size, seed), mask
    except BisrError as exc:  # the generator needs colour-science
        print(f"(synthetic scenes skipped: {exc})")


def real_snapshots(size: int):
    """(name, centre crop [size, size + 54]) of the real TSA-Net snapshots."""
    for path in REAL_SCENES:
        meas = load_array(path, "meas_real").astype(np.float32)
        r0, c0 = (meas.shape[0] - size) // 2, (meas.shape[1] - size - 54) // 2
        yield f"{path.stem} centre crop", np.ascontiguousarray(meas[r0:r0 + size, c0:c0 + size + 54])


def report_sim(model, session, size: int):
    """End-to-end table for a simulation model; returns (name, snapshot, mask) of the first scene."""
    scenes = list(sim_scenes(size))
    print(f"{'scene':34s} {'PSNR torch':>10s} {'torch S0=-1':>11s} {'PSNR ORT':>9s} {'ORT-torch':>9s} "
          f"{'ORT vs torch':>12s} {'max|diff|':>9s}")
    for name, cube, mask in scenes:
        r = scene_parity(name, model, session, cube, mask)
        print(f"{name:34s} {r.psnr_torch:10.3f} {r.psnr_torch_neg:11.3f} {r.psnr_onnx:9.3f} "
              f"{r.psnr_onnx - r.psnr_torch:+9.3f} {r.psnr_onnx_vs_torch:9.2f} dB {r.max_abs_diff:9.4f}")
    name, cube, mask = scenes[0]
    return name, simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy(), mask


def report_real(model, session, size: int):
    """ORT-vs-PyTorch table for a real model; returns (name, snapshot, None) of the first snapshot."""
    snaps = list(real_snapshots(size))
    print(f"{'real snapshot (no ground truth)':34s} {'ORT vs torch':>12s} {'max|diff|':>9s}")
    for name, meas in snaps:
        out_t, out_o = reconstruct(model, meas), run_onnx(session, meas)
        print(f"{name:34s} {psnr(out_o, out_t):9.2f} dB {np.abs(out_o - out_t).max():9.4f}")
    return snaps[0][0], snaps[0][1], None


def report_layers(model, name: str, measurement, mask, per_layer: bool) -> None:
    rows = layer_parity(model, measurement, mask)
    signs = sum(r.signs for r in rows)
    flips = sum(r.sign_mismatches for r in rows)
    ties = sum(r.zero_preacts for r in rows)
    worst = max(rows, key=lambda r: r.max_abs_diff / r.max_abs_ref)
    print(f"per-layer parity on {name}: {len(rows)} BiSRConvs, sign bits {signs - flips:,}/{signs:,} agree "
          f"({flips} differ; {ties} exact-zero pre-activations), max |dY|/max|Y| "
          f"{worst.max_abs_diff / worst.max_abs_ref:.2e} ({worst.name})")
    if per_layer:
        for r in rows:
            print(f"  {r.name:58s} signs {r.signs:9,d} differ {r.sign_mismatches:3d} "
                  f"zeros {r.zero_preacts:4d} max|dY| {r.max_abs_diff:.2e} max|Y| {r.max_abs_ref:7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256", help="comma-separated square scene sizes (multiples of 8)")
    parser.add_argument("--skip-plain", action="store_true", help="skip the (slow) plain fp32 baseline export")
    parser.add_argument("--layers", action="store_true", help="print the per-layer parity table")
    parser.add_argument("--out-dir", default=None, help="keep the exported files here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or tmp
        for label, path in CHECKPOINTS.items():
            ckpt = load_checkpoint(path)
            model = ckpt.build_model()
            for size in sizes:
                t0 = time.perf_counter()
                exported = export_onnx(ckpt, size, size)
                export_s = time.perf_counter() - t0
                file = os.path.join(out_dir, f"bisrnet-{label}-{size}.onnx")
                nbytes = save_onnx(exported, file)
                onnx.checker.check_model(file, full_check=True)
                print(f"\n== {label} checkpoint ({model.mode} mode), {size} x {size}: {file}")
                line = f"exported {nbytes:,} bytes ({export_s:.1f} s), check_model(full_check=True) passed"
                if not args.skip_plain:
                    plain = plain_export_size(model, size, size, tmp)
                    line += f"; plain fp32 torch.onnx.export {plain:,} bytes = {plain / nbytes:.1f}x larger"
                print(line)
                print(f"TVM Relax from_onnx of the graph without the ai.bisr ops: returns {tvm_import(exported)}")
                session = ort_session(file)
                report = report_sim if model.mode == "sim" else report_real
                report_layers(model, *report(model, session, size), args.layers)


if __name__ == "__main__":
    main()
