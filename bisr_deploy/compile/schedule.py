"""Schedule parameters a target gives every kernel (bitserial, float conv, upsampling, TVM's fused ops)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """``lanes``: 32-bit lanes of one vector register (16 AVX-512, 8 AVX2, 4 NEON), the vector width of every
    kernel; ``row_band``: output rows per parallel task of a KxK bitserial kernel (its packed input rows stay
    in cache; 25 % of the rows are packed twice at 8) and of the float convolution (its padded input rows);
    ``conv_tile``: the float convolution's register tile of accumulators, (output channels, vectors along the
    row) at most (``floatconv.tile_for``); ``pixel_block``: vectors of pixels one iteration of a bitserial
    kernel's convolution + epilogue computes (register blocking: the per-channel weights and parameters and
    the border compares serve the whole block); ``l1d_bytes``, ``l2_bytes``: the data caches of one core,
    which size the bands of the FeedForward kernel (``feedforward.band_rows``). The defaults are a generic
    core's (32 KiB, 1 MiB); a target sets its own (``targets.py``). ``feedforward``: run each ConvBlock
    FeedForward as one band-fused kernel (``feedforward.py``) rather than its five kernels. ``pack``: how the
    bitserial pack builds its words (``bitserial.bisrconv_compute``): ``"or"`` (or-ing ``bit << c``),
    ``"shift"`` (``word = (word << 1) | bit`` from the last channel down) or ``"sli"`` (the shift pack as
    NEON's ``sli``, ``neon.py``). ``epilogue_table``: how a
    bitserial kernel whose outputs sum at most 63 binary products looks steps 4-5 of the contract up in a
    per-channel table instead of computing them (``bitserial.epilogue_lut_entries``): ``"vpermi2ps"`` (AVX-512:
    16 float32 lanes pick their entries from tables in registers), ``"tbl"`` (NEON: the tables' four byte planes
    looked up by ``tbl`` for 16 pixels at once, ``neon.py``) or ``""`` (computed). ``border_blocks``: a
    padded bitserial kernel loads its border corrections per block of pixels (``bitserial.border_block``)
    instead of selecting them per pixel."""

    lanes: int
    row_band: int = 8
    conv_tile: tuple[int, int] = (4, 2)
    pixel_block: int = 1
    l1d_bytes: int = 32 * 1024
    l2_bytes: int = 1024 * 1024
    feedforward: bool = True
    pack: str = "or"
    epilogue_table: str = ""
    border_blocks: bool = False


def schedule_for(features) -> Schedule:
    """The ``Schedule`` of code that may use the CPU ``features`` (flags as Linux spells them): NEON (``asimd``),
    AVX-512 (``avx512f``) or AVX2. ``conv_tile``: the fastest tile per vector instruction set, measured on
    AVX-512 and estimated (llvm-mca, Cortex-A76) on NEON (docs/compiler.md, "The float convolutions").
    ``pixel_block``: 4 vectors on NEON, the block that `bisr-deploy estimate --core cortex-a76` found fastest
    (docs/arm.md), and on AVX-512 (64 pixels per iteration share an output channel's weights and epilogue
    table registers); AVX2 keeps one vector (as its kernels were measured). ``feedforward``: off on NEON, where the
    Cortex-A76 estimate puts the 28 x 256 x 256 FeedForward kernel at 95 ms (8-row bands) to 187 ms (1-row
    bands, what a 512 KiB L2 allows) against 55 ms for its five kernels: the compute-bound NEON kernels pay
    for the FusionUp rows each band recomputes more than they save in memory traffic (docs/compiler.md,
    ``tools/bench_feedforward.py --core cortex-a76``); on
    x86 the fused kernel measured 2.2x faster than the five. ``pack``: ``"sli"`` on NEON, where the Cortex-A76
    estimate puts the shift pack's loops 13 % below the or-pack's and ``sli`` lower still (docs/arm.md); x86
    or-packs (the shift pack measured 3-5 % slower end to end).
    ``epilogue_table``: AVX-512's ``vpermi2ps`` and NEON's ``tbl`` (docs/compiler.md, docs/arm.md); AVX2 computes.
    ``border_blocks``: on NEON (by the Cortex-A76 estimate, docs/arm.md)."""
    if "asimd" in features:
        return Schedule(lanes=4, conv_tile=(4, 4), pixel_block=4, feedforward=False, pack="sli",
                        epilogue_table="tbl", border_blocks=True)
    if "avx512f" in features:
        return Schedule(lanes=16, conv_tile=(7, 2), pixel_block=4, epilogue_table="vpermi2ps")
    return Schedule(lanes=8, conv_tile=(4, 2))


def vector_lanes(width: int, lanes: int) -> int:
    """Largest power-of-two lane count <= ``lanes`` that divides the row width."""
    while lanes > 1 and width % lanes:
        lanes //= 2
    return lanes
