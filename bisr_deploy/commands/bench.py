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

from .. import progress, provenance
from ..artifact import read_source_model
from ..bench.report import REPORT_FILES
from ..compile.targets import TARGETS
from ..errors import BisrError
from ..fileio import check_output_dir
from ..hostcpu import cpu_model_name
from . import checkpoint_option

BACKENDS = ("compiled", "onnxruntime-fp32", "tvm-fp32", "pytorch-eager")


@click.command("bench")
@checkpoint_option("The model to benchmark (with --artifact: only for pytorch-eager, and it must be the artifact's)")
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="A compiled artifact for this machine (default: compile one now); every backend then runs its "
                   "model.onnx, the exact graph it was compiled from.")
@click.option("--height", type=click.IntRange(min=8), default=None,
              help="Scene height in pixels (default: the artifact's, else 256).")
@click.option("--width", type=click.IntRange(min=8), default=None,
              help="Scene width in pixels (default: the artifact's, else 256).")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None, help="Input mode of an authors' .pth.")
@click.option("--cpu", type=click.Choice(list(TARGETS["x86"].cpus)), default="native", show_default=True,
              help="x86 instruction set when bench compiles the artifact itself (as `compile --cpu`); on an "
                   "aarch64 machine bench compiles for `--target arm`.")
@click.option("--repeat", type=int, default=5, show_default=True, help="Timed calls per backend and thread count.")
@click.option("--skip", multiple=True, type=click.Choice(BACKENDS), help="Leave a backend out (repeatable).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for bench.json, bench.md and bench.png (created if missing).")
def bench_command(checkpoint_path, artifact, height, width, mode, cpu, repeat, skip, output_dir):
    """Latency, memory and per-layer times of one reconstruction on every backend.

    Runs on the machine it benchmarks (x86, or an aarch64 board: the `arm` target). With --artifact and only
    the compiled backend (--skip the others) it needs the runtime alone: no compiler, torch, onnx or ONNX
    Runtime."""
    from ..runtime import default_threads

    default_threads()  # before anything starts TVM's thread pool
    from ..bench.profile import isolated_calls, network_calls, summarize
    from ..bench.report import write_reports
    from ..bench.runners import all_cores, bench_inputs, measure_interleaved
    from ..runtime import load, set_num_threads

    out_dir = Path(output_dir)
    check_output_dir(out_dir, REPORT_FILES, inputs=(checkpoint_path,))
    if repeat < 1:
        raise BisrError("--repeat must be at least 1")
    backends = [b for b in BACKENDS if b not in skip]
    cores = all_cores()
    thread_counts = [1] + ([cores] if cores > 1 else [])
    compile_s = None
    with tempfile.TemporaryDirectory(prefix="bisr-bench-") as tmp:
        if artifact is None:
            artifact, onnx_bytes, compile_s = _compile_here(checkpoint_path, height or 256, width or 256, mode, cpu,
                                                            Path(tmp) / "artifact")
        compiled = load(artifact)
        manifest = compiled.manifest
        _, _, art_height, art_width = manifest.output.shape
        for name, given, recorded in (("height", height, art_height), ("width", width, art_width)):
            if given is not None and given != recorded:
                raise BisrError(f"--{name} {given} does not match the artifact's {name} {recorded}")
        if compile_s is None:
            onnx_bytes = read_source_model(artifact, manifest)
        report = {"machine": {"cpu": cpu_model_name(), "cores": cores, "platform": platform.platform()},
                  "size": [art_height, art_width], "mode": manifest.mode, "target": manifest.target.tvm_target,
                  "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "artifact_bytes": manifest.total_bytes,
                  "results": []}
        if compile_s is not None:
            report["compile_s"] = compile_s
        y, mask = bench_inputs([record.shape for record in manifest.inputs])
        fns = _other_backends(backends, onnx_bytes, manifest, checkpoint_path, mode, cpu, y, mask)
        for threads in thread_counts:
            set_num_threads(threads)
            runs = {b: (lambda: compiled(y, mask)) if b == "compiled" else fns[b](threads) for b in backends}
            report["results"] += [m.as_dict() for m in measure_interleaved(runs, threads, repeat)]
        set_num_threads(1)
        if "compiled" in backends:
            progress.stage("timing every kernel call of the artifact")
            rows = isolated_calls(compiled, y, mask, repeat=max(3, repeat))
            report["layers"] = rows
            report["layers_by_kind_ms"] = summarize(rows)
            in_network, report["outside_kernels"] = network_calls(compiled, y, mask, repeat=max(3, repeat))
            report["network_layers"] = in_network
            report["network_layers_by_kind_ms"] = summarize(in_network)

    for line in write_reports(report, out_dir):
        click.echo(line)


def _compile_here(checkpoint_path, height: int, width: int, mode, cpu: str, output: Path):
    """Export the checkpoint and compile it for this machine into ``output``: (output, ONNX bytes, seconds)."""
    from ..compile.build import build_artifact
    from ..compile.targets import host_target
    from ..export import export_onnx
    from ..shipped import resolve_checkpoint

    target = host_target(cpu)
    onnx_model = export_onnx(checkpoint_path, height, width, mode)
    start = time.perf_counter()
    build_artifact(onnx_model, output, target, provenance.checkpoint_origin(resolve_checkpoint(checkpoint_path)))
    return output, onnx_model.SerializeToString(), round(time.perf_counter() - start, 1)


def _other_backends(backends, onnx_bytes: bytes, manifest, checkpoint_path, mode, cpu: str, y, mask) -> dict:
    """{backend: threads -> callable} for the backends other than ``compiled``, all on the artifact's ONNX graph
    (PyTorch: on the checkpoint, which must be the one the artifact records)."""
    from ..bench import runners

    fns = {}
    feeds = {"measurement": y[None]} | ({"mask": mask[None]} if mask is not None else {})
    if "onnxruntime-fp32" in backends:
        fns["onnxruntime-fp32"] = lambda threads: runners.ort_runner(onnx_bytes, threads, feeds)
    if "tvm-fp32" in backends:
        import onnx

        from ..compile.build import compile_module
        from ..compile.targets import host_target

        imported, executable = compile_module(onnx.load_model_from_string(onnx_bytes), host_target(cpu), bitserial=False)
        run = runners.tvm_vm_runner(executable, list(feeds.values()), [a for _, a in imported.params])
        fns["tvm-fp32"] = lambda _threads: run
    if "pytorch-eager" in backends:
        from ..checkpoint import load_checkpoint
        from ..shipped import resolve_checkpoint

        ckpt = load_checkpoint(checkpoint_path, mode)
        provenance.check_same_weights(manifest.source, resolve_checkpoint(checkpoint_path), ckpt.provenance)
        torch_model = ckpt.build_model()
        fns["pytorch-eager"] = lambda threads: runners.torch_runner(torch_model, y, mask, threads)
    return fns
