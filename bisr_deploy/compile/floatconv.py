"""Scheduled float32 NCHW convolution (stride 1, dilation 1, any groups) for the full-precision layers.

TVM's default Relax CPU pipeline legalises ``nn.conv2d`` to an unscheduled loop nest; BiSRNet's float
convolutions (``fution`` 1x1 56->28, ``conv_in``/``conv_out`` 3x3 28->28) would dominate the run time.
This kernel keeps a register tile of accumulators, ``Schedule.conv_tile`` = (output channels, vectors along
the row) (``tile_for``): the image width is the vector axis, each input vector load feeds one FMA per output
channel of the tile and each broadcast weight one per vector, so loads stay below the FMAs. Bands of output
rows (the largest height divisor up to ``Schedule.row_band``) run in parallel; each band zero-pads its input
rows (and their halo) into a buffer of its own (cache-resident; the interior columns are one vector copy),
so no padded copy of the whole input goes through memory. docs/compiler.md ("The float convolutions") has
the tiles and the measurements; the reduction order per output is the same for every tile.

``conv2d_primfunc(spec, schedule)`` -> PrimFunc with params (X [N,Ci,H,W], W [Co,Ci/groups,KH,KW], Y [N,Co,Ho,Wo]).
The TVM fp32 baseline also runs BiSRNet's binary convolutions (±1 weights, grouped 3x3) through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import Schedule, vector_lanes


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

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one call: every output times its group's input channels and taps."""
        kh, kw = self.kernel
        outputs = self.batch * self.out_channels * self.out_height * self.out_width
        return outputs * self.in_channels // self.groups * kh * kw



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


def tile_for(spec: Conv2dSpec, schedule: Schedule) -> tuple[int, int, int]:
    """(output channels, vectors, lanes) of the register tile: the largest that fit ``schedule.conv_tile``
    and divide the outputs per group and the row (``vector_lanes``)."""
    max_out, max_vectors = schedule.conv_tile
    per_group = spec.out_channels // spec.groups
    lanes = vector_lanes(spec.out_width, schedule.lanes)
    out_block = max(b for b in range(1, max_out + 1) if per_group % b == 0)
    vectors = max(v for v in range(1, max_vectors + 1) if spec.out_width % (v * lanes) == 0)
    return out_block, vectors, lanes


def conv2d_primfunc(spec: Conv2dSpec, schedule: Schedule):
    """The scheduled ``PrimFunc`` (see module docstring)."""
    from tvm import s_tir, te

    inputs, output = conv2d_compute(spec)
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", "conv2d")
    sch = s_tir.Schedule(func)
    out_block, width_vectors, lanes = tile_for(spec, schedule)
    row_band = max(b for b in range(1, schedule.row_band + 1) if spec.out_height % b == 0)
    store = sch.get_sblock("store")
    conv = sch.get_sblock("conv")
    n, o, y, xx = sch.get_loops(store)
    oo, oi = sch.split(o, [None, out_block])
    xo, xv, xi = sch.split(xx, [None, width_vectors, lanes])
    sch.reorder(n, y, xo, oo, oi, xv, xi)
    band, _ = sch.split(sch.fuse(n, y), [None, row_band])
    sch.vectorize(xi)
    sch.set_scope(conv, 0, "local")
    sch.compute_at(conv, oo)
    inner = sch.get_loops(conv)[4:]  # below (band, row, xo, oo); unit loops vanish under compute_at
    n_spatial = int(out_block > 1) + int(width_vectors * lanes > 1)
    spatial, reduction = inner[:n_spatial], inner[n_spatial:]
    if width_vectors > 1 and lanes > 1:  # compute_at made one loop of the tile's width
        spatial = [*spatial[:-1], *sch.split(spatial[-1], [width_vectors, lanes])]
        n_spatial += 1
    sch.reorder(*reduction, *spatial)
    if lanes > 1:
        sch.vectorize(spatial[-1])
    for loop in spatial[: n_spatial - int(lanes > 1)] + reduction[1:]:
        sch.unroll(loop)
    sch.parallel(band)
    init = sch.decompose_reduction(conv, reduction[0])
    if lanes > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    if any(spec.pads):
        pad = sch.get_sblock("pad")
        sch.compute_at(pad, band)
        # the columns that copy X (no condition on x once apart from the zero columns) are one vector loop
        left, right = spec.pads[1], spec.pads[3]
        columns = sch.get_loops(pad)[-1]
        if left or right:
            factors = [left] * bool(left) + ([spec.width, None] if right else [None])
            columns = sch.loop_partition(columns, factors)[int(left > 0)]
        sch.vectorize(columns)
    return sch.mod["main"]
