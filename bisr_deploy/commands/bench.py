"""``bisr-deploy bench``: compiled artifact vs ONNX Runtime fp32 vs TVM fp32 vs PyTorch, one process.

Writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``--output-dir`` and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from ..compile.targets import cpu_model_name
from ..errors import BisrError
from ..fileio import atomic_output, check_output

BACKENDS = ("compiled", "onnxruntime-fp32", "tvm-fp32", "pytorch-eager")
REPORT_FILES = ("bench.json", "bench.md", "bench.png")


def bench_inputs(height: int, width: int, mode: str, seed: int = 0):
    """A deterministic snapshot of a random scene through a random binary mask (content does not change
    the amount of work)."""
    import torch

    from ..cassi import simulate_snapshot

    rng = np.random.default_rng(seed)
    cube = rng.random((28, height, width)).astype(np.float32)
    mask = (rng.random((height, width)) > 0.5).astype(np.float32)
    y = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    return y, (mask if mode == "sim" else None)


@click.command("bench")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint to benchmark (default: the shipped one).")
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="A compiled artifact of the same checkpoint and size (default: compile one now).")
@click.option("--height", type=int, default=256, show_default=True)
@click.option("--width", type=int, default=256, show_default=True)
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None, help="Input mode of an authors' .pth.")
@click.option("--cpu", default="native", show_default=True, help="x86 cpu for compiling (see `compile --cpu`).")
@click.option("--repeat", type=int, default=5, show_default=True, help="Timed calls per backend and thread count.")
@click.option("--skip", multiple=True, type=click.Choice(BACKENDS), help="Leave a backend out (repeatable).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False), help="Where to write the reports.")
def bench_command(checkpoint_path, artifact, height, width, mode, cpu, repeat, skip, output_dir):
    """Latency, memory and per-layer times of one reconstruction on every backend."""
    from ..runtime import default_threads

    default_threads()  # before anything starts TVM's thread pool
    from ..checkpoint import load_checkpoint
    from ..compile.benchmark import all_cores, measure_interleaved, ort_runner, torch_runner, tvm_vm_runner
    from ..compile.build import build_artifact, compile_module
    from ..compile.onnx_import import import_onnx
    from ..compile.profile import network_calls, profile_calls, summarize
    from ..compile.targets import resolve_target
    from ..export import export_onnx
    from ..runtime import load, set_num_threads

    out_dir = Path(output_dir)
    if not out_dir.is_dir():
        raise BisrError(f"--output-dir {out_dir} does not exist")
    for name in REPORT_FILES:
        check_output(out_dir / name, "--output-dir", inputs=(checkpoint_path,))
    if repeat < 1:
        raise BisrError("--repeat must be at least 1")
    ckpt = load_checkpoint(checkpoint_path, mode)
    torch_model = ckpt.build_model()
    onnx_model = export_onnx(ckpt, height, width)
    onnx_bytes = onnx_model.SerializeToString()
    target = resolve_target("x86", cpu)
    y, mask = bench_inputs(height, width, torch_model.mode)
    feeds = {"measurement": y[None]} | ({"mask": mask[None]} if mask is not None else {})
    cores = all_cores()
    thread_counts = [1] + ([cores] if cores > 1 else [])
    report = {"machine": {"cpu": cpu_model_name(), "cores": cores, "platform": platform.platform()},
              "size": [height, width], "mode": torch_model.mode, "target": target.tvm_target,
              "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "results": []}

    with tempfile.TemporaryDirectory(prefix="bisr-bench-") as tmp:
        if "compiled" not in skip:
            if artifact is None:
                start = time.perf_counter()
                artifact = Path(tmp) / "artifact"
                build_artifact(onnx_model, artifact, target)
                report["compile_s"] = round(time.perf_counter() - start, 1)
            compiled = load(artifact)
            if compiled.manifest["source"].get("onnx_sha256") != report["onnx_sha256"]:
                raise BisrError(f"{artifact} was not compiled from this checkpoint at {height} x {width}")
            report["artifact_bytes"] = sum(f["bytes"] for f in compiled.manifest["files"].values())
        tvm_fp32 = None
        if "tvm-fp32" not in skip:
            imported, executable = compile_module(onnx_model, target, bitserial=False)
            tvm_fp32 = tvm_vm_runner(executable, list(feeds.values()), [a for _, a in imported.params])
        backends = [b for b in BACKENDS if b not in skip]
        for threads in thread_counts:
            set_num_threads(threads)
            fns = {}
            for backend in backends:
                if backend == "compiled":
                    fns[backend] = lambda: compiled(y, mask)  # noqa: E731
                elif backend == "tvm-fp32":
                    fns[backend] = tvm_fp32
                elif backend == "onnxruntime-fp32":
                    fns[backend] = ort_runner(onnx_bytes, threads, feeds)
                else:
                    fns[backend] = torch_runner(torch_model, y, mask, threads)
            report["results"] += [m.as_dict() for m in measure_interleaved(fns, threads, repeat)]
        set_num_threads(1)
        if "compiled" not in skip:
            rows = profile_calls(import_onnx(onnx_model, target.lanes), target, repeat=max(3, repeat))
            report["layers"] = rows
            report["layers_by_kind_ms"] = summarize(rows)
            in_network = network_calls(compiled, y, mask, repeat=max(3, repeat))
            report["network_layers"] = in_network
            report["network_layers_by_kind_ms"] = summarize(in_network)

    _finish(report, out_dir)


def _speedups(report) -> dict:
    med = {(r["backend"], r["threads"]): r["median_ms"] for r in report["results"]}
    out = {}
    for (backend, threads), ms in med.items():
        base = med.get(("onnxruntime-fp32", threads))
        if base and backend != "onnxruntime-fp32":
            out[f"{backend}@{threads}"] = round(base / ms, 2)
    return out


def _markdown(report) -> str:
    lines = [f"# bisr-deploy bench: {report['size'][0]} x {report['size'][1]} {report['mode']}-mode reconstruction", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores ({report['machine']['platform']}); "
             f"TVM target {json.dumps(report['target'])}.", "",
             "| backend | threads | median ms | min ms | max ms | IQR ms | peak RSS rise MiB | speed-up vs ORT |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    speed = report["speedups_vs_onnxruntime"]
    for r in report["results"]:
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "n/a"
        sp = speed.get(f"{r['backend']}@{r['threads']}", 1.0 if r["backend"] == "onnxruntime-fp32" else None)
        lines.append(f"| {r['backend']} | {r['threads']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['iqr_ms']:.1f} | {peak} | {'' if sp is None else f'{sp:.2f}x'} |")
    if "artifact_bytes" in report:
        lines += ["", f"Artifact size: {report['artifact_bytes'] / 1e6:.2f} MB."]
    if "layers" in report:
        total = sum(report["layers_by_kind_ms"].values())
        e2e = next((r["median_ms"] for r in report["results"] if r["backend"] == "compiled" and r["threads"] == 1), None)
        lines += ["", "## Compiled artifact, per kernel call (1 thread, each call timed alone)", "",
                  f"Sum of all {len(report['layers'])} kernel calls, each timed alone on random inputs: {total:.1f} ms"
                  + (f" (end-to-end median of the artifact: {e2e:.1f} ms)." if e2e else "."), "",
                  "| kind | total ms |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(report["layers_by_kind_ms"].items(), key=lambda kv: -kv[1])]
        agg: dict[str, list] = {}
        for row in report["layers"]:
            agg.setdefault(row["function"], [0.0, 0])
            agg[row["function"]][0] += row["ms"]
            agg[row["function"]][1] += 1
        lines += ["", "| function | calls | total ms |", "| --- | --- | --- |"]
        for name, (ms, n) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:25]:
            lines.append(f"| `{name[:80]}` | {n} | {ms:.2f} |")
    if "network_layers" in report:
        rows = report["network_layers"]
        lines += ["", "## Compiled artifact, per kernel call inside the network (1 thread, fastest of the runs)", "",
                  f"Sum of the {len(rows)} kernel calls as they ran in the network: "
                  f"{sum(r['ms'] for r in rows):.1f} ms (their inputs and outputs mostly not in cache).", "",
                  "| kind | total ms |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(report["network_layers_by_kind_ms"].items(), key=lambda kv: -kv[1])]
        lines += ["", "| call | function | ms |", "| --- | --- | --- |"]
        lines += [f"| {r['call']} | `{r['function'][:80]}` | {r['ms']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if "layers" in report else 1, figsize=(12, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['backend']}\n{r['threads']} thr" for r in report["results"]]
    values = [r["median_ms"] for r in report["results"]]
    errors = [[r["median_ms"] - r["min_ms"] for r in report["results"]], [r["max_ms"] - r["median_ms"] for r in report["results"]]]
    ax.bar(range(len(values)), values, yerr=errors, color="tab:blue", capsize=3)
    ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per reconstruction (ms, log)")
    ax.set_title(f"{report['size'][0]}x{report['size'][1]} reconstruction")
    if "layers" in report:
        ax = axes[0][1]
        kinds = sorted(report["layers_by_kind_ms"].items(), key=lambda kv: -kv[1])
        ax.bar([k for k, _ in kinds], [v for _, v in kinds], color="tab:orange")
        ax.set_ylabel("ms (1 thread)")
        ax.set_title("compiled artifact: time per kernel kind")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _finish(report, out_dir: Path) -> None:
    report["speedups_vs_onnxruntime"] = _speedups(report)
    with atomic_output(out_dir / "bench.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    with atomic_output(out_dir / "bench.md") as tmp:
        Path(tmp).write_text(_markdown(report))
    _plot(report, out_dir / "bench.png")
    click.echo(f"{'backend':<18}{'threads':>8}{'median ms':>12}{'min':>9}{'max':>9}{'peak MiB':>10}")
    for r in report["results"]:
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "n/a"
        click.echo(f"{r['backend']:<18}{r['threads']:>8}{r['median_ms']:>12.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}{peak:>10}")
    if "layers_by_kind_ms" in report:
        click.echo("per-kernel totals (1 thread): " + ", ".join(f"{k} {v:.1f} ms" for k, v in report["layers_by_kind_ms"].items()))
    if "artifact_bytes" in report:
        click.echo(f"artifact size {report['artifact_bytes'] / 1e6:.2f} MB")
    click.echo("speed-up vs ONNX Runtime: " + ", ".join(f"{k} {v}x" for k, v in report["speedups_vs_onnxruntime"].items()))
    click.echo(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")
