"""Sign-bit packing of binary convolution weights, the layout of the BiSRConv custom op (docs/custom-ops.md).

A real-valued weight W [O, Cg, KH, KW] becomes ``bits`` uint8 [O, ceil(Cg·KH·KW / 8)]:
- bit value 1 means +1 (W > 0), 0 means -1 (W <= 0: Sign(0) = -1, the paper's Eq. 3);
- row o holds W[o] flattened row-major over (i, u, v): element j = (i·KH + u)·KW + v;
- LSB-first: element j is bit ``j % 8`` of byte ``j // 8``; padding bits past Cg·KH·KW are 0.

The per-output-channel scale mean |W| (Eq. 9) is ``bisr_deploy.model.HardBinaryConv.weight_scale``.
Works on numpy arrays and torch tensors; results are numpy.
"""

from __future__ import annotations

import numpy as np


def _as_numpy(weight) -> np.ndarray:
    if hasattr(weight, "detach"):
        weight = weight.detach().cpu().numpy()
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"a convolution weight must be [O, Cg, KH, KW], got shape {weight.shape}")
    return weight


def packed_row_bytes(cg: int, kh: int, kw: int) -> int:
    """Bytes per output channel: ceil(Cg·KH·KW / 8)."""
    return (cg * kh * kw + 7) // 8


def pack_sign_bits(weight) -> np.ndarray:
    """W [O, Cg, KH, KW] (float) -> uint8 [O, ceil(Cg·KH·KW/8)], bit 1 where W > 0, LSB-first, row-major."""
    weight = _as_numpy(weight)
    flat = (weight > 0).reshape(weight.shape[0], -1)
    return np.packbits(flat, axis=1, bitorder="little")


def unpack_sign_bits(bits: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of ``pack_sign_bits``: uint8 [O, nbytes] -> float32 ±1 [O, Cg, KH, KW]."""
    o, cg, kh, kw = shape
    bits = np.asarray(bits)
    if bits.dtype != np.uint8 or bits.shape != (o, packed_row_bytes(cg, kh, kw)):
        raise ValueError(f"packed bits for {tuple(shape)} must be uint8 [{o}, {packed_row_bytes(cg, kh, kw)}], "
                         f"got {bits.dtype} {bits.shape}")
    flat = np.unpackbits(bits, axis=1, count=cg * kh * kw, bitorder="little")
    return np.where(flat.reshape(o, cg, kh, kw) == 1, np.float32(1), np.float32(-1))

