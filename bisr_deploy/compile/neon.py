"""The bitserial kernels' NEON-only vector code: table lookups, byte-accumulated popcounts, packing by ``sli``.

TE writes every stage per lane and TVM vectorises it. Three stages of the NEON kernels need instructions
that no per-lane expression asks for, so ``vectorize(func, schedule)`` replaces their vectorised pixel loops,
after scheduling, by vector code built here from the same TIR. Each replacement computes exactly the
values of the stage's TE expression, which stays the definition (``tests/test_arm.py`` checks the NEON
kernels against x86's, bit for bit):

1. ``lookup`` (``Schedule.epilogue_table == "tbl"``, ``bitserial.epilogue_lut_entries``). A kernel whose
   outputs sum at most 63 binary products has, per layer and output channel, a table of the contract's r =
   RPReLU(weight_scale·acc) for every acc = T_0 − 2i (stage ``lut``, the per-pixel path's float32
   expression, once per call), split into its four byte planes ``lut_bytes[l, o, j, i]`` (byte j of entry i;
   E = 16, 32, 48 or 64 entries). Per pixel the kernel needs only i (stage ``lut_index``, uint8) and the
   float32 whose bytes are ``lut_bytes[l, o, 0..3, i]`` (stage ``lookup``, which TE can write only as a
   gather, ``float_of_bytes``). Per 16 pixels: one uint8x16 load of the indices; per plane one ``tbl`` over
   its E / 16 table registers (an index past the table would give 0; none is: i <= K < E); the four planes
   interleaved byte by byte (``zip1``/``zip2``, 8 per 16 pixels) into four float32 vectors. That replaces the
   conversion, scale, bias, compare, multiply, select and bias of the per-pixel path (~40 vector
   instructions per 16 outputs) by 12.
2. ``lut_index``: Σ popcount(word XOR weight) over the window's words (+ the border shift). LLVM widens every
   word's popcount to 32 bits (``udot`` or ``uaddlp``) and narrows the sums again; here the ``cnt`` bytes of
   all words are added as bytes (a sum is at most K < 64), as daBNN and LCE do, and each pixel's four bytes
   are summed by three ``addp`` (pairwise, which keeps the pixels in order): per 16 pixels and word 4 EOR +
   4 CNT (+ 4 byte adds per further word), then 3 ADDP, instead of 4 EOR + 4 CNT + 4 UDOT + 4 MOVI + 1 TBL.
3. ``pack`` (``Schedule.pack == "sli"``): the shift pack ``word = (word << 1) | bit`` (``bisrconv_compute``)
   as ``sli word', mask, #1`` per channel — the compare's all-ones mask keeps its low bit under the word
   shifted left: one instruction per channel where LLVM spends two.

Mechanism: the loop over a stage's pixels keeps its variable, with extent 1, so that the block's bindings
stay valid (its first pixel), and the block stores a vector of all its pixels; the loop's pixels start at a
multiple of their count (the schedules split the row so), which lets a ``x % 16`` index become a ramp too.
A block of another shape than expected keeps TVM's vectorisation.
"""

from __future__ import annotations

from .tir_walk import children

PIXELS = 16  # one uint8x16 vector of table indices: the pixels one lookup serves
ALL_ONES = 0xFFFFFFFF


class _Unsupported(Exception):
    """An expression the vectoriser below does not handle: the loop keeps TVM's vectorisation."""


def float_of_bytes(planes):
    """The float32 whose little-endian bytes are the four uint8 expressions ``planes`` (byte 0 first)."""
    from tvm import tirx

    word = None
    for j, byte in enumerate(planes):
        term = byte.astype("uint32") << tirx.const(8 * j, "uint32") if j else byte.astype("uint32")
        word = term if word is None else word | term
    return tirx.reinterpret("float32", word)


def vectorize(func, schedule):
    """``func`` (a scheduled bitserial PrimFunc) with the pixel loops of its ``lookup``, ``lut_index`` and (with
    ``schedule.pack == "sli"``) ``pack`` stages replaced by the vector code above; unchanged without them."""
    from tvm import s_tir, tirx

    builders = {"lookup": _vector_lookup, "lut_index": _vector_index}
    if schedule.pack == "sli":
        builders["pack"] = _vector_pack

    def builder_of(loop):
        if isinstance(loop.body, s_tir.SBlockRealize):
            name = loop.body.block.name_hint
            return next((build for stage, build in builders.items() if name.endswith(stage)), None)
        return None

    def rewrite(node):
        if isinstance(node, tirx.For):
            build = builder_of(node)
            if build is not None:
                try:
                    realize = build(node, node.body)
                except _Unsupported:
                    return node
                return tirx.For(node.loop_var, node.min, 1, tirx.ForKind.SERIAL, realize, node.thread_binding,
                                node.annotations)
            body = rewrite(node.body)
            return node if body.same_as(node.body) else tirx.For(
                node.loop_var, node.min, node.extent, node.kind, body, node.thread_binding, node.annotations)
        if isinstance(node, tirx.SeqStmt):
            seq = [rewrite(stmt) for stmt in node.seq]
            return node if all(a.same_as(b) for a, b in zip(seq, node.seq)) else tirx.SeqStmt(seq)
        if isinstance(node, s_tir.SBlockRealize):
            body = rewrite(node.block.body)
            return node if body.same_as(node.block.body) else _with_body(node, body)
        return node

    body = rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _with_body(realize, body, reads=None, writes=None):
    """``realize`` with its block's body (and read / write regions) replaced."""
    from tvm import s_tir

    block = realize.block
    new = s_tir.SBlock(block.iter_vars, block.reads if reads is None else reads,
                       block.writes if writes is None else writes, block.name_hint, body, block.init,
                       block.alloc_buffers, block.match_buffers, block.annotations)
    return s_tir.SBlockRealize(realize.iter_values, realize.predicate, new)


def _mentions(expr, var) -> bool:
    return expr.same_as(var) or any(_mentions(child, var) for child in children(expr))


def _ramp(index, x, lanes: int, offset: int = 0):
    """The last index ``index`` of a load of the block's first pixel x, as a Ramp over ``lanes`` pixels from
    x + ``offset``: ``index`` is x, x + c or c + x (c not depending on x), or x % lanes (the pixels start at a
    multiple of ``lanes``)."""
    from tvm import tirx

    if not (index.same_as(x) or (isinstance(index, tirx.Add) and (
            (index.a.same_as(x) and not _mentions(index.b, x)) or (index.b.same_as(x) and not _mentions(index.a, x))))
            or (isinstance(index, tirx.FloorMod) and index.a.same_as(x) and isinstance(index.b, tirx.IntImm)
                and int(index.b.value) == lanes)):
        raise _Unsupported(f"index {index}")
    return tirx.Ramp(index + offset if offset else index, 1, lanes)


def _vector(expr, x, lanes: int, offset: int = 0):
    """``expr`` (an expression of one pixel x) over ``lanes`` pixels from x + ``offset``: loads along the row
    become vector loads, what does not depend on x a broadcast, and arithmetic, compares, selects and casts
    follow their operands."""
    from tvm import tirx
    from tvm.ir.expr import TensorLoad

    if not _mentions(expr, x):
        return tirx.Broadcast(expr, lanes)
    if isinstance(expr, TensorLoad):
        *outer, last = expr.indices
        if any(_mentions(index, x) for index in outer):
            raise _Unsupported(f"load {expr}")
        return tirx.BufferLoad(expr.source, [*outer, _ramp(last, x, lanes, offset)])
    binary = (tirx.Add, tirx.Sub, tirx.Mul, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And, tirx.Or,
              tirx.BitwiseAnd, tirx.BitwiseOr, tirx.BitwiseXor)
    if isinstance(expr, binary):
        return type(expr)(_vector(expr.a, x, lanes, offset), _vector(expr.b, x, lanes, offset))
    if isinstance(expr, tirx.Select):
        return tirx.Select(*(_vector(e, x, lanes, offset) for e in (expr.condition, expr.true_value, expr.false_value)))
    if isinstance(expr, tirx.Cast):
        return tirx.Cast(f"{expr.ty.dtype}x{lanes}", _vector(expr.value, x, lanes, offset))
    raise _Unsupported(type(expr).__name__)


def _first_pixel_and_lanes(loop, realize):
    """(x, lanes): the block's pixel variable (the last index of its store) and the loop's pixels."""
    from tvm import tirx

    store = realize.block.body
    if not isinstance(store, tirx.BufferStore):
        raise _Unsupported("not one store")
    return store.indices[-1], int(loop.extent)


def _stored(realize, value, lanes: int):
    """The block's store, of ``value`` at its ``lanes`` pixels."""
    from tvm import tirx

    store = realize.block.body
    return tirx.BufferStore(store.buffer, value, [*store.indices[:-1], tirx.Ramp(store.indices[-1], 1, lanes)])


# 1. lookup -------------------------------------------------------------------------------------------------

def _zip(a, b, half: int):
    """``zip1`` (half 0) or ``zip2`` (half 1) of two equal vectors: their elements of one half, alternated."""
    from tvm import tirx

    n = a.ty.dtype.lanes
    start = half * n // 2
    return tirx.Shuffle([a, b], [k for i in range(start, start + n // 2) for k in (i, n + i)])


def _interleave(planes):
    """The four uint8x16 planes (byte j of 16 pixels each) as 16 float32: bytes 0 and 1, 2 and 3 zipped into
    16-bit halves, the halves zipped into 32-bit words; four 128-bit vectors of 4 pixels, concatenated (128-bit
    shuffles throughout: LLVM 19, which ``estimate`` runs, fails on one 64-byte shuffle)."""
    from tvm import tirx

    low = [tirx.reinterpret("uint16x8", _zip(planes[0], planes[1], half)) for half in (0, 1)]
    high = [tirx.reinterpret("uint16x8", _zip(planes[2], planes[3], half)) for half in (0, 1)]
    quarters = [tirx.reinterpret("float32x4", _zip(low[k], high[k], half)) for k in (0, 1) for half in (0, 1)]
    return tirx.Shuffle(quarters, list(range(PIXELS)))


def _vector_lookup(loop, realize):
    """The ``lookup`` block of 16 pixels as ``tbl`` lookups of their indices in the four byte planes, zipped."""
    import tvm
    from tvm import tirx
    from tvm.ir.expr import TensorLoad

    x, lanes = _first_pixel_and_lanes(loop, realize)
    loads = []

    def collect(expr):
        if isinstance(expr, TensorLoad):
            loads.append(expr)
        for child in children(expr):
            collect(child)

    collect(realize.block.body.value)
    tables = [load for load in loads if len(load.indices) == 4]  # lut_bytes[l, o, j, index], j = 0..3
    index = next((load for load in loads if len(load.indices) == 5), None)  # lut_index[n, l, o, y, x]
    if lanes != PIXELS or len(tables) != 4 or index is None:
        raise _Unsupported("lookup")
    lut_bytes, (layer, channel) = tables[0].source, tables[0].indices[:2]
    entries = int(lut_bytes.ty.shape[3])
    indices = _vector(index, x, PIXELS)
    planes = []
    for j in range(4):
        registers = [tirx.BufferLoad(lut_bytes, [layer, channel, j, tirx.Ramp(PIXELS * r, 1, PIXELS)])
                     for r in range(entries // PIXELS)]
        planes.append(tirx.call_llvm_pure_intrin(f"uint8x{PIXELS}", f"llvm.aarch64.neon.tbl{len(registers)}",
                                                 *registers, indices))
    block = realize.block

    def region(source, start, extents):
        ranges = [tvm.ir.Range.from_min_extent(i, e) for i, e in zip(start, extents)]
        return tvm.ir.expr.TensorRegion(source, ranges, block.writes[0].ty)

    pixels = lambda at: [1] * (len(at) - 1) + [PIXELS]  # noqa: E731
    store = block.body
    reads = [region(lut_bytes, [layer, channel, 0, 0], [1, 1, 4, entries]),
             region(index.source, index.indices, pixels(index.indices))]
    writes = [region(block.writes[0].source, store.indices, pixels(store.indices))]
    return _with_body(realize, _stored(realize, _interleave(planes), PIXELS), reads, writes)


# 2. lut_index ----------------------------------------------------------------------------------------------

def _popcount_terms(expr):
    """The XOR operands of ``Σ Cast(int32, popcount(a ^ b))``."""
    from tvm import tirx
    from tvm.ir.expr import Call

    if isinstance(expr, tirx.Add):
        return _popcount_terms(expr.a) + _popcount_terms(expr.b)
    if isinstance(expr, tirx.Cast) and isinstance(expr.value, Call) and expr.value.op.name == "tirx.popcount" \
            and isinstance(expr.value.args[0], tirx.BitwiseXor):
        xor = expr.value.args[0]
        return [(xor.a, xor.b)]
    raise _Unsupported("not a sum of popcounts")


def _vector_index(loop, realize):
    """The ``lut_index`` block of 16 pixels: ``cnt`` bytes of every word added as bytes, then ``addp`` x 3."""
    from tvm import tirx

    x, lanes = _first_pixel_and_lanes(loop, realize)
    value, shift = realize.block.body.value, None
    if isinstance(value, tirx.Add):  # + the border shift
        value, shift = value.a, value.b
    if lanes != PIXELS or not (isinstance(value, tirx.Cast) and str(value.ty.dtype) == "uint8"):
        raise _Unsupported("lut_index")
    quarters = [None] * 4  # the byte counts of pixels 4k .. 4k + 3, one 128-bit vector each
    for a, b in _popcount_terms(value.value):
        for k in range(4):
            diff = _vector(tirx.BitwiseXor(a, b), x, 4, 4 * k)
            count = tirx.popcount(tirx.reinterpret(f"uint8x{PIXELS}", diff))
            quarters[k] = count if quarters[k] is None else quarters[k] + count

    def pairwise(a, b):
        return tirx.call_llvm_pure_intrin(f"uint8x{PIXELS}", "llvm.aarch64.neon.addp", a, b)

    index = pairwise(pairwise(quarters[0], quarters[1]), pairwise(quarters[2], quarters[3]))
    if shift is not None:
        index = index + _vector(shift, x, PIXELS)
    return _with_body(realize, _stored(realize, index, PIXELS))


# 3. pack ---------------------------------------------------------------------------------------------------

def _sli_word(expr, x, lanes: int):
    """The shift pack's word ``(word << 1) | Select(bit, 1, 0)`` (or ``word << 1`` for a channel past C, or the
    first channel's term) over ``lanes`` pixels, every channel inserted by ``sli``."""
    from tvm import tirx

    def constant(e, value) -> bool:
        return isinstance(e, tirx.IntImm) and int(e.value) == value

    if isinstance(expr, tirx.BitwiseOr) and isinstance(expr.a, tirx.LShift) and constant(expr.a.b, 1) and \
            isinstance(expr.b, tirx.Select) and constant(expr.b.true_value, 1) and constant(expr.b.false_value, 0):
        word = _sli_word(expr.a.a, x, lanes)
        u32 = f"uint32x{lanes}"
        mask = tirx.Select(_vector(expr.b.condition, x, lanes), tirx.Broadcast(tirx.const(ALL_ONES, "uint32"), lanes),
                           tirx.Broadcast(tirx.const(0, "uint32"), lanes))
        return tirx.call_llvm_pure_intrin(u32, "llvm.aarch64.neon.vsli", mask, word, tirx.const(1, "int32"))
    if isinstance(expr, tirx.LShift) and isinstance(expr.b, tirx.IntImm):
        return _sli_word(expr.a, x, lanes) << tirx.Broadcast(expr.b, lanes)
    return _vector(expr, x, lanes)


def _vector_pack(loop, realize):
    """The ``pack`` block of one vector of pixels, its channels inserted by ``sli`` (a row of odd width packs
    pixel by pixel: TVM's scalar code)."""
    x, lanes = _first_pixel_and_lanes(loop, realize)
    if lanes not in (2, 4):
        raise _Unsupported(f"{lanes} lanes")
    return _with_body(realize, _stored(realize, _sli_word(realize.block.body.value, x, lanes), lanes))
