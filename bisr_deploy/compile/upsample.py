"""Bilinear 2x upsampling (ONNX Resize, mode linear, half_pixel; PyTorch ``interpolate(scale_factor=2,
mode="bilinear")``) of an NCHW float32 tensor, as a scheduled TIR kernel.

With scale 2 and half-pixel centres the weights are fixed: output row 2i mixes input rows i-1 and i with
weights 0.25/0.75, row 2i+1 mixes rows i and i+1 with 0.75/0.25 (indices clamped at the border); columns
likewise. TVM's legalised ``resize2d`` computes the source coordinate, floor and weights per element and
gathers four inputs; this kernel does a vertical pass on contiguous rows (vectorised), then a horizontal
pass that writes even and odd columns as an interleaved [.., W, 2] array (LLVM vectorises the interleave).
Results equal the general formula up to float rounding.

``upsample2x_primfunc(shape, lanes)`` -> PrimFunc (X [N,C,H,W], Y [N,C,2H,W,2]); reshape Y to [N,C,2H,2W].
"""

from __future__ import annotations

from .schedule import vector_lanes


def upsample2x_primfunc(shape: tuple[int, int, int, int], lanes: int = 16):
    from tvm import s_tir, te, tirx

    n_, c, h, w = shape
    x = te.placeholder(shape, "float32", name="X")
    near, far = tirx.const(0.75, "float32"), tirx.const(0.25, "float32")

    def vertical(n, ch, yy, xx):
        i = yy // 2
        other = tirx.Select(yy % 2 == 0, tirx.max(i - 1, 0), tirx.min(i + 1, h - 1))
        return near * x[n, ch, i, xx] + far * x[n, ch, other, xx]

    rows = te.compute((n_, c, 2 * h, w), vertical, name="rows")

    def horizontal(n, ch, yy, xx, r):
        other = tirx.Select(r == 0, tirx.max(xx - 1, 0), tirx.min(xx + 1, w - 1))
        return near * rows[n, ch, yy, xx] + far * rows[n, ch, yy, other]

    out = te.compute((n_, c, 2 * h, w, 2), horizontal, name="cols")
    func = te.create_prim_func([x, out]).with_attr("global_symbol", "upsample2x")
    sch = s_tir.Schedule(func)
    cols = sch.get_sblock("cols")
    n, ch, yy, xx, r = sch.get_loops(cols)
    outer = sch.fuse(n, ch, yy)
    sch.parallel(outer)
    sch.unroll(r)
    vertical_block = sch.get_sblock("rows")
    sch.compute_at(vertical_block, outer)
    width = vector_lanes(w, lanes)
    if width > 1:
        (xv,) = sch.get_loops(vertical_block)[1:]
        _, xi = sch.split(xv, [None, width])
        sch.vectorize(xi)
    return sch.mod["main"]
