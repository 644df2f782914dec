"""``bisr-deploy verify``: a compiled artifact against the PyTorch model, on scenes with and without ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import progress
from ..artifact import read_manifest
from ..data.reference import DATA_ENV, reference_data
from ..shipped import DEFAULT_CHECKPOINT, resolve_checkpoint
from ..errors import BisrError
from ..fileio import atomic_output, check_output, load_array
from ..provenance import check_same_weights
from . import checkpoint_option


@click.command("verify")
@click.argument("artifact", type=click.Path(file_okay=False))
@checkpoint_option("The checkpoint the artifact was compiled from")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help=f"Reference data laid out like the project's ../shared/data: hsi-scenes/ (ground-truth cubes), "
                   f"tsa-cassi/mask_simulation_256.mat or mask_real_660.mat, and for real-mode artifacts "
                   f"tsa-cassi/real_measurements/. Default: ${DATA_ENV}, else ../shared/data of the current "
                   f"directory when it exists, else none (held-out synthetic scenes through the generated mask).")
@click.option("--scenes", "scenes_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of ground-truth cubes (default: hsi-scenes/ of the reference data).")
@click.option("--real", "real_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of real snapshots without ground truth, real-mode artifacts (default: "
                   "tsa-cassi/real_measurements/ of the reference data).")
@click.option("--synthetic", default=2, show_default=True, type=click.IntRange(0, 100),
              help="Number of held-out synthetic scenes.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="2-D coded aperture for simulated snapshots (default: the top-left crop of the TSA-Net mask of "
                   "the artifact's mode from the reference data, else the project's generated mask).")
@click.option("--mask-key", default=None, help="Variable name inside --mask.")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="Check every BiSR-Conv of the artifact on PyTorch's own layer inputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the full report here.")
def verify_command(artifact, checkpoint_path, data_dir, scenes_dir, real_dir, synthetic, mask_path, mask_key, layers, json_path):
    """Check ARTIFACT against PyTorch: per-layer agreement, PSNR/SSIM against PyTorch and ground truth.

    Exits with status 1 when a criterion fails (criteria: bisr_deploy/verify.py)."""
    from .. import emulation, runtime
    from .. import verify as v
    from ..checkpoint import load_checkpoint

    if json_path:
        check_output(json_path, "--json", (".json",), (checkpoint_path, mask_path, *Path(artifact).glob("*")))
    manifest = read_manifest(artifact)
    ckpt = load_checkpoint(checkpoint_path)
    if ckpt.config.mode != manifest.mode:
        raise BisrError(f"the artifact is a {manifest.mode}-mode model, the checkpoint a {ckpt.config.mode}-mode one")
    check_same_weights(manifest.source, resolve_checkpoint(checkpoint_path), ckpt.provenance)
    _, _, height, width = manifest.output.shape
    report = v.Report(artifact=str(artifact), checkpoint=checkpoint_path or DEFAULT_CHECKPOINT)

    mode = manifest.mode
    data = reference_data(data_dir, mode)
    if data is None:
        report.skipped.append(f"reference scenes: no --data, ${DATA_ENV} or ../shared/data here")
    aperture = load_array(mask_path, mask_key) if mask_path else v.default_mask(mode, height, width, data)
    aperture = v.crop_mask(aperture, height, width)
    scenes = [("synthetic", s) for s in v.synthetic_scenes(synthetic, height, width, aperture, mode)]
    scenes_dir = Path(scenes_dir) if scenes_dir else (data.scenes if data else None)
    if scenes_dir is not None:
        if not scenes_dir.is_dir():
            raise BisrError(f"{scenes_dir}: no such scene folder")
        scenes += [("ground-truth", s) for s in v.ground_truth_scenes(scenes_dir, height, width, aperture, mode)]
    if mode == "real":
        real_dir = Path(real_dir) if real_dir else (data.real if data else None)
        if real_dir is not None:
            scenes += [("real", s) for s in v.real_snapshots(real_dir, height, width, report.skipped)]
    elif real_dir:
        report.skipped.append(f"{real_dir}: real snapshots need a real-mode artifact")

    only = [s for _, s in scenes]
    if emulation.is_foreign(manifest):
        progress.stage(f"running {len(only)} scenes on the aarch64 artifact under emulation")
        outputs = emulation.run_artifact_many(artifact, [(s.measurement, s.mask) for s in only])
        latencies = [None] * len(only)
    else:
        runtime.default_threads()
        outputs, latencies = v.timed_outputs(runtime.load(artifact), only)
    references = v.torch_outputs(ckpt, only)
    for (kind, scene), out, ref, ms in zip(scenes, outputs, references, latencies):
        report.scenes.append(v.compare_scene(scene, kind, out, ref, ms))
    if layers:
        report.layers = v.layer_agreement(artifact, manifest, ckpt, only[0] if only else None)
    v.judge(report)

    _print_table(report)
    if json_path:
        with atomic_output(json_path) as tmp:
            Path(tmp).write_text(json.dumps(report.to_dict(), indent=2))
        click.echo(f"wrote {json_path}")
    if not report.passed:
        for failure in report.failures:
            click.echo(f"FAIL {failure}", err=True)
        raise SystemExit(1)
    click.echo("PASS: every criterion holds")


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _print_table(report) -> None:
    """``report`` (a ``verify.Report``): scenes with their PSNR/SSIM of the artifact against PyTorch's output and
    (when known) of both against ground truth; then the per-layer agreement."""
    from .. import verify as v

    click.echo(f"{'':<43} {'':<13} {'artifact vs PyTorch':^21} {'PSNR vs ground truth (dB)':^37} {'time':>8}")
    click.echo(f"{'scene':<43} {'kind':<13} {'PSNR dB':>13} {'SSIM':>7} {'artifact':>13} "
               f"{'PyTorch':>14} {'art-PyT':>7} {'ms':>8}")
    for r in report.scenes:
        click.echo(f"{r.name[:43]:<43} {r.kind:<13} {_fmt(r.psnr_vs_torch, '13.2f')} {_fmt(r.ssim_vs_torch, '7.4f')} "
                   f"{_fmt(r.psnr_truth_artifact, '13.3f')} {_fmt(r.psnr_truth_torch, '14.3f')} "
                   f"{_fmt(r.psnr_gap, '+7.3f')} {_fmt(r.latency_ms, '8.1f')}")
    if report.layers:
        worst = min(report.layers, key=report.layers.get)
        if report.layers[worst] == 1.0:
            click.echo(f"per-layer agreement: all {len(report.layers)} BiSR-Convs reproduce PyTorch's output on its own "
                       "input, every element")
        else:
            click.echo(f"per-layer agreement: {len(report.layers)} BiSR-Convs; the worst, {worst}, reproduces "
                       f"{report.layers[worst]:.5%} of PyTorch's output elements (criterion >= {v.LAYER_MIN_AGREEMENT:.1%})")
    for note in report.skipped:
        click.echo(f"skipped {note}")
