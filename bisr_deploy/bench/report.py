"""The reports of ``bisr-deploy bench``: speed-ups against ONNX Runtime, bench.json, bench.md (tables) and
bench.png (latency per backend, time per kernel kind), and the console summary."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_output, make_output_dir

REPORT_FILES = ("bench.json", "bench.md", "bench.png")  # written into the output directory
RSS_NOTE = ("RSS rise: growth of the process's peak resident memory during a backend's first (warm-up) call at that "
            "thread count; memory an earlier row already allocated is not counted again, so later rows read near 0.")


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
             "| backend | threads | median ms | min ms | max ms | IQR ms | RSS rise MiB | speed-up vs ORT |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    speed = report["speedups_vs_onnxruntime"]
    for r in report["results"]:
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "n/a"
        sp = speed.get(f"{r['backend']}@{r['threads']}", 1.0 if r["backend"] == "onnxruntime-fp32" else None)
        lines.append(f"| {r['backend']} | {r['threads']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['iqr_ms']:.1f} | {peak} | {'' if sp is None else f'{sp:.2f}x'} |")
    lines += ["", RSS_NOTE]
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
        rows, outside = report["network_layers"], report["outside_kernels"]
        lines += ["", "## Compiled artifact, per kernel call inside the network (1 thread, fastest of the runs)", "",
                  f"CPU time of the calling thread in one instrumented run: {outside['total_ms']:.1f} ms, of which "
                  f"the {len(rows)} kernel calls {outside['kernels_ms']:.1f} ms (their inputs and outputs mostly not "
                  f"in cache); outside them {outside['outside_ms']:.2f} ms (the hook's own cost taken off; "
                  f"{outside['vm_builtin_calls']} VM builtin calls, {outside['page_faults']} page faults per run).", "",
                  "| kind | total ms |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(report["network_layers_by_kind_ms"].items(), key=lambda kv: -kv[1])]
        lines += [f"| outside kernels: VM (allocation, builtins, dispatch) | {outside['vm_ms']:.2f} |",
                  f"| outside kernels: input checks and conversion, output | {outside['python_ms']:.2f} |"]
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


def write_reports(report: dict, out_dir: Path) -> list[str]:
    """Add the speed-ups to ``report``, write bench.json, bench.md and bench.png into ``out_dir`` (atomically);
    return the console summary lines."""
    report["speedups_vs_onnxruntime"] = _speedups(report)
    make_output_dir(out_dir)
    json_path, md_path, png_path = (out_dir / name for name in REPORT_FILES)
    with atomic_output(json_path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    with atomic_output(md_path) as tmp:
        Path(tmp).write_text(_markdown(report))
    _plot(report, png_path)
    lines = [f"{'backend':<18}{'threads':>8}{'median ms':>12}{'min ms':>9}{'max ms':>9}{'RSS rise MiB':>14}"]
    for r in report["results"]:
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "n/a"
        lines.append(f"{r['backend']:<18}{r['threads']:>8}{r['median_ms']:>12.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}{peak:>14}")
    lines.append(RSS_NOTE)
    if "layers_by_kind_ms" in report:
        lines.append("per-kernel totals (1 thread): " + ", ".join(f"{k} {v:.1f} ms" for k, v in report["layers_by_kind_ms"].items()))
    if "outside_kernels" in report:
        outside = report["outside_kernels"]
        lines.append(f"in the network (1 thread, CPU ms): kernels {outside['kernels_ms']:.1f}, outside kernels "
                     f"{outside['outside_ms']:.2f} (VM {outside['vm_ms']:.2f}, input/output {outside['python_ms']:.2f}), "
                     f"{outside['page_faults']} page faults per run")
    if "artifact_bytes" in report:
        lines.append(f"artifact size {report['artifact_bytes'] / 1e6:.2f} MB")
    if report["speedups_vs_onnxruntime"]:
        lines.append("speed-up vs ONNX Runtime: " + ", ".join(f"{k} {v}x" for k, v in report["speedups_vs_onnxruntime"].items()))
    lines.append(f"wrote {json_path}, {md_path}, {png_path}")
    return lines
