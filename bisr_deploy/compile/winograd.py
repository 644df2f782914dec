"""3x3 float32 convolution (stride 1, pads 1, one group) by Winograd's F(m, 3) along the image height.

BiSRNet's ``conv_in`` and ``conv_out`` (28 -> 28 channels, 3x3, at the full resolution) are the largest float
work of the network: ``floatconv`` runs them at the FMA peak, so only fewer multiplications make them
faster. Output rows come in tiles of m; for each of the kernel's three columns the 1-D correlation of m rows
is ``A^T [(G w) ⊙ (B^T d)]`` (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) over
alpha = m + 2 input rows: alpha multiplications instead of 3·m. With m = 4 that is 6 per 4 outputs instead of
12: half the FMAs, plus transforms that are additions and small constant multiples, vectorised along the
row like everything else (the transform runs down the columns, so the row stays the vector axis: no
gathers, no layout change).

Stages, per band of row tiles (bands in parallel): ``pad`` (the band's input rows, zero border), ``V`` =
B^T d for every input channel and column, ``M`` = Σ_ci Σ_v U[k, co, ci, v] · V[ci, t, k, x + v] (a 1x3
convolution per k, with ``floatconv``'s register tile of accumulators), and the output rows = A^T M. The
transformed kernel U = G w [alpha, Co, Ci, 3] is a stage at the start of every call (float32, from the W
argument: the kernel's signature is ``floatconv``'s). Results equal the direct convolution up to float
rounding (another order of operations: ~1e-7 of the output's magnitude for m = 4; ``tests/test_compile.py``).
"""

from __future__ import annotations

from fractions import Fraction as F

from .floatconv import Conv2dSpec
from .schedule import Schedule, vector_lanes

# Lavin & Gray's matrices for F(m, 3), interpolation points 0, ±1, ±2 and infinity: (B^T, G, A^T).
MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [F(1, 2), F(1, 2), F(1, 2)], [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[F(1, 4), 0, 0], [F(-1, 6), F(-1, 6), F(-1, 6)], [F(-1, 6), F(1, 6), F(-1, 6)],
         [F(1, 24), F(1, 12), F(1, 6)], [F(1, 24), F(-1, 12), F(1, 6)], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
TILE_ROWS = 4  # m


def applies(spec: Conv2dSpec) -> bool:
    """The convolutions this kernel computes: 3x3, pads 1, one group, at least one tile of rows, and no unit
    extent among the channels and the width (the schedule splits each of those loops)."""
    return (spec.kernel == (3, 3) and spec.pads == (1, 1, 1, 1) and spec.groups == 1
            and spec.height >= TILE_ROWS and min(spec.width, spec.in_channels, spec.out_channels) >= 2)


def _combination(coefficients, terms):
    """Σ c·t over the nonzero coefficients (float32 constants), as one TIR expression."""
    from tvm import tirx

    out = None
    for c, t in zip(coefficients, terms):
        if c == 0:
            continue
        term = t if c == 1 else (-t if c == -1 else tirx.const(float(c), "float32") * t)
        out = term if out is None else out + term
    return out


def _by_index(index, values):
    """``values[index]`` for a TIR index that unrolling makes constant (a Select chain that then folds)."""
    from tvm import tirx

    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == k, values[k], out)
    return out


def winograd_primfunc(spec: Conv2dSpec, schedule: Schedule, m: int = TILE_ROWS):
    """The scheduled ``PrimFunc`` (X [N,Ci,H,W], W [Co,Ci,3,3], Y [N,Co,H,W]; module docstring)."""
    from tvm import s_tir, te, tirx

    bt, g, at = MATRICES[m]
    alpha = m + 2
    n_, ci, co, h, w = spec.batch, spec.in_channels, spec.out_channels, spec.height, spec.width
    tiles = -(-h // m)
    wv = -(-(w + 2) // schedule.lanes) * schedule.lanes  # V's row: the padded row, whole vectors
    x = te.placeholder((n_, ci, h, w), "float32", name="X")
    weight = te.placeholder((co, ci, 3, 3), "float32", name="W")

    def pad(n, c, y, xx):  # row y of the padded input is input row y - 1 (zero outside), likewise columns
        inside = tirx.all(y >= 1, y <= h, xx >= 1, xx <= w)
        return tirx.if_then_else(inside, x[n, c, y - 1, xx - 1], tirx.const(0.0, "float32"))

    padded = te.compute((n_, ci, tiles * m + 2, wv), pad, name="pad")
    u = te.compute((alpha, co, ci, 3), lambda k, o, c, v: _by_index(
        k, [_combination(g[row], [weight[o, c, r, v] for r in range(3)]) for row in range(alpha)]), name="U")
    v_ = te.compute((n_, ci, tiles, alpha, wv), lambda n, c, t, k, xx: _by_index(
        k, [_combination(bt[row], [padded[n, c, t * m + i, xx] for i in range(alpha)]) for row in range(alpha)]),
        name="V")
    rc = te.reduce_axis((0, ci), name="rc")
    rv = te.reduce_axis((0, 3), name="rv")
    acc = te.compute((n_, co, tiles, alpha, w), lambda n, o, t, k, xx: te.sum(
        u[k, o, rc, rv] * v_[n, rc, t, k, xx + rv], axis=[rc, rv]), name="M")
    mm = te.compute(acc.shape, lambda *i: acc(*i), name="M_store")
    y = te.compute((n_, co, h, w), lambda n, o, yy, xx: _by_index(
        yy % m, [_combination(at[row], [mm[n, o, yy // m, k, xx] for k in range(alpha)]) for row in range(m)]),
        name="Y")
    func = te.create_prim_func([x, weight, y]).with_attr("global_symbol", "conv2d")
    return _schedule(s_tir.Schedule(func), spec, schedule, m, alpha)


def _schedule(sch, spec: Conv2dSpec, schedule: Schedule, m: int, alpha: int):
    """Bands of one row tile in parallel; under each: V (vectorised along the row, k unrolled), M with the
    register tile (output channels x vectors) per k, the output rows (m unrolled)."""
    lanes = vector_lanes(spec.width, schedule.lanes)
    max_out, max_vectors = schedule.conv_tile
    out_block = max(b for b in range(1, max_out + 1) if spec.out_channels % b == 0)
    vectors = max(v for v in range(1, max_vectors + 1) if spec.width % (v * lanes) == 0)
    y_block = sch.get_sblock("Y")
    n, o, yy, xx = sch.get_loops(y_block)
    t, j = sch.split(yy, [None, m])
    sch.reorder(n, t, o, j, xx)
    band = sch.fuse(n, t)
    sch.unroll(j)
    sch.vectorize(sch.split(xx, [None, lanes])[1])
    sch.parallel(band)
    store = sch.get_sblock("M_store")
    sch.compute_at(store, band)
    o_, k, x_ = sch.get_loops(store)[1:]
    oo, oi = sch.split(o_, [None, out_block])
    xo, xv, xi = sch.split(x_, [None, vectors, lanes])
    sch.reorder(k, xo, oo, oi, xv, xi)
    sch.vectorize(xi)
    acc = sch.get_sblock("M")
    sch.set_scope(acc, 0, "local")
    sch.compute_at(acc, oo)
    inner = sch.get_loops(acc)[4:]  # below (band, k, xo, oo): (o in the tile, x in the tile), then (ci, v)
    spatial, reduction = inner[:-2], inner[-2:]
    if vectors > 1 and lanes > 1:
        spatial = [*spatial[:-1], *sch.split(spatial[-1], [vectors, lanes])]
    sch.reorder(*reduction, *spatial)
    if lanes > 1:
        sch.vectorize(spatial[-1])
    for loop in spatial[:len(spatial) - int(lanes > 1)] + reduction[1:]:
        sch.unroll(loop)
    init = sch.decompose_reduction(acc, reduction[0])
    if lanes > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    v_block = sch.get_sblock("V")
    sch.compute_at(v_block, band)
    _, k_v, x_v = sch.get_loops(v_block)[1:]
    x_o, x_i = sch.split(x_v, [None, schedule.lanes])
    sch.reorder(x_o, k_v, x_i)  # the alpha rows of one vector of columns once, all k from them
    sch.unroll(k_v)
    sch.vectorize(x_i)
    pad = sch.get_sblock("pad")  # the band's alpha input rows with their zero border, in cache
    sch.compute_at(pad, band)
    columns = sch.get_loops(pad)[-1]
    interior = sch.loop_partition(columns, [1, spec.width, None])[1]  # the columns that copy X: one vector loop
    sch.vectorize(interior)
    return sch.mod["main"]
