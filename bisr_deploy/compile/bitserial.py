"""The fused ``ai.bisr::BiSRConv`` operator (docs/custom-ops.md) as TVM tensor-expression kernels.

One ``BiSRConvSpec`` (shape, kernel, pads, groups) gives one TIR ``PrimFunc`` in three stages:

1. ``pack``: redistribution ``k[c]·X + b[c]`` (float32, rounded after the product and after the sum), sign
   (bit 1 = +1, Sign(0) = -1), and channel packing into uint32 words. The packed activations are
   **word-planar**, ``[N, ceil(C/32), H, W]``: channel c is bit ``c % 32`` of word plane ``c // 32``. Planar
   words make the binary convolution vectorise along the image width, so its float epilogue reads the
   residual and writes the NCHW output with contiguous vector loads/stores (the graph stays NCHW).
2. ``pad`` (KH, KW > 1 only): the packed planes with a one-word zero border.
3. ``conv`` + ``epilogue``: ``S = Σ popcount((a XOR w) AND m)`` over the kernel taps and the word planes of
   the output channel's group, then ``acc = T[o, row class, column class] − 2·S`` and the float32 epilogue
   ``Y = X + (RPReLU(weight_scale·acc))``. A zero border word XORs to ``popcount(w)``; the per-channel table
   ``T`` (``border_table``) holds ``n_valid·Cg + 2·Σ_invalid popcount(w_tap)`` for the 4×4 combinations of
   {first, last} row/column flags, which makes ``acc`` exactly the zero-padded sum of the contract.

Kernel parameters prepared from the ONNX initializers by ``prepare_weights`` (numpy, at compile time):
``wwords`` uint32 [C, NWG, KH, KW] (the output channel's weight bits at their activation bit positions, NWG =
the most word planes one group touches), ``wmask`` uint32 [C, NWG] (the group's channel bits), ``table``
int32 [C, 4, 4]. Pads are at most 1 and top+bottom = KH−1, left+right = KW−1 (same-size output), which is
every BiSR-Conv of BiSRNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bitpack import unpack_sign_bits
from ..errors import BisrError

WORD_BITS = 32
PARAM_NAMES = ("redist_scale", "redist_bias", "wwords", "wmask", "table",
               "weight_scale", "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out")


@dataclass(frozen=True)
class BiSRConvSpec:
    """Static shape of one BiSRConv node: X [batch, channels, height, width] float32 -> Y of the same shape."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    group: int

    def __post_init__(self):
        kh, kw = self.kernel
        top, left, bottom, right = self.pads
        if min(self.batch, self.channels, self.height, self.width, kh, kw, self.group) < 1:
            raise BisrError(f"BiSRConv: non-positive size in {self}")
        if self.channels % self.group:
            raise BisrError(f"BiSRConv: {self.channels} channels are not divisible by group {self.group}")
        if top + bottom != kh - 1 or left + right != kw - 1 or max(self.pads) > 1 or min(self.pads) < 0:
            raise BisrError(f"BiSRConv: pads {list(self.pads)} with kernel {list(self.kernel)} are not supported "
                            "(need a same-size output and pads of 0 or 1)")

    @property
    def words(self) -> int:
        """Word planes of the packed activation."""
        return -(-self.channels // WORD_BITS)

    @property
    def group_channels(self) -> int:
        return self.channels // self.group

    def base_word(self, o):
        """First word plane read by output channel ``o`` (an int or a TIR expression)."""
        cg = self.group_channels
        return (o // cg) * cg // WORD_BITS

    @property
    def group_words(self) -> int:
        """NWG: the most word planes that one group's channels span."""
        cg = self.group_channels
        return max((g * cg + cg - 1) // WORD_BITS - (g * cg) // WORD_BITS + 1 for g in range(self.group))

    @property
    def padded(self) -> bool:
        return self.kernel != (1, 1)



def prepare_weights(spec: BiSRConvSpec, weight_bits: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX ``weight_bits`` uint8 [C, ceil(Cg·KH·KW/8)] (LSB-first over (i,u,v)) -> ``wwords``, ``wmask``, ``table``."""
    c, cg = spec.channels, spec.group_channels
    kh, kw = spec.kernel
    try:
        signs = unpack_sign_bits(weight_bits, (c, cg, kh, kw)) > 0
    except ValueError as exc:
        raise BisrError(f"BiSRConv weight_bits: {exc}") from exc
    signs = signs.astype(np.uint64)
    nwg = spec.group_words
    wwords = np.zeros((c, nwg, kh, kw), np.uint64)
    wmask = np.zeros((c, nwg), np.uint64)
    for o in range(c):
        base = spec.base_word(o)
        for i in range(cg):
            channel = (o // cg) * cg + i
            j, bit = channel // WORD_BITS - base, channel % WORD_BITS
            wwords[o, j] |= signs[o, i] << np.uint64(bit)
            wmask[o, j] |= np.uint64(1) << np.uint64(bit)
    popcounts = signs.sum(axis=1).astype(np.int64)  # [C, KH, KW]: +1 weights per tap
    table = np.zeros((c, 4, 4), np.int32)
    top, left, bottom, right = spec.pads
    for row_class in range(4):
        rows = np.ones(kh, bool)
        if row_class & 1:  # first row: taps above the image
            rows[:top] = False
        if row_class & 2:  # last row: taps below the image
            rows[kh - bottom:] = False
        for col_class in range(4):
            cols = np.ones(kw, bool)
            if col_class & 1:
                cols[:left] = False
            if col_class & 2:
                cols[kw - right:] = False
            valid = rows[:, None] & cols[None, :]
            invalid_pc = (popcounts * ~valid).sum(axis=(1, 2))
            table[:, row_class, col_class] = cg * int(valid.sum()) + 2 * invalid_pc
    return {"wwords": wwords.astype(np.uint32), "wmask": wmask.astype(np.uint32), "table": table}


def bisrconv_compute(spec: BiSRConvSpec):
    """TE tensors of the fused operator: returns (inputs in ``["X", *PARAM_NAMES]`` order, output Y)."""
    from tvm import te, tirx

    n_, c, h, w = spec.batch, spec.channels, spec.height, spec.width
    kh, kw = spec.kernel
    top, left, _, _ = spec.pads
    words, nwg = spec.words, spec.group_words
    u32 = "uint32"

    x = te.placeholder((n_, c, h, w), "float32", name="X")
    k = te.placeholder((c,), "float32", name="redist_scale")
    b = te.placeholder((c,), "float32", name="redist_bias")
    wwords = te.placeholder((c, nwg, kh, kw), u32, name="wwords")
    wmask = te.placeholder((c, nwg), u32, name="wmask")
    table = te.placeholder((c, 4, 4), "int32", name="table")
    scale = te.placeholder((c,), "float32", name="weight_scale")
    bias_in = te.placeholder((c,), "float32", name="rprelu_bias_in")
    slope = te.placeholder((c,), "float32", name="rprelu_slope")
    bias_out = te.placeholder((c,), "float32", name="rprelu_bias_out")
    zero_f = tirx.const(0.0, "float32")

    def pack(n, p, y, xx):
        word = None
        for bit in range(WORD_BITS):
            ch = tirx.min(p * WORD_BITS + bit, c - 1)
            positive = tirx.all(p * WORD_BITS + bit < c, k[ch] * x[n, ch, y, xx] > -b[ch])
            term = tirx.Select(positive, tirx.const(1 << bit, u32), tirx.const(0, u32))
            word = term if word is None else word | term
        return word

    packed = te.compute((n_, words, h, w), pack, name="pack")
    if spec.padded:
        def pad(n, p, y, xx):
            inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w + left)
            return tirx.if_then_else(inside, packed[n, p, y - top, xx - left], tirx.const(0, u32))

        source = te.compute((n_, words, h + kh - 1, w + kw - 1), pad, name="pad")
    else:
        source = packed

    j = te.reduce_axis((0, nwg), name="j")
    ru = te.reduce_axis((0, kh), name="ru")
    rv = te.reduce_axis((0, kw), name="rv")

    def conv(n, o, y, xx):
        plane = tirx.min(spec.base_word(o) + j, words - 1)
        diff = source[n, plane, y + ru, xx + rv] ^ wwords[o, j, ru, rv]
        if spec.group > 1:
            diff = diff & wmask[o, j]
        return te.sum(tirx.popcount(diff).astype("int32"), axis=[j, ru, rv])

    mismatches = te.compute((n_, c, h, w), conv, name="conv")

    def epilogue(n, o, y, xx):
        row_class = tirx.Select(y == 0, 1, 0) + tirx.Select(y == h - 1, 2, 0)
        first, last = xx == 0, xx == w - 1
        bound = tirx.Select(first, tirx.Select(last, table[o, row_class, 3], table[o, row_class, 1]),
                            tirx.Select(last, table[o, row_class, 2], table[o, row_class, 0]))
        acc = bound - 2 * mismatches[n, o, y, xx]
        # TVM's LLVM backend contracts a float32 multiply-add into an FMA (one rounding instead of the
        # contract's two). scale·acc is exact in float64 (24-bit × |acc| < 2^29) and its narrowing
        # equals the float32 product, which LLVM cannot fuse with the following float32 add.
        s = (scale[o].astype("float64") * acc.astype("float64")).astype("float32")
        t = s + bias_in[o]
        r = tirx.Select(t > zero_f, t, slope[o] * t) + bias_out[o]
        return x[n, o, y, xx] + r

    y_out = te.compute((n_, c, h, w), epilogue, name="epilogue")
    return [x, k, b, wwords, wmask, table, scale, bias_in, slope, bias_out], y_out


def vector_lanes(width: int, lanes: int) -> int:
    """Largest power-of-two lane count <= ``lanes`` that divides the row width."""
    while lanes > 1 and width % lanes:
        lanes //= 2
    return lanes


def _vectorize_row(sch, pack, lanes: int) -> None:
    """The pack block's innermost (word plane, x) loops: planes unrolled, x in vectors of ``lanes``."""
    *_, p, xx = sch.get_loops(pack)
    xo, xi = sch.split(xx, [None, lanes])
    sch.unroll(p)
    sch.vectorize(xi)


def bisrconv_primfunc(spec: BiSRConvSpec, lanes: int = 16):
    """The scheduled ``PrimFunc`` (params: X, PARAM_NAMES..., Y): vectorised along W with ``lanes`` uint32
    lanes (16 = one zmm, 8 = one ymm), rows in parallel, the reduction in registers, the taps unrolled."""
    from tvm import s_tir, te

    inputs, output = bisrconv_compute(spec)
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", "bisrconv")
    sch = s_tir.Schedule(func)
    lanes = vector_lanes(spec.width, lanes)

    pack = sch.get_sblock("pack")
    if spec.padded:  # the 3x3 window needs neighbouring rows: pack the whole image first, then pad it
        n, p, y, xx = sch.get_loops(pack)
        sch.reorder(n, y, p, xx)
        sch.parallel(sch.fuse(n, y))
        _vectorize_row(sch, pack, lanes)
        pad = sch.get_sblock("pad")
        n, p, y, xx = sch.get_loops(pad)
        sch.reorder(n, y, p, xx)
        sch.parallel(sch.fuse(n, y))

    epi = sch.get_sblock("epilogue")
    conv = sch.get_sblock("conv")
    n, o, y, xx = sch.get_loops(epi)
    xo, xi = sch.split(xx, [None, lanes])
    sch.reorder(n, y, o, xo, xi)
    rows = sch.fuse(n, y)
    sch.vectorize(xi)
    sch.set_scope(conv, 0, "local")
    sch.compute_at(conv, xo)
    cx, *reduction = sch.get_loops(conv)[3:]  # below (rows, o, xo); unit reduction loops are gone
    if reduction:
        sch.reorder(*reduction, cx)
    sch.vectorize(cx)
    for loop in reduction:
        sch.unroll(loop)
    if not spec.padded:  # 1x1: pack each row just before its convolution, while X's row is still in cache
        sch.compute_at(pack, rows)
        _vectorize_row(sch, pack, lanes)
    sch.parallel(rows)
    init = sch.decompose_reduction(conv, reduction[0] if reduction else cx)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]
