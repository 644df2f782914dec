"""Estimated time of one reconstruction of an artifact on a named core, kernel call by kernel call.

``prepare_artifact(directory)`` re-imports the artifact's ONNX model (``model.onnx``, checked against the
manifest's hash) for its recorded target, lowers it exactly as the build did (``lowered_calls``) and compiles
the kernels' machine loops (``loops.compile_kernels``, the slow part); ``estimate(prepared, core, ...)`` then
gives, for every kernel call of ``main`` in execution order:

- ``binary_macs`` / ``float_macs``: the multiply-accumulates of the BiSR-Conv layers / float convolutions the
  call computes (complexity.py's convention: output elements x input channels per group x KH x KW);
- ``compute_cycles``: ``CompiledKernels.cycles`` (llvm-mca on the machine loops x TIR trip counts); the part in
  parallel loops is divided by ``threads``;
- ``dram_bytes``: ``dram_traffic``, a buffer-granular LRU of the core's cache (L2 per thread + L3): an input
  not resident is read from DRAM, a written buffer pushed out of the cache is written back;
- ``est_ms = max(compute, DRAM time)`` (a roofline per call) and ``bound``: which of the two is larger;
- ``roofline_ms``: the call's floor on this core, ``max(compute_floor_ms, dram_ms)``, with ``compute_floor_ms``
  its binary MACs at ``Core.binary_macs_per_cycle`` plus its float MACs at ``Core.fmas_per_cycle``.

``measure_artifact`` adds the in-network time of every call (``bench.profile.network_calls``), the total, and
per call ``roofline_fraction = roofline_ms / measured_ms``: how close the kernel runs to its floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import Manifest
from ..errors import BisrError
from .cores import Core


def _target(manifest: Manifest):
    """The ``CompileTarget`` the artifact was built for (its schedule as ``resolve_target`` chooses it, with
    the cache sizes it recorded; artifacts of earlier versions: the generic core's)."""
    from dataclasses import replace

    from ..compile.schedule import schedule_for
    from ..compile.targets import CompileTarget

    target = manifest.target
    features = tuple(target.required_cpu_features)
    caches = {name: value for name, value in (("l1d_bytes", target.l1d_bytes), ("l2_bytes", target.l2_bytes))
              if value is not None}
    return CompileTarget(target.arch, target.cpu, target.tvm_target, replace(schedule_for(features), **caches),
                         features)


def layer_macs(imported) -> dict[str, tuple[int, int]]:
    """{kernel function: (binary MACs, float MACs) of one call} for the bitserial and float conv kernels."""
    macs = {}
    for layer in imported.layers:
        spec = layer.spec
        if layer.kind in ("bisrconv", "bisrconv_fused"):
            macs[layer.func_name] = (spec.binary_macs * max(1, len(layer.members)), 0)
        elif layer.kind == "bisrconv_feedforward":
            macs[layer.func_name] = (spec.binary_macs, 0)
        elif layer.kind == "conv2d":
            macs[layer.func_name] = (0, spec.macs)
    return macs


def _nbytes(shape, dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def dram_traffic(calls, cache_bytes: int) -> list[int]:
    """Bytes each call moves between the cache and DRAM (see module docstring): whole buffers, LRU. The last
    argument of a call is its output (every call of BiSRNet's ``main`` has one)."""
    resident: dict[str, tuple[int, bool]] = {}  # name -> (bytes, dirty), least recently used first
    traffic = []
    for _, shapes, names in calls:
        moved = 0
        for index, ((shape, dtype), name) in enumerate(zip(shapes, names)):
            size, is_output = _nbytes(shape, dtype), index == len(names) - 1
            if name in resident:
                dirty = resident.pop(name)[1]
            else:
                dirty = False
                moved += 0 if is_output else size
            resident[name] = (size, dirty or is_output)
            while sum(b for b, _ in resident.values()) > cache_bytes:
                victim_bytes, victim_dirty = resident.pop(next(iter(resident)))
                moved += victim_bytes if victim_dirty else 0
        traffic.append(moved)
    return traffic


@dataclass
class PreparedArtifact:
    """What every estimate of one artifact (and build) shares: the kernel calls and their compiled loops."""

    directory: Path
    manifest: Manifest
    build: str  # "bitserial" or "float32 (tvm-fp32)"
    calls: list  # lowered_calls: (function, [(shape, dtype)], [buffer names])
    macs: dict[str, tuple[int, int]]
    kernels: object  # loops.CompiledKernels


def prepare_artifact(directory, float_build: bool = False) -> PreparedArtifact:
    """Re-import, lower and assemble the artifact's kernels (the slow part: a TVM build and llc).
    ``float_build``: the same graph with BiSR-Conv in float32 ops (the bench's ``tvm-fp32`` backend)."""
    import onnx

    from ..artifact import read_manifest, read_source_model
    from ..bench.profile import lowered_calls
    from ..compile.onnx_import import import_onnx
    from .loops import compile_kernels

    directory = Path(directory)
    manifest = read_manifest(directory)
    target = _target(manifest)
    model = onnx.load_model_from_string(read_source_model(directory, manifest))
    try:
        imported = import_onnx(model, target.schedule, bitserial=not float_build)
    except BisrError:
        raise
    except Exception as exc:  # noqa: BLE001 - an ONNX model the importer cannot read: one line
        raise BisrError(f"{directory}: cannot import model.onnx ({exc.__class__.__name__}: {exc})") from exc
    tir_mod, calls = lowered_calls(imported, target)
    return PreparedArtifact(directory, manifest, "float32 (tvm-fp32)" if float_build else "bitserial", calls,
                            layer_macs(imported), compile_kernels(tir_mod, target.tvm_target))


def artifact_arch(manifest: Manifest) -> str:
    """"aarch64" or "x86_64": the machine an artifact's code is for (``Core.arch``)."""
    return manifest.target.triple.split("-")[0]


def check_settings(manifest: Manifest, core: Core, clock_ghz: float | None, dram_gbs: float | None,
                   threads: int) -> tuple[float, float]:
    """(clock, DRAM bandwidth) to assume: the overrides, else the core's. ``BisrError`` for a core of another
    architecture than the artifact's or a non-positive setting."""
    arch = artifact_arch(manifest)
    if arch != core.arch:
        raise BisrError(f"this is an {arch} artifact; core {core.name} is {core.arch}")
    if threads < 1:
        raise BisrError("--threads must be at least 1")
    clock_ghz, dram_gbs = clock_ghz or core.clock_ghz, dram_gbs or core.dram_gbs
    if clock_ghz <= 0 or dram_gbs <= 0:
        raise BisrError("--clock-ghz and --dram-gbs must be positive")
    return clock_ghz, dram_gbs


def estimate(prepared: PreparedArtifact, core: Core, clock_ghz: float | None = None, dram_gbs: float | None = None,
             threads: int = 1) -> dict:
    """The estimate report (module docstring) of a prepared artifact on ``core``."""
    clock_ghz, dram_gbs = check_settings(prepared.manifest, core, clock_ghz, dram_gbs, threads)
    cycles = prepared.kernels.cycles(core.mcpu)
    traffic = dram_traffic(prepared.calls, core.cache_bytes(threads))
    kernels = []
    for k, ((name, _, _), dram) in enumerate(zip(prepared.calls, traffic)):
        record = cycles[name]
        compute = record["cycles"] + record["parallel_cycles"] / threads
        compute_ms = compute / (clock_ghz * 1e6)
        dram_ms = dram / (dram_gbs * 1e6)
        binary, flt = prepared.macs.get(name, (0, 0))
        floor_ms = (binary / core.binary_macs_per_cycle + flt / core.fmas_per_cycle) / threads / (clock_ghz * 1e6)
        kernels.append({
            "call": k, "function": name, "binary_macs": binary, "float_macs": flt, "dram_bytes": dram,
            "compute_cycles": round(compute), "compute_ms": compute_ms, "dram_ms": dram_ms,
            "est_ms": max(compute_ms, dram_ms), "bound": "compute" if compute_ms >= dram_ms else "dram",
            "binary_macs_per_cycle": binary / compute if compute else 0.0,
            "compute_floor_ms": floor_ms, "roofline_ms": max(floor_ms, dram_ms),
            "loops": record["loops"],
        })
    return {"artifact": str(prepared.directory), "core": core.name, "llvm_mcpu": core.mcpu, "clock_ghz": clock_ghz,
            "dram_gbs": dram_gbs, "cache_bytes": core.cache_bytes(threads), "threads": threads,
            "build": prepared.build, "size": prepared.manifest.output.shape[2:],
            "total_ms": sum(k["est_ms"] for k in kernels), "binary_macs": sum(k["binary_macs"] for k in kernels),
            "float_macs": sum(k["float_macs"] for k in kernels), "kernels": kernels}


def measure_artifact(model, report: dict, rounds: int = 10) -> None:
    """Run the loaded artifact (``runtime.load``) at ``report["threads"]`` threads and put beside every call its
    in-network time ``measured_ms`` (``bench.profile.network_calls``: fastest of 3 runs; of ``rounds``
    such measurements the fastest for each call, so that a shared machine's bursts of load drop out) and
    ``measured_total_ms``, their sum."""
    from ..bench.profile import network_calls
    from ..bench.runners import bench_inputs
    from ..runtime import set_num_threads

    y, mask = bench_inputs([record.shape for record in model.manifest.inputs])
    set_num_threads(report["threads"])
    fastest = None
    for _ in range(rounds):
        rows, _ = network_calls(model, y, mask, repeat=3)
        if [row["function"] for row in rows] != [k["function"] for k in report["kernels"]]:
            raise BisrError("the artifact's VM runs other kernels than its model.onnx lowers to: compile it again")
        times = [row["ms"] for row in rows]
        fastest = times if fastest is None else [min(a, b) for a, b in zip(fastest, times)]
    for kernel, ms in zip(report["kernels"], fastest):
        kernel["measured_ms"] = ms
        kernel["error"] = kernel["est_ms"] / ms - 1 if ms else None
        kernel["roofline_fraction"] = kernel["roofline_ms"] / ms if ms else None
    report["measured_total_ms"] = sum(fastest)
    report["total_error"] = report["total_ms"] / report["measured_total_ms"] - 1


def write_json(report: dict, path) -> None:
    """``report`` as JSON, atomically."""
    from ..fileio import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
