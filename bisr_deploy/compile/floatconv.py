"""Scheduled float32 NCHW convolution (stride 1, dilation 1, any groups) for the full-precision layers.

TVM's default Relax CPU pipeline legalises ``nn.conv2d`` to an unscheduled loop nest; BiSRNet's float
convolutions (``fution`` 1x1 56->28, ``conv_in``/``conv_out`` 3x3 28->28) would dominate the run time.
This kernel keeps an ``out_block`` x ``lanes`` tile of accumulators in registers (``out_block_for``): the image width is the
vector axis (one input vector load feeds ``out_block`` FMAs with broadcast weights), rows run in parallel.

``conv2d_primfunc(spec, lanes)`` -> PrimFunc with params (X [N,Ci,H,W], W [Co,Ci/groups,KH,KW], Y [N,Co,Ho,Wo]).
The TVM fp32 baseline also runs BiSRNet's binary convolutions (±1 weights, grouped 3x3) through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import vector_lanes


@dataclass(frozen=True)
class Conv2dSpec:
    """A float32 convolution: X [batch, in_channels, height, width], kernel, pads (top, left, bottom, right)."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]
    groups: int = 1

    @property
    def out_height(self) -> int:
        return self.height + self.pads[0] + self.pads[2] - self.kernel[0] + 1

    @property
    def out_width(self) -> int:
        return self.width + self.pads[1] + self.pads[3] - self.kernel[1] + 1



def conv2d_compute(spec: Conv2dSpec):
    """TE tensors: (X, W) -> Y, zero padding."""
    from tvm import te, tirx

    n_, ci, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    kh, kw = spec.kernel
    top, left, bottom, right = spec.pads
    x = te.placeholder((n_, ci, h, w), "float32", name="X")
    cig, cog = ci // spec.groups, spec.out_channels // spec.groups
    weight = te.placeholder((spec.out_channels, cig, kh, kw), "float32", name="W")
    if any(spec.pads):
        def pad(n, c, y, xx):
            inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w + left)
            return tirx.if_then_else(inside, x[n, c, y - top, xx - left], tirx.const(0.0, "float32"))

        source = te.compute((n_, ci, h + top + bottom, w + left + right), pad, name="pad")
    else:
        source = x
    ri = te.reduce_axis((0, cig), name="ri")
    ru = te.reduce_axis((0, kh), name="ru")
    rv = te.reduce_axis((0, kw), name="rv")
    acc = te.compute((n_, spec.out_channels, spec.out_height, spec.out_width),
                     lambda n, o, y, xx: te.sum(source[n, o // cog * cig + ri, y + ru, xx + rv] * weight[o, ri, ru, rv],
                                                axis=[ri, ru, rv]),
                     name="conv")
    out = te.compute(acc.shape, lambda *i: acc(*i), name="store")
    return [x, weight], out


def out_block_for(spec: Conv2dSpec, lanes: int) -> int:
    """Output channels per register tile: many for 3x3 (compute-bound: 14 zmm accumulators hide the FMA
    latency; fewer with AVX2's 16 registers), few for 1x1 (memory-bound). A divisor of Co/groups."""
    limit = (14 if lanes >= 16 else 6) if spec.kernel != (1, 1) else 4
    per_group = spec.out_channels // spec.groups
    return max(b for b in range(1, limit + 1) if per_group % b == 0)


def conv2d_primfunc(spec: Conv2dSpec, lanes: int = 16, out_block: int | None = None):
    """The scheduled ``PrimFunc`` (see module docstring); ``out_block`` default: ``out_block_for``."""
    from tvm import s_tir, te

    inputs, output = conv2d_compute(spec)
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", "conv2d")
    sch = s_tir.Schedule(func)
    out_block = out_block or out_block_for(spec, lanes)
    lanes = vector_lanes(spec.out_width, lanes)
    if (spec.out_channels // spec.groups) % out_block:
        raise ValueError(f"out_block {out_block} does not divide the {spec.out_channels // spec.groups} outputs per group")
    if any(spec.pads):
        pad = sch.get_sblock("pad")
        n, c, y, xx = sch.get_loops(pad)
        sch.reorder(n, y, c, xx)
        sch.parallel(sch.fuse(n, y))
    store = sch.get_sblock("store")
    conv = sch.get_sblock("conv")
    n, o, y, xx = sch.get_loops(store)
    oo, oi = sch.split(o, [None, out_block])
    xo, xi = sch.split(xx, [None, lanes])
    sch.reorder(n, y, xo, oo, oi, xi)
    rows = sch.fuse(n, y)
    sch.vectorize(xi)
    sch.set_scope(conv, 0, "local")
    sch.compute_at(conv, oo)
    inner = sch.get_loops(conv)[3:]  # below (rows, xo, oo); unit loops vanish under compute_at
    n_spatial = int(out_block > 1) + int(lanes > 1)
    spatial, reduction = inner[:n_spatial], inner[n_spatial:]
    sch.reorder(*reduction, *spatial)
    if lanes > 1:
        sch.vectorize(spatial[-1])
    for loop in spatial[: n_spatial - int(lanes > 1)] + reduction[1:]:
        sch.unroll(loop)
    sch.parallel(rows)
    init = sch.decompose_reduction(conv, reduction[0])
    if lanes > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]

