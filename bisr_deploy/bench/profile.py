"""Where the time goes: every kernel call of a loaded artifact, timed in isolation and inside the network.

Both views time the artifact's own kernels (its ``model.so``, as deployed) through the Relax VM's instrument
hook, so they need only the runtime (numpy and TVM's runtime), as on a board:

``isolated_calls(model, ...)``: during one run, every kernel call is repeated on its own arguments right after
the network made it (warm buffers, inputs in cache), median of ``repeat``, in the current thread pool. Rows
``{"call": k, "function": name, "kind": ..., "bisrconvs": n, "ms": ...}`` (n: how many BiSRConv nodes the call
computes: 2 for a fused pair, 0 for other kernels). Kinds (from the manifest's layer records): ``bisrconv``
(also the fused ones), ``conv2d`` and ``upsample2x`` (our scheduled kernels), ``fused`` (TVM-legalised and
fused standard ops).

``network_calls(model, ...)``: the same calls timed inside a run, where their inputs and outputs are mostly
not in cache, and the time outside them (VM dispatch and allocation, input and output conversion).

``lowered_calls(imported, target)``: the same call list from the ONNX model, lowered as the build does
(``bisr-deploy estimate`` uses it; needs the compiler).
"""

from __future__ import annotations

import resource
import time

import numpy as np

from ..errors import BisrError


def lowered_calls(imported, target):
    """(TIR-only IRModule, [(function name, [arg shapes+dtypes], [arg buffer names])]) after the build's fusion
    and scheduling, in execution order: the kernels the VM runs (reshapes become views, as in the build).
    Args are the inputs then the output; buffers are named by the Relax variable that holds them (a view
    by the one it views; weights by ``main``'s parameter). ``imported``: an ``onnx_import.ImportedModel``;
    ``target``: a ``CompileTarget``."""
    import tvm
    from tvm import relax

    from ..compile.pipeline import fuse_and_schedule

    mod = relax.transform.RewriteDataflowReshape()(fuse_and_schedule(imported.mod, target))
    calls = []
    call_tir, reshape = tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.reshape")
    views: dict[str, str] = {}

    def buffer(expr) -> str:
        return views.get(expr.name, expr.name) if isinstance(expr, relax.Var) else f"const{id(expr)}"

    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            expr = binding.value
            if isinstance(expr, relax.Call) and expr.op.same_as(reshape):
                views[binding.var.name] = buffer(expr.args[0])
            if not (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)):
                continue
            gv, args = expr.args[0], expr.args[1]
            shapes = [([int(d) for d in a.ty.shape], str(a.ty.dtype)) for a in args.fields]
            names = [buffer(a) for a in args.fields]
            out = expr.ty
            outs = [out] if isinstance(out, relax.TensorType) else list(out.fields)
            shapes += [([int(d) for d in o.shape], str(o.dtype)) for o in outs]
            names += [binding.var.name] if len(outs) == 1 else [f"{binding.var.name}.{i}" for i in range(len(outs))]
            calls.append((gv.name_hint, shapes, names))

    tir_mod = tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in mod.functions_items()
                            if isinstance(f, tvm.tirx.PrimFunc) and any(gv.name_hint == c[0] for c in calls)})
    return tir_mod, calls


def _kinds(model) -> tuple[dict[str, str], dict[str, int]]:
    """{kernel function: kind} and {kernel function: BiSRConv nodes it computes} from the manifest's layers."""
    kinds = {layer.function: layer.kind.split("_")[0] for layer in model.manifest.layers}
    members = {layer.function: len(layer.members) if layer.members else int(layer.kind == "bisrconv")
               for layer in model.manifest.layers}
    return kinds, members


def isolated_calls(model, measurement: np.ndarray, mask: np.ndarray | None = None, repeat: int = 5) -> list[dict]:
    """Every kernel call of a loaded artifact (``runtime.CompiledModel``) timed in isolation (module docstring)."""
    kinds, members = _kinds(model)
    rows: list[dict] = []

    def instrument(func, name, before_run, _ret, *args):
        if before_run or name.startswith("vm.builtin."):
            return 0
        times = []
        for _ in range(repeat):  # the call writes its output buffer again: the same values
            start = time.perf_counter()
            func(*args)
            times.append(time.perf_counter() - start)
        rows.append({"call": len(rows), "function": name, "kind": kinds.get(name, "fused"),
                     "bisrconvs": members.get(name, 0), "ms": float(np.median(times) * 1e3)})
        return 0

    model(measurement, mask)
    model.set_instrument(instrument)
    try:
        model(measurement, mask)
    finally:
        model.set_instrument(None)
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    """Total ms per kind."""
    out: dict[str, float] = {}
    for row in rows:
        out[row["kind"]] = out.get(row["kind"], 0.0) + row["ms"]
    return out


def _one_thread() -> None:
    import tvm

    threads = int(tvm.get_global_func("runtime.NumThreads")())
    if threads != 1:
        raise BisrError(f"in-network profiling times the calling thread's CPU: run it at 1 thread, not {threads}")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# A VM builtin that does nothing: its span in an instrumented run, and the gap after it, are the instrument
# hook's own cost, taken off every span and gap.
NOOP_BUILTIN = "vm.builtin.null_value"


def network_calls(model, measurement: np.ndarray, mask: np.ndarray | None = None,
                  repeat: int = 5) -> tuple[list[dict], dict]:
    """Every kernel call of a loaded artifact (``runtime.CompiledModel``) timed **inside** the network run on
    (measurement, mask), through the Relax VM's instrument hook (``model.set_instrument``), and the time
    outside the kernels, from the same run. Inputs and outputs are where the network leaves them (mostly not
    in cache), unlike ``isolated_calls``.

    Runs at 1 thread (else ``BisrError``), where every kernel runs on the calling thread, and reads that
    thread's CPU clock, so that other processes on a loaded machine count only through the caches. Every span
    (VM call) and gap (between calls) is taken less the hook's own cost (``NOOP_BUILTIN``). Returns
    ``(rows, outside)`` of the fastest of ``repeat`` runs after a warm-up run: rows
    ``{"call": k, "function": name, "kind": ..., "ms": ...}`` (VM builtins left out); ``outside`` in ms:
    ``total_ms`` (the run less the hook's cost), ``kernels_ms`` (sum of the rows), ``outside_ms`` = ``vm_ms`` (VM builtins such as
    allocation, and dispatch between calls) + ``python_ms`` (before the first VM call: input checks and
    conversion; after the last: output conversion); ``vm_builtin_calls`` per run and ``page_faults`` (the
    most minor page faults of a run)."""
    _one_thread()
    events: list = []

    def instrument(_func, name, before_run, _ret, *_args):
        events.append((time.thread_time() * 1e3, name, before_run))
        return 0

    model(measurement, mask)
    model.set_instrument(instrument)
    try:
        runs = []
        for _ in range(repeat):
            events.clear()
            faults, start = _minor_faults(), time.thread_time() * 1e3
            model(measurement, mask)
            runs.append((start, time.thread_time() * 1e3, _minor_faults() - faults, list(events)))
    finally:
        model.set_instrument(None)
    start, end, _, events = min(runs, key=lambda run: run[1] - run[0])
    spans, gaps = [], []  # (name of the VM call, ms); (name of the call before the gap, ms)
    for (t0, name, opens), (t1, next_name, next_opens) in zip(events, events[1:]):
        if opens and not next_opens and name == next_name:
            spans.append((name, t1 - t0))
        elif not opens and next_opens:
            gaps.append((name, t1 - t0))
    hook_span = float(np.median([ms for name, ms in spans if name == NOOP_BUILTIN] or [0.0]))
    hook_gap = float(np.median([ms for name, ms in gaps if name == NOOP_BUILTIN] or [0.0]))
    kinds, _ = _kinds(model)
    rows = [{"call": k, "function": name, "kind": kinds.get(name, "fused"), "ms": ms - hook_span}
            for k, (name, ms) in enumerate(s for s in spans if not s[0].startswith("vm.builtin."))]
    builtins = [ms - hook_span for name, ms in spans if name.startswith("vm.builtin.")]
    vm_ms = sum(builtins) + sum(ms - hook_gap for _, ms in gaps)
    python_ms = (events[0][0] - start) + (end - events[-1][0])
    kernels_ms = sum(row["ms"] for row in rows)
    outside = {"total_ms": kernels_ms + vm_ms + python_ms, "kernels_ms": kernels_ms, "outside_ms": vm_ms + python_ms,
               "vm_ms": vm_ms, "python_ms": python_ms, "vm_builtin_calls": len(builtins),
               "page_faults": max(run[2] for run in runs)}
    return rows, outside
