"""The Relax build pipeline for CPU targets: TVM's default CPU pipeline plus a schedule for the fused ops.

TVM 0.27's default Relax CPU pipeline legalises and fuses the standard operators (LayerNorm, transposes,
concatenations, PReLU, resize, pooling, element-wise arithmetic) into TIR loop nests that it never
schedules: one thread, no explicit vectors. ``schedule_fused_ops`` gives every such function (our own
kernels, marked ``bisr.kernel``, are left alone) a plain CPU schedule: element-wise producers are inlined into
their consumers, the innermost loop of each remaining block is split into vectors of ``lanes`` (where it
divides evenly) and the loops outside it are fused and run in parallel; reduction blocks (LayerNorm
statistics, pooling) keep the innermost spatial loop innermost and vectorised, with the reduction around it.
"""

from __future__ import annotations

from .schedule import vector_lanes
from .lowering import KERNEL_ATTR

# Blocks that read each input element several times (bilinear resize): their producers are not inlined.
GATHERING_BLOCKS = ("resize",)


def _schedule_reduction(sch, block, loops, kinds, lanes: int) -> None:
    """Spatial loops outside, reductions inside, except the innermost spatial loop, which goes innermost and
    is vectorised (a row of independent accumulators: LayerNorm over channels, pooling windows)."""
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == 0]
    reduction = [loop for loop, kind in zip(loops, kinds) if kind != 0]
    if not spatial or not reduction:
        return
    width = vector_lanes(int(sch.get(spatial[-1]).extent), lanes)
    if width == 1:
        if len(spatial) > 1:
            sch.reorder(*spatial, *reduction)
            sch.parallel(sch.fuse(*spatial[:-1]))
        return
    outer, inner = sch.split(spatial[-1], [None, width])
    sch.reorder(*spatial[:-1], outer, *reduction, inner)
    sch.vectorize(inner)
    sch.parallel(sch.fuse(*spatial[:-1], outer))
    init = sch.decompose_reduction(block, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _schedule_block(sch, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if any(k != 0 for k in kinds):
        if len(kinds) == len(loops):  # legalised blocks bind one loop per block variable, in order
            _schedule_reduction(sch, block, loops, kinds, lanes)
        return
    last = loops[-1]
    width = vector_lanes(int(sch.get(last).extent), lanes)
    if width > 1:
        outer, inner = sch.split(last, [None, width])
        sch.vectorize(inner)
        loops = loops[:-1] + [outer]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _inline_producers(sch, blocks) -> list:
    """Inline every block whose result another block of the function consumes (element-wise chains of
    FuseTIR keep full-size intermediate buffers otherwise); returns the blocks left."""
    left = []
    for block in blocks:
        if any(sch.get(c).name_hint.startswith(GATHERING_BLOCKS) for c in sch.get_consumers(block)):
            left.append(block)  # a resize reads each input element several times: keep it materialised
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - outputs and reductions cannot be inlined
            left.append(block)
    return left


def schedule_fused_ops(mod, lanes: int):
    """Schedule every unscheduled PrimFunc of ``mod`` (see module docstring); returns the new module."""
    import tvm
    from tvm import s_tir

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and KERNEL_ATTR in func.attrs):
            continue
        sch = s_tir.Schedule(func)
        try:
            blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(func) else []
        except Exception:  # noqa: BLE001 - a function without the usual root block stays as legalised
            continue
        for block in _inline_producers(sch, blocks):
            try:
                _schedule_block(sch, block, lanes)
            except Exception:  # noqa: BLE001 - keep the blocks we could schedule, leave the rest serial
                continue
        out[gv] = sch.mod["main"]
    return out


def _has_root(func) -> bool:
    return hasattr(func.body, "block") and func.body.block.name_hint == "root"


def fuse_and_schedule(mod, target):
    """Legalise and fuse the Relax operators (TVM's CPU passes), then ``schedule_fused_ops``."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tvm_target = tvm.target.Target(target.tvm_target)
    with tvm_target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tvm_target) + cpu.legalize_passes(tvm_target))(mod)
    return schedule_fused_ops(mod, target.lanes)


def cpu_pipeline(target):
    """A Relax pass for ``tvm.compile(relax_pipeline=...)``: ``fuse_and_schedule``, then TVM's default CPU
    lowering and finalisation passes. ``target``: a ``CompileTarget``."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="BisrCpuPipeline")
    def _pipeline(mod, _ctx):
        tvm_target = tvm.target.Target(target.tvm_target)
        mod = fuse_and_schedule(mod, target)
        with tvm_target:
            return tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))(mod)

    return _pipeline
