"""Where the time goes: every kernel call of a compiled network, timed in isolation.

``profile_calls(imported, target)`` runs the same Relax lowering as the build (legalise, fuse), lists the
``call_tir`` calls of ``main`` in execution order with their argument shapes, compiles those TIR functions
for ``target`` and times each call on random inputs (median of ``repeat`` runs, in the current thread pool).
The result rows are ``{"call": k, "function": name, "kind": ..., "ms": ...}``; their sum approximates the
network's latency minus the VM's own overhead. Kinds: ``bisrconv``, ``conv2d`` and ``upsample2x`` (our
scheduled kernels), ``fused`` (TVM-legalised and fused standard ops).
"""

from __future__ import annotations

import time

import numpy as np

from .onnx_import import KERNEL_ATTR, ImportedModel
from .pipeline import fuse_and_schedule
from .targets import CompileTarget


def lowered_calls(imported: ImportedModel, target: CompileTarget):
    """(TIR-only IRModule, [(function name, [arg shapes+dtypes])]) after the build's fusion and scheduling."""
    import tvm
    from tvm import relax

    mod = fuse_and_schedule(imported.mod, target)
    calls = []
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            gv, args = expr.args[0], expr.args[1]
            shapes = [([int(d) for d in a.ty.shape], str(a.ty.dtype)) for a in args.fields]
            out = expr.ty
            outs = [out] if isinstance(out, relax.TensorType) else list(out.fields)
            shapes += [([int(d) for d in o.shape], str(o.dtype)) for o in outs]
            calls.append((gv.name_hint, shapes))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    tir_mod = tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in mod.functions_items()
                            if isinstance(f, tvm.tirx.PrimFunc)})
    return tir_mod, calls


def profile_calls(imported: ImportedModel, target: CompileTarget, repeat: int = 5) -> list[dict]:
    """Time every kernel call of ``imported`` (see module docstring)."""
    import tvm

    tir_mod, calls = lowered_calls(imported, target)
    lib = tvm.compile(tir_mod, target=target.tvm_target)
    rng = np.random.default_rng(0)
    rows = []
    for k, (name, shapes) in enumerate(calls):
        args = []
        for shape, dtype in shapes:
            if dtype.startswith("float"):
                args.append(tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype)))
            else:
                args.append(tvm.runtime.tensor(rng.integers(0, 8, size=shape).astype(dtype)))
        func = lib[name]
        func(*args)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            func(*args)
            times.append(time.perf_counter() - start)
        attrs = tir_mod[name].attrs
        kind = name.split("_", 1)[0] if attrs and KERNEL_ATTR in attrs else "fused"
        rows.append({"call": k, "function": name, "kind": kind, "ms": float(np.median(times) * 1e3)})
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    """Total ms per kind."""
    out: dict[str, float] = {}
    for row in rows:
        out[row["kind"]] = out.get(row["kind"], 0.0) + row["ms"]
    return out
