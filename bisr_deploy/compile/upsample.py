"""Bilinear 2x upsampling (ONNX Resize, mode linear, half_pixel; PyTorch ``interpolate(scale_factor=2,
mode="bilinear")``) of an NCHW float32 tensor, as a scheduled TIR kernel.

With scale 2 and half-pixel centres the weights are fixed: output row 2i mixes input rows i-1 and i with
weights 0.25/0.75, row 2i+1 mixes rows i and i+1 with 0.75/0.25 (indices clamped at the border); columns
likewise. TVM's legalised ``resize2d`` computes the source coordinate, floor and weights per element and
gathers four inputs; this kernel does a vertical pass on contiguous rows (vectorised, into a row with a
one-column halo that repeats the border columns), then a horizontal pass in vectors of even and odd columns
(contiguous loads of the halo'd row) written as an interleaved [.., W, 2] array.
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

    def vertical(n, ch, yy, xh):
        """Row yy of the vertical pass at column xh - 1, the border columns repeated (a one-column halo)."""
        i, col = yy // 2, tirx.min(tirx.max(xh - 1, 0), w - 1)
        other = tirx.Select(yy % 2 == 0, tirx.max(i - 1, 0), tirx.min(i + 1, h - 1))
        return near * x[n, ch, i, col] + far * x[n, ch, other, col]

    rows = te.compute((n_, c, 2 * h, w + 2), vertical, name="rows")

    def horizontal(n, ch, yy, xx, r):
        return near * rows[n, ch, yy, xx + 1] + far * rows[n, ch, yy, tirx.Select(r == 0, xx, xx + 2)]

    out = te.compute((n_, c, 2 * h, w, 2), horizontal, name="cols")
    func = te.create_prim_func([x, out]).with_attr("global_symbol", "upsample2x")
    sch = s_tir.Schedule(func)
    cols = sch.get_sblock("cols")
    n, ch, yy, xx, r = sch.get_loops(cols)
    outer = sch.fuse(n, ch, yy)
    sch.parallel(outer)
    width = vector_lanes(w, lanes)
    if width > 1:  # vectors of output pairs: two contiguous loads per vector, an interleaving store
        xo, xi = sch.split(xx, [None, width])
        sch.reorder(xo, r, xi)
        sch.vectorize(xi)
    sch.unroll(r)
    vertical_block = sch.get_sblock("rows")
    sch.compute_at(vertical_block, outer)
    (xh,) = sch.get_loops(vertical_block)[1:]
    if w > 1:  # the interior columns read X's row without clamping: one vector loop
        sch.vectorize(sch.loop_partition(xh, [1, w, None])[1])
    return sch.mod["main"]
