"""``bisr-deploy bench``: compiled artifact vs ONNX Runtime fp32 vs TVM fp32 vs PyTorch, one process.

Writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``--output-dir`` and prints the table.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
from pathlib import Path

import click

from .. import progress
from ..bench.report import REPORT_FILES
from ..compile.targets import TARGETS
from ..errors import BisrError
from ..fileio import check_output_dir
from ..hostcpu import cpu_model_name
from . import checkpoint_option

BACKENDS = ("compiled", "onnxruntime-fp32", "tvm-fp32", "pytorch-eager")


@click.command("bench")
@checkpoint_option("The model to benchmark")
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="A compiled artifact of the same checkpoint and size (default: compile one now).")
@click.option("--height", type=click.IntRange(min=8), default=256, show_default=True,
              help="Scene height in pixels (a given --artifact must have been compiled at this size).")
@click.option("--width", type=click.IntRange(min=8), default=256, show_default=True,
              help="Scene width in pixels (a given --artifact must have been compiled at this size).")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None, help="Input mode of an authors' .pth.")
@click.option("--cpu", type=click.Choice(list(TARGETS["x86"].cpus)), default="native", show_default=True,
              help="x86 instruction set when bench compiles the artifact itself (as `compile --cpu`).")
@click.option("--repeat", type=int, default=5, show_default=True, help="Timed calls per backend and thread count.")
@click.option("--skip", multiple=True, type=click.Choice(BACKENDS), help="Leave a backend out (repeatable).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for bench.json, bench.md and bench.png (created if missing).")
def bench_command(checkpoint_path, artifact, height, width, mode, cpu, repeat, skip, output_dir):
    """Latency, memory and per-layer times of one reconstruction on every backend."""
    from ..runtime import default_threads

    default_threads()  # before anything starts TVM's thread pool
    from ..checkpoint import load_checkpoint
    from ..bench.profile import network_calls, profile_calls, summarize
    from ..bench.report import write_reports
    from ..bench.runners import all_cores, bench_inputs, measure_interleaved, ort_runner, torch_runner, tvm_vm_runner
    from ..compile.build import build_artifact, compile_module
    from ..compile.onnx_import import import_onnx
    from ..compile.targets import resolve_target
    from ..export import export_onnx
    from ..runtime import load, set_num_threads

    out_dir = Path(output_dir)
    check_output_dir(out_dir, REPORT_FILES, inputs=(checkpoint_path,))
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
            if compiled.manifest.source.get("onnx_sha256") != report["onnx_sha256"]:
                raise BisrError(f"{artifact} was not compiled from this checkpoint at {height} x {width}")
            report["artifact_bytes"] = compiled.manifest.total_bytes
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
            progress.stage("timing every kernel call of the artifact")
            rows = profile_calls(import_onnx(onnx_model, target.schedule), target, repeat=max(3, repeat))
            report["layers"] = rows
            report["layers_by_kind_ms"] = summarize(rows)
            in_network, report["outside_kernels"] = network_calls(compiled, y, mask, repeat=max(3, repeat))
            report["network_layers"] = in_network
            report["network_layers_by_kind_ms"] = summarize(in_network)

    for line in write_reports(report, out_dir):
        click.echo(line)
