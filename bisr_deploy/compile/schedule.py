"""Schedule parameters a target gives every kernel (bitserial, float conv, upsampling, TVM's fused ops)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """``lanes``: 32-bit lanes of one vector register (16 AVX-512, 8 AVX2, 4 NEON), the vector width of every
    kernel; ``row_band``: output rows per parallel task of a KxK bitserial kernel (its packed input rows stay
    in cache; 25 % of the rows are packed twice at 8); ``pixel_block``: vectors of pixels one iteration of a
    bitserial kernel's convolution + epilogue computes (register blocking: the per-channel weights and
    parameters and the border compares serve the whole block)."""

    lanes: int
    row_band: int = 8
    pixel_block: int = 1


def vector_lanes(width: int, lanes: int) -> int:
    """Largest power-of-two lane count <= ``lanes`` that divides the row width."""
    while lanes > 1 and width % lanes:
        lanes //= 2
    return lanes
