"""The fused BiSRConv custom operator (``bisr_deploy.bisrconv_op``, docs/custom-ops.md) as TVM tensor-expression
kernels.

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

``Fusion`` extends the kernel to BiSRNet's modules around the BiSRConvs (two layers with their Concat or
mean, the following RPReLU, the block residual, the LayerNorm before a FusionUp);
``BiSRConvSpec.tap_words`` switches grouped convs with small groups to tap-packed windows (2 popcounts per
output for 4 channels x 3x3, not 9; built by butterfly transposes, ``transposed_windows``); on AVX-512 the
epilogue of kernels with at most 63 binary products per output looks steps 4-5 up in a per-channel table
(``epilogue_lut_entries``). docs/compiler.md.

Kernel parameters prepared from the ONNX initializers by ``prepare_weights`` (numpy, at compile time):
``wwords`` uint32 [C, NWG, KH, KW] (the output channel's weight bits at their activation bit positions, NWG =
the most word planes one group touches), ``wmask`` uint32 [C, NWG] (the group's channel bits), ``table``
int32 [C, 4, 4]. Pads are at most 1 and top+bottom = KH−1, left+right = KW−1 (same-size output), which is
every BiSR-Conv of BiSRNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..artifact import BISRCONV_PARAMS
from ..bitpack import unpack_sign_bits
from ..errors import BisrError
from .schedule import Schedule, vector_lanes

WORD_BITS = 32


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
    def binary_macs(self) -> int:
        """Binary multiply-accumulates of one layer: every output times its group's channels and taps."""
        kh, kw = self.kernel
        return self.batch * self.channels * self.height * self.width * self.group_channels * kh * kw

    @property
    def padded(self) -> bool:
        return self.kernel != (1, 1)

    @property
    def tap_words(self) -> int:
        """TW > 0: the kernel is **tap-packed**. A grouped conv whose groups sit inside one word (Cg divides
        32) and whose window (Cg·KH·KW bits) fits fewer words than the NWG·KH·KW of the plane-wise loop
        packs each group's Cg bits of all taps side by side (tap k = u·KW + v at bits
        (k mod 32/Cg)·Cg.. of word k div 32/Cg): TW popcounts per output instead of KH·KW. 0: plane-wise."""
        kh, kw = self.kernel
        cg = self.group_channels
        if self.group == 1 or WORD_BITS % cg:
            return 0
        tw = -(-cg * kh * kw // WORD_BITS)
        return tw if tw < self.group_words * kh * kw else 0



def prepare_weights(spec: BiSRConvSpec, weight_bits: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX ``weight_bits`` uint8 [C, ceil(Cg·KH·KW/8)] (LSB-first over (i,u,v)) -> ``wwords``, ``wmask``, ``table``.
    Tap-packed specs (``spec.tap_words``) get ``wwords`` [C, TW] in the tap-packed window's bit layout (their
    ``wmask`` is kept for a uniform signature but unused: the windows already isolate the group's bits)."""
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
    if spec.tap_words:
        per_word = WORD_BITS // cg
        wwords = np.zeros((c, spec.tap_words), np.uint64)
        for tap in range(kh * kw):
            for i in range(cg):
                bit = np.uint64((tap % per_word) * cg + i)
                wwords[:, tap // per_word] |= signs[:, i, tap // kw, tap % kw] << bit
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


COMBINES = ("single", "concat", "mean")
POST_NAMES = ("post_bias_in", "post_slope", "post_bias_out")
NORM_NAMES = ("norm_gamma", "norm_beta")
DEFAULT_NORM_EPSILON = 1e-5  # PyTorch's LayerNorm default (BiSRNet's)


@dataclass(frozen=True)
class Fusion:
    """What one kernel computes around its BiSRConv(s) (see ``bisrconv_compute``)."""

    combine: str = "single"  # "single" | "concat" | "mean"
    post: bool = False  # the following RPReLU in the epilogue
    split_input: bool = False  # mean only: the two halves come as two tensors (a Concat in the graph)
    residual: bool = False  # single or mean: + R [N,C,H,W] after the layer or the mean (a residual Add)
    norm_epsilon: float | None = None  # not mean: X is LayerNorm(X_raw) over channels, computed in the kernel

    def __post_init__(self):
        if self.combine not in COMBINES or (self.combine != "mean" and self.split_input) or \
                (self.combine == "concat" and self.residual) or (self.combine == "mean" and self.norm_epsilon is not None):
            raise BisrError(f"BiSRConv kernel: unsupported fusion {self}")

    @property
    def norm(self) -> bool:
        return self.norm_epsilon is not None

    @property
    def layers(self) -> int:
        return 1 if self.combine == "single" else 2

    @property
    def suffix(self) -> str:
        """Kernel name suffix ("" for a plain single layer)."""
        parts = [self.combine] if self != Fusion() else []
        parts += [name for name, on in ((self.norm_name, self.norm), ("2in", self.split_input),
                                        ("res", self.residual), ("rprelu", self.post)) if on]
        return "".join(f"_{p}" for p in parts)

    @property
    def norm_name(self) -> str:
        """The LayerNorm's part of a kernel name: "norm", or with another epsilon than PyTorch's, its bits."""
        if self.norm_epsilon in (None, DEFAULT_NORM_EPSILON):
            return "norm"
        return f"norm{int(np.float32(self.norm_epsilon).view(np.uint32)):08x}"  # another epsilon: another kernel

    def output_channels(self, spec: BiSRConvSpec) -> int:
        return 2 * spec.channels if self.combine == "concat" else spec.channels


LUT_LANES = 16  # AVX-512's vpermi2ps: 16 float32 lanes, each picks one of 32 table entries; NEON's tbl: 16 byte
# indices (pixels) per lookup


def epilogue_lut_entries(spec: BiSRConvSpec, schedule: Schedule) -> int:
    """Entries of the kernel's epilogue table (``bisrconv_compute``'s ``lut_entries``), 0 for the float path.
    The K + 1 values of an output's popcount sum (K = Cg·KH·KW: BiSRNet's 1x1 kernels of 28 and 56 channels and
    its grouped 3x3 of 4 channels per group) index a per-channel table when K < 64:

    * ``schedule.epilogue_table == "vpermi2ps"`` (AVX-512): 32 or 64 entries in vector registers, picked by
      ``vpermi2ps`` (the kernel vectorised in 16 float32 lanes: ``lanes`` 16 and the row a multiple of 16);
    * ``"tbl"`` (NEON): K + 1 rounded up to 16, 32, 48 or 64 entries, the tables' byte planes looked up by
      ``tbl`` over 1-4 registers for 16 pixels at once (``neon.py``): the row a multiple of 16 and one
      iteration of the epilogue computing 16 pixels (``lanes`` x ``pixel_block``).

    A padded kernel needs an even Cg: its border pixels' sums then shift the index by whole entries."""
    taps = spec.group_channels * spec.kernel[0] * spec.kernel[1]
    if taps >= 64 or (spec.padded and spec.group_channels % 2):
        return 0
    if schedule.epilogue_table == "vpermi2ps" and vector_lanes(spec.width, schedule.lanes) == LUT_LANES:
        return 32 if taps < 32 else 64
    if (schedule.epilogue_table == "tbl" and spec.width % LUT_LANES == 0
            and schedule.lanes * schedule.pixel_block == LUT_LANES):
        return -(-(taps + 1) // LUT_LANES) * LUT_LANES
    return 0


def border_block(spec: BiSRConvSpec, schedule: Schedule | None) -> int:
    """Pixels per block of a padded kernel's border tables (``Schedule.border_blocks``): the pixels of one
    iteration of its epilogue (``lanes`` x ``pixel_block``) when they divide the row, else 0 (the per-pixel
    selects of ``border_bound``). Only a row's first and last column see the left and right padding, so per
    row class a block table holds, for each lane of the row's first, inner and last block (kinds 0, 1, 2),
    what that lane needs: one vector load per block instead of compares and selects per pixel."""
    if schedule is None or not (schedule.border_blocks and spec.padded):
        return 0
    block = schedule.lanes * schedule.pixel_block
    return block if spec.width % block == 0 else 0


def bisrconv_compute(spec: BiSRConvSpec, fusion: Fusion = Fusion(), xs=None, residual=None, prefix: str = "",
                     schedule: Schedule | None = None):
    """TE tensors of the fused operator: returns (inputs, output Y). ``inputs`` are the placeholders it
    creates, in argument order; ``xs`` (the X tensors) and ``residual`` (R), if given, are existing TE
    tensors of those shapes (another kernel's stages: ``feedforward.py``) and are not among them. ``prefix``
    starts the name of every stage and placeholder (stages of several layers in one function). ``schedule``
    (None: neither of the two options below) chooses the epilogue table and the pack.

    Epilogue tables (``epilogue_lut_entries(spec, schedule)`` entries): steps 4-5 of the contract are a
    function of ``acc`` alone, so a stage ``lut`` [layers, C, entries] computes them once per call with the
    same float32 expression for acc = T_0 − 2i (T_0 = ``table[o, 0, 0]``, the interior's all-valid K; i =
    0..K), and the epilogue looks r up at i = S + (T_0 − T)/2 (S itself inside the image) instead of computing
    it per pixel: the same bits, ~6-9 vector instructions per output fewer. AVX-512 (``"vpermi2ps"``) looks up
    in vector registers, one ``vpermi2ps`` per 32 entries, written per 16-lane vector (the table's lane ``xx %
    16``): the kernel must be vectorised in 16 lanes along W (``schedule_stages`` does). NEON (``"tbl"``) has
    stages ``lut_bytes`` [layers, C, 4, entries] (byte j of each entry, a plane per j), ``lut_index`` [N,
    layers, C, H, W] (i as uint8) and ``lookup`` [N, layers, C, H, W] (r: the float32 of the four planes'
    bytes at i), whose 16-pixel loops ``neon.vectorize`` turns into ``tbl`` lookups.

    ``fusion.combine`` fuses BiSRNet's pairs of BiSRConvs (two layers of the same ``spec``, one kernel, the
    pair's packed planes stacked as planes ``l·words + p``):

    * ``single``: one layer, X [N,C,H,W] -> Y [N,C,H,W]; inputs ``["X", *BISRCONV_PARAMS]``.
    * ``concat`` (FusionUp, Downsample): both layers on the same X [N,C,H,W], Y = Concat(Y1, Y2) [N,2C,H,W].
    * ``mean`` (FusionDown, Upsample): layer l on channels [lC, (l+1)C) of X [N,2C,H,W] (``split_input``:
      on X_l [N,C,H,W], two inputs), Y = (Y1 + Y2) / 2 [N,C,H,W], the float32 Add then Div of the graph.

    ``residual`` (``single`` and ``mean``): Y = that + R, the graph's Add after the layer or the mean.

    Pairs take ``[X (or X_1, X_2), *BISRCONV_PARAMS of layer 1, *BISRCONV_PARAMS of layer 2]``, then ``R`` if
    ``residual``, then ``POST_NAMES`` if ``post`` (float32 [C_out] each): the RPReLU that follows in the
    graph, ``Y = PReLU(Y + bias_in) + bias_out``. The arithmetic is the graph's, float32 op by op.

    ``schedule.pack`` ``"shift"`` or ``"sli"``: the pack builds each word from its last channel down, ``word =
    (word << 1) | bit``, instead of or-ing ``bit << c`` terms (NEON: no constant per channel to keep or
    rematerialise; ``"sli"``: ``neon.vectorize`` emits it as ``sli``); the same words.

    ``fusion.norm`` (the LayerNorm before a FusionUp): the kernel takes the LayerNorm's input as X, and
    ``NORM_NAMES`` (gamma, beta [C]) after the layers' parameters; the sign and the layers' residual read
    ``layer_norm_stages``' result, the arithmetic of TVM's legalised LayerNorm over axis 1.
    """
    from tvm import te, tirx

    combine, post = fusion.combine, fusion.post
    n_, c, h, w = spec.batch, spec.channels, spec.height, spec.width
    kh, kw = spec.kernel
    top, left, _, _ = spec.pads
    words, nwg = spec.words, spec.group_words
    n_layers = fusion.layers
    u32 = "uint32"
    lut_entries = epilogue_lut_entries(spec, schedule) if schedule else 0
    neon_tables = bool(lut_entries) and schedule.epilogue_table == "tbl"
    shift_pack = schedule is not None and schedule.pack in ("shift", "sli")

    if xs is not None:
        inputs = []
    elif fusion.split_input:
        inputs = xs = [te.placeholder((n_, c, h, w), "float32", name=f"{prefix}X_{l}") for l in range(2)]
    else:
        inputs = xs = [te.placeholder((n_, 2 * c if combine == "mean" else c, h, w), "float32", name=f"{prefix}X")]
    inputs = list(inputs)
    if fusion.norm:
        norms = {name: te.placeholder((c,), "float32", name=prefix + name) for name in NORM_NAMES}
        xs = [layer_norm_stages(xs[0], norms["norm_gamma"], norms["norm_beta"], fusion.norm_epsilon, prefix)]

    def x_at(n, l, ch, y, xx):
        """Layer l's input channel ch (l: an int or a TIR expression)."""
        if combine != "mean":
            return xs[0][n, ch, y, xx]
        if not fusion.split_input:
            return xs[0][n, l * c + ch, y, xx]
        if isinstance(l, int):
            return xs[l][n, ch, y, xx]
        return tirx.Select(l == 0, xs[0][n, ch, y, xx], xs[1][n, ch, y, xx])  # constant once the planes unroll

    wshape = (c, spec.tap_words) if spec.tap_words else (c, nwg, kh, kw)
    shapes = {"wwords": (wshape, u32), "wmask": ((c, nwg), u32), "table": ((c, 4, 4), "int32")}
    layers = [{name: te.placeholder(*shapes.get(name, ((c,), "float32")),
                                    name=prefix + (name if n_layers == 1 else f"{name}_{l}"))
               for name in BISRCONV_PARAMS} for l in range(n_layers)]
    c_out = fusion.output_channels(spec)
    own_residual = fusion.residual and residual is None
    if own_residual:
        residual = te.placeholder((n_, c, h, w), "float32", name=f"{prefix}R")
    elif not fusion.residual:
        residual = None
    posts = {name: te.placeholder((c_out,), "float32", name=prefix + name) for name in POST_NAMES} if post else {}
    zero_f = tirx.const(0.0, "float32")

    def param(name, l, *index):
        """Layer l's parameter (l: an int or a TIR expression)."""
        if n_layers == 1:
            return layers[0][name][index]
        return tirx.Select(l == 0, layers[0][name][index], layers[1][name][index])

    def popcount_sum(diffs):
        """Σ popcount over the window's words as one expression (no reduction stage: the sum stays in registers
        of the epilogue that inlines it, and the weights stay loop-invariant)."""
        total = None
        for diff in diffs:
            term = tirx.popcount(diff).astype("int32")
            total = term if total is None else total + term
        return total

    def pack(n, q, y, xx):
        l, p = (0, q) if n_layers == 1 else (q // words, q % words)
        word = None
        for bit in reversed(range(WORD_BITS)) if shift_pack else range(WORD_BITS):
            ch = tirx.min(p * WORD_BITS + bit, c - 1)
            positive = tirx.all(p * WORD_BITS + bit < c,
                                param("redist_scale", l, ch) * x_at(n, l, ch, y, xx) > -param("redist_bias", l, ch))
            if shift_pack:  # from the word's last channel down: word = (word << 1) | bit
                term = tirx.Select(positive, tirx.const(1, u32), tirx.const(0, u32))
                word = term if word is None else (word << tirx.const(1, u32)) | term
            else:
                term = tirx.Select(positive, tirx.const(1 << bit, u32), tirx.const(0, u32))
                word = term if word is None else word | term
        return word

    packed = te.compute((n_, n_layers * words, h, w), pack, name=f"{prefix}pack")
    if spec.padded:
        def pad(n, p, y, xx):
            inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w + left)
            return tirx.if_then_else(inside, packed[n, p, y - top, xx - left], tirx.const(0, u32))

        source = te.compute((n_, n_layers * words, h + kh - 1, w + kw - 1), pad, name=f"{prefix}pad")
    else:
        source = packed

    if spec.tap_words:
        windows = transposed_windows(spec, source, n_layers, prefix)
        per_word = WORD_BITS // spec.group_channels

        def conv(n, l, o, y, xx):
            g = o // spec.group_channels  # group g: slot g % per_word of plane g // per_word
            return popcount_sum(windows[n, l * words + g // per_word, t, g % per_word, y, xx] ^ param("wwords", l, o, t)
                                for t in range(spec.tap_words))
    else:
        def conv(n, l, o, y, xx):
            def word(j, ru, rv):
                plane = l * words + tirx.min(spec.base_word(o) + j, words - 1)
                diff = source[n, plane, y + ru, xx + rv] ^ param("wwords", l, o, j, ru, rv)
                return diff & param("wmask", l, o, j) if spec.group > 1 else diff

            return popcount_sum(word(j, ru, rv) for j in range(nwg) for ru in range(kh) for rv in range(kw))

    mismatches = te.compute((n_, n_layers, c, h, w), conv, name=f"{prefix}conv")

    def row_class_of(y):
        """The table's row class of output row y: 1 the first row, 2 the last, 3 both, 0 inside."""
        return tirx.Select(y == 0, 1, 0) + tirx.Select(y == h - 1, 2, 0)

    bblock = border_block(spec, schedule)
    if bblock:
        def block_table(value, dtype, name):
            """Stage [layers, C, row class, kind, lane] of ``value(l, o, row class, column class)`` (``border_block``)."""
            def at(l, o, row_class, kind, lane):
                x = tirx.Select(kind == 0, lane, tirx.Select(kind == 2, w - bblock + lane, bblock + lane))
                return value(l, o, row_class, tirx.Select(x == 0, 1, 0) + tirx.Select(x == w - 1, 2, 0)).astype(dtype)

            return te.compute((n_layers, c, 4, 3, bblock), at, name=f"{prefix}{name}")

        def block_entry(table, l, o, y, xx):
            """``table`` at pixel (y, xx): its row class, its block's kind, its lane."""
            block = xx // bblock
            kind = tirx.Select(block == 0, 0, tirx.Select(block == w // bblock - 1, 2, 1))
            return table[l, o, row_class_of(y), kind, xx % bblock]

        if not neon_tables:  # the bound T itself (the tables take a shift instead: ``neon_index``)
            bounds = block_table(lambda l, o, rc, cc: param("table", l, o, rc, cc), "int32", "border")

    def border_bound(l, o, y, xx):
        """``T[o, row class, column class]``; a kernel without padding has every tap valid at every pixel, so
        its table holds one value per channel (no per-pixel selects)."""
        if not spec.padded:
            return param("table", l, o, 0, 0)
        if bblock:
            return block_entry(bounds, l, o, y, xx)
        row_class = row_class_of(y)
        first, last = xx == 0, xx == w - 1
        return tirx.Select(first, tirx.Select(last, param("table", l, o, row_class, 3), param("table", l, o, row_class, 1)),
                           tirx.Select(last, param("table", l, o, row_class, 2), param("table", l, o, row_class, 0)))

    def scaled_rprelu(l, o, acc):
        """Steps 4-5 of the contract: r of layer l's output channel o for the integer ``acc``."""
        # TVM's LLVM backend contracts a float32 multiply-add into an FMA (one rounding instead of the
        # contract's two); llvm.arithmetic.fence keeps the rounded product weight_scale·float32(acc) (the
        # contract's step 4) apart from the following add.
        s = tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence",
                                       param("weight_scale", l, o) * acc.astype("float32"))
        t = s + param("rprelu_bias_in", l, o)
        return tirx.Select(t > zero_f, t, param("rprelu_slope", l, o) * t) + param("rprelu_bias_out", l, o)

    if lut_entries:
        lut = te.compute((n_layers, c, lut_entries),
                         lambda l, o, i: scaled_rprelu(l, o, param("table", l, o, 0, 0) - 2 * i), name=f"{prefix}lut")

    def looked_up(l, o, sums, xx):
        """``lut[l, o, sums]``: lane i of a 16-lane vector takes entry sums[i] of the table's registers."""
        lane = xx % LUT_LANES

        def permute(base):
            return tirx.call_llvm_pure_intrin("float32", "llvm.x86.avx512.vpermi2var.ps.512", lut[l, o, base + lane],
                                              sums, lut[l, o, base + LUT_LANES + lane])

        return permute(0) if lut_entries == 32 else tirx.Select(sums < 32, permute(0), permute(32))

    def lut_index(n, l, o, y, xx):
        """i of acc = T_0 − 2i: acc = T − 2S = T_0 − 2(S + (T_0 − T)/2), T_0 − T even (an even Cg)."""
        index = mismatches[n, l, o, y, xx]
        if spec.padded:
            index = index + ((param("table", l, o, 0, 0) - border_bound(l, o, y, xx)) >> 1)
        return index

    if neon_tables:
        from .neon import float_of_bytes

        lut_bytes = te.compute((n_layers, c, 4, lut_entries), lambda l, o, j, i: (
            (tirx.reinterpret(u32, lut[l, o, i]) >> (8 * j).astype(u32)) & tirx.const(255, u32)).astype("uint8"),
            name=f"{prefix}lut_bytes")
        if bblock:  # the index shift (T_0 − T)/2 per block lane, added to the popcount sums as bytes
            shifts = block_table(lambda l, o, rc, cc: (param("table", l, o, 0, 0) - param("table", l, o, rc, cc)) >> 1,
                                 "uint8", "lut_shift")

        def neon_index(n, l, o, y, xx):
            if not bblock:
                return lut_index(n, l, o, y, xx).astype("uint8")
            return mismatches[n, l, o, y, xx].astype("uint8") + block_entry(shifts, l, o, y, xx)

        indices = te.compute((n_, n_layers, c, h, w), neon_index, name=f"{prefix}lut_index")
        looked = te.compute((n_, n_layers, c, h, w), lambda n, l, o, y, xx: float_of_bytes(
            [lut_bytes[l, o, j, indices[n, l, o, y, xx]] for j in range(4)]), name=f"{prefix}lookup")

    def layer_output(n, l, o, y, xx):
        if neon_tables:
            r = looked[n, l, o, y, xx]
        elif lut_entries:
            r = looked_up(l, o, lut_index(n, l, o, y, xx), xx)
        else:
            r = scaled_rprelu(l, o, border_bound(l, o, y, xx) - 2 * mismatches[n, l, o, y, xx])
        return x_at(n, l, o, y, xx) + r

    def epilogue(n, o, y, xx):
        if combine == "single":
            out = layer_output(n, 0, o, y, xx)
        elif combine == "concat":
            out = layer_output(n, o // c, o % c, y, xx)
        else:
            out = (layer_output(n, 0, o, y, xx) + layer_output(n, 1, o, y, xx)) / tirx.const(2.0, "float32")
        if residual is not None:
            out = out + residual[n, o, y, xx]
        if post:
            t = out + posts["post_bias_in"][o]
            out = tirx.Select(t > zero_f, t, posts["post_slope"][o] * t) + posts["post_bias_out"][o]
        return out

    y_out = te.compute((n_, c_out, h, w), epilogue, name=f"{prefix}epilogue")
    inputs += [layer[name] for layer in layers for name in BISRCONV_PARAMS]
    inputs += [norms[name] for name in NORM_NAMES] if fusion.norm else []
    inputs += ([residual] if own_residual else []) + [posts[name] for name in posts]
    return inputs, y_out


def _low_halves_mask(bits: int) -> int:
    """The uint32 whose low ``bits`` of every 2·``bits``-bit block are set (0x0000FFFF for 16, 0x0F0F0F0F for 4)."""
    return sum(((1 << bits) - 1) << block for block in range(0, WORD_BITS, 2 * bits))


def butterfly_halves(per_word: int) -> list[int]:
    """The block sizes h of the butterfly stages of a ``per_word`` x ``per_word`` transpose, in order: P/2, ..., 1
    (stage ``transpose<h>`` of ``transposed_windows``)."""
    return [per_word >> s for s in range(1, per_word.bit_length())]


def transposed_windows(spec: BiSRConvSpec, source, n_layers: int, prefix: str = ""):
    """The tap-packed windows of every group as TE stages ``transpose<h>`` (the last one returned): [N, planes,
    TW, P, H, W] uint32 with P = 32 / Cg, word t of the window of the group in slot j of plane q at
    [n, q, t, j, y, x] (Cg bits per tap, tap t·P + k at bits k·Cg; taps past the window 0).

    The P words of plane q at the taps t·P .. t·P + P - 1 (``source``, the padded planes, word k at tap k)
    form a P x P matrix of Cg-bit elements, element j of word k being slot j's bits at tap k; the windows are
    its transpose, made by log2(P) butterfly stages that swap blocks of h elements (h = P/2, ..., 1) between
    words k and k XOR h: ~3 operations per word and stage instead of 3 per element (for Cg = 4, 8 x 8 nibbles:
    3 stages)."""
    from tvm import te, tirx

    u32 = "uint32"
    kh, kw = spec.kernel
    cg, per_word, taps = spec.group_channels, WORD_BITS // spec.group_channels, kh * kw
    shape = (spec.batch, n_layers * spec.words, spec.tap_words, per_word, spec.height, spec.width)

    def tap_word(n, q, t, k, y, xx):
        tap = t * per_word + k
        clamped = tirx.min(tap, taps - 1)  # a tap past the window reads a valid address and contributes 0 (a
        # mask, not a Select: TVM would simplify the address under the Select's condition and lose the clamp,
        # which bounds the rows of the padded planes each row's windows read)
        return source[n, q, y + clamped // kw, xx + clamped % kw] * (tap < taps).astype(u32)

    def butterfly(prev, h: int):
        shift, low = tirx.const(h * cg, u32), tirx.const(_low_halves_mask(h * cg), u32)
        high = tirx.const(~_low_halves_mask(h * cg) & 0xFFFFFFFF, u32)

        def swap(n, q, t, k, y, xx):
            # the partner is word k + h or k - h, clamped into range so that TVM's region analysis sees
            # every read inside the buffer (k is unrolled: the Select and the clamps fold away)
            own = prev[n, q, t, k, y, xx]
            above, below = prev[n, q, t, tirx.min(k + h, per_word - 1), y, xx], prev[n, q, t, tirx.max(k - h, 0), y, xx]
            return tirx.Select(k & h == 0, (own & low) | ((above & low) << shift),
                               ((below >> shift) & low) | (own & high))

        return te.compute(shape, swap, name=f"{prefix}transpose{h}")

    words = te.compute(shape, tap_word, name=f"{prefix}taps")
    for h in butterfly_halves(per_word):
        words = butterfly(words, h)
    return words


def layer_norm_stages(x, gamma, beta, epsilon: float, prefix: str = ""):
    """LayerNorm of x [N, C, H, W] over C as TE stages ``x_sum``, ``x_mean``, ``x_var_sum``, ``x_rstd``,
    ``norm`` (each name after ``prefix``): the expressions of TVM's legalisation of ``relax.nn.layer_norm(axes=[1])`` (topi), so that a
    kernel computing it gives the bits of the standalone LayerNorm (the mean and the reciprocal standard
    deviation are stages of their own, computed once per pixel rather than once per channel and pixel: the
    same float32 values)."""
    from tvm import te, tirx

    n_, c, h, w = (int(d) for d in x.shape)
    k = te.reduce_axis((0, c), name="k")
    x_sum = te.compute((n_, h, w), lambda n, y, xx: te.sum(x[n, k, y, xx], axis=k), name=f"{prefix}x_sum")
    count = tirx.const(float(c), "float32")
    x_mean = te.compute((n_, h, w), lambda n, y, xx: x_sum[n, y, xx] / count, name=f"{prefix}x_mean")
    kv = te.reduce_axis((0, c), name="kv")
    x_var_sum = te.compute((n_, h, w), lambda n, y, xx: te.sum(
        (x[n, kv, y, xx] - x_mean[n, y, xx]) * (x[n, kv, y, xx] - x_mean[n, y, xx]), axis=kv), name=f"{prefix}x_var_sum")
    eps = tirx.const(epsilon, "float32")
    x_rstd = te.compute((n_, h, w), lambda n, y, xx: tirx.rsqrt(x_var_sum[n, y, xx] / count + eps), name=f"{prefix}x_rstd")
    return te.compute((n_, c, h, w), lambda n, ch, y, xx: (x[n, ch, y, xx] - x_mean[n, y, xx])
                      * x_rstd[n, y, xx] * gamma[ch] + beta[ch], name=f"{prefix}norm")


def _vectorize_row(sch, pack, lanes: int) -> None:
    """The pack block's innermost (word plane, x) loops: planes unrolled, x in vectors of ``lanes``."""
    *_, p, xx = sch.get_loops(pack)
    xo, xi = sch.split(xx, [None, lanes])
    sch.unroll(p)
    sch.vectorize(xi)


def loops_below(sch, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop`` (one of its loops)."""
    loops = sch.get_loops(block)
    return loops[[sch.get(other).same_as(sch.get(loop)) for other in loops].index(True) + 1:]


def _layer_norm_at(sch, rows, lanes: int, prefix: str = "") -> None:
    """``layer_norm_stages`` computed row by row at ``rows`` (one row of C channels, in L1), before the pack and
    epilogue that read it: the statistics' channel sums outside, the row's x in vectors of ``lanes``."""
    for name in ("norm", "x_rstd", "x_var_sum", "x_mean", "x_sum"):  # consumers first
        sch.compute_at(sch.get_sblock(prefix + name), rows)
    for name in ("norm", "x_rstd", "x_mean"):
        *_, xx = sch.get_loops(sch.get_sblock(prefix + name))
        sch.vectorize(sch.split(xx, [None, lanes])[1])
    for name in ("x_var_sum", "x_sum"):
        block = sch.get_sblock(prefix + name)
        *_, xx, k = sch.get_loops(block)
        xo, xi = sch.split(xx, [None, lanes])
        sch.reorder(xo, k, xi)
        sch.vectorize(xi)
        init = sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(init)[-1])


def schedule_stages(sch, spec: BiSRConvSpec, fusion: Fusion, schedule: Schedule, prefix: str = "",
                    band=None) -> None:
    """Schedule the blocks of one ``bisrconv_compute(spec, fusion, prefix=prefix, schedule=schedule)``:
    vectorised along W with ``schedule.lanes`` uint32 lanes, the popcount sums inlined into the epilogue (in
    registers, taps unrolled; a ``mean`` pair has both layers'), one iteration of the innermost loop computing
    ``schedule.pixel_block`` vectors of pixels (register blocking; lowered to the largest divisor of the row's
    vectors not above it); a 1x1 packs (and normalises) each row right before its convolution. NEON's epilogue
    tables: the indices and the lookup of each 16 pixels right before their epilogue (``neon.py``).

    ``band`` None: the kernel alone — rows in parallel; a KxK runs in parallel bands of ``schedule.row_band``
    rows, each packing and padding its rows plus the window's neighbours. ``band``: a loop the epilogue is
    already computed at (a band of a larger kernel, ``feedforward.py``; the caller parallelises it): the rows
    run under it, and a KxK packs and pads the band's rows there."""
    lut_entries = epilogue_lut_entries(spec, schedule)
    neon_tables = bool(lut_entries) and schedule.epilogue_table == "tbl"
    lanes, pixel_block = vector_lanes(spec.width, schedule.lanes), schedule.pixel_block
    block = lambda name: sch.get_sblock(prefix + name)  # noqa: E731
    pack, epi, conv = block("pack"), block("epilogue"), block("conv")
    if lut_entries:  # the table: once per call, at the root
        *_, k = sch.get_loops(block("lut"))
        sch.vectorize(sch.split(k, [None, lanes])[1])
    if neon_tables:  # its byte planes, likewise
        *_, k = sch.get_loops(block("lut_bytes"))
        sch.vectorize(sch.split(k, [None, LUT_LANES])[1])
    if border_block(spec, schedule):  # the border table: once per call, at the root
        sch.vectorize(sch.get_loops(block("lut_shift" if neon_tables else "border"))[-1])
    xb = max(d for d in range(1, pixel_block + 1) if spec.width % (d * lanes) == 0)
    loops = sch.get_loops(epi) if band is None else loops_below(sch, epi, band)
    if len(loops) == 4:  # (n, o, y, x)
        n, o, y, xx = loops
        xo, xm, xi = sch.split(xx, [None, xb, lanes])
        sch.reorder(n, y, o, xo, xm, xi)
        rows = sch.fuse(n, y)
    else:  # (o, y, x): the batch is the band's
        o, rows, xx = loops
        xo, xm, xi = sch.split(xx, [None, xb, lanes])
        sch.reorder(rows, o, xo, xm, xi)
    sch.vectorize(xi)
    if xb > 1:
        sch.unroll(xm)
    if fusion.combine == "concat":  # the two layers' channels as two copies of the channel loop, each reading
        # its own layer's parameters (no per-pixel select between the layers' buffers: their loads stay hoisted)
        sch.unroll(sch.split(o, [fusion.layers, None])[0])
    if neon_tables:  # each 16 pixels' table indices and lookups just before their epilogue (consumers first)
        for name in ("lookup", "lut_index"):
            sch.compute_at(block(name), xo)
            *above, x16 = loops_below(sch, block(name), xo)
            for loop in above:  # the layers of a mean pair
                sch.unroll(loop)
            if name == "lut_index":
                sch.vectorize(x16)
    sch.compute_inline(conv)
    if band is not None:
        outer = band
    elif spec.padded:  # KxK: bands of row_band output rows; each packs and pads its rows (+ the window's
        # neighbours, recomputed by the next band) just before its convolutions, so X's rows are still in
        # cache for the residual
        outer, rows = sch.split(rows, [None, schedule.row_band])
    else:
        outer = rows
    if spec.tap_words:  # each row's windows just before its convolution (they stay in cache), every butterfly
        # stage per vector of pixels under the last one's loop (its P words in registers)
        stages = [block(f"transpose{h}") for h in butterfly_halves(WORD_BITS // spec.group_channels)]
        sch.compute_inline(block("taps"))
        last = stages[-1]
        sch.compute_at(last, rows, preserve_unit_loops=True)
        below = loops_below(sch, last, rows)  # (n, plane, t, k, y, x)
        t, k, xx = below[-4], below[-3], below[-1]
        xo, xi = sch.split(xx, [None, lanes])
        sch.reorder(xo, t, k, xi)
        sch.unroll(t)
        sch.unroll(k)
        sch.vectorize(xi)
        for stage in reversed(stages[:-1]):
            sch.compute_at(stage, xo, preserve_unit_loops=True)
            below = loops_below(sch, stage, xo)
            sch.unroll(below[-4])
            sch.unroll(below[-3])
            sch.vectorize(below[-1])
    if spec.padded:
        for name in ("pad", "pack"):
            stage = block(name)
            sch.compute_at(stage, outer)
            below = loops_below(sch, stage, outer)
            if len(below) == 3:  # (plane, row, x) -> rows outside; a single plane has no loop
                sch.reorder(below[1], below[0])
        *_, xx = sch.get_loops(pack)
        sch.vectorize(sch.split(xx, [None, lanes])[1])
        if spec.words * fusion.layers > 1:
            sch.unroll(sch.get_loops(pack)[-3])
        # the padded row as its left border, the packed row (one vector copy, like winograd's pad) and its
        # right border
        *_, xx = sch.get_loops(block("pad"))
        left, right = spec.pads[1], spec.pads[3]
        if left or right:  # loop_partition's last part is the rest of the loop
            xx = sch.loop_partition(xx, [left] * bool(left) + ([spec.width, None] if right else [None]))[int(bool(left))]
        sch.vectorize(xx)
    else:  # 1x1: pack each row just before its convolution, while X's row is still in cache
        sch.compute_at(pack, rows)
        _vectorize_row(sch, pack, lanes)
    if band is None:
        sch.parallel(outer)
    if fusion.norm:  # 1x1 only
        _layer_norm_at(sch, rows, lanes, prefix)


def bisrconv_primfunc(spec: BiSRConvSpec, schedule: Schedule, fusion: Fusion = Fusion()):
    """The scheduled ``PrimFunc`` (params: the inputs of ``bisrconv_compute(spec, fusion)``, then Y) for a
    target's ``schedule``: vectorised along W with ``schedule.lanes`` uint32 lanes (16 = one zmm, 8 = one ymm,
    4 = one NEON q register), rows in parallel (``schedule_stages``)."""
    from tvm import s_tir, te

    from . import neon

    if fusion.norm and spec.padded:
        raise BisrError(f"BiSRConv kernel: a LayerNorm fuses into 1x1 kernels only, not {list(spec.kernel)}")
    inputs, output = bisrconv_compute(spec, fusion, schedule=schedule)
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", "bisrconv")
    sch = s_tir.Schedule(func)
    schedule_stages(sch, spec, fusion, schedule)
    return neon.vectorize(sch.mod["main"], schedule)
