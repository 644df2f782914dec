"""Shifted crops (the CASSI shift-back of the snapshot frontend) as one scheduled TIR kernel.

The exported graph shifts the snapshot back into its bands as a Concat of K Slices of one tensor: slice k
takes columns [start + step·k, start + step·k + W) of the last axis, and the slices are stacked along an
axis where the source has extent 1 (``frontend.SnapshotFrontend.crops``). TVM legalises such a Concat into
one loop nest whose every element walks a chain of K selects (one per input); this kernel copies each crop
with contiguous vector loads and stores instead: the same values, nothing computed.

``CropsSpec(source shape, axis, count K, start, step, width W)``; ``crops_primfunc(spec, lanes)`` -> PrimFunc
(X = the source, Y = the source's shape with ``axis`` -> K and the last axis -> W), rows in parallel, the
row in vectors of ``lanes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import vector_lanes


@dataclass(frozen=True)
class CropsSpec:
    """``Y = Concat([X[..., start + step·k : start + step·k + width] for k < count], axis)``, X's ``axis`` of extent 1."""

    shape: tuple[int, ...]  # X
    axis: int  # the stacking axis (not the last)
    count: int
    start: int
    step: int
    width: int

    @property
    def out_shape(self) -> tuple[int, ...]:
        out = list(self.shape)
        out[self.axis], out[-1] = self.count, self.width
        return tuple(out)

    @property
    def name(self) -> str:
        return "crops_" + "x".join(str(d) for d in self.out_shape) + f"_step{self.step}"


def crops_primfunc(spec: CropsSpec, lanes: int = 16):
    from tvm import s_tir, te

    x = te.placeholder(spec.shape, "float32", name="X")

    def crop(*index):
        k, col = index[spec.axis], index[-1]
        source = list(index)
        source[spec.axis] = 0
        source[-1] = col + spec.start + spec.step * k
        return x[tuple(source)]

    y = te.compute(spec.out_shape, crop, name="crops")
    sch = s_tir.Schedule(te.create_prim_func([x, y]).with_attr("global_symbol", "crops"))
    *outer, last = sch.get_loops(sch.get_sblock("crops"))
    width = vector_lanes(spec.width, lanes)
    if width > 1:
        sch.vectorize(sch.split(last, [None, width])[1])
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return sch.mod["main"]
