"""ggml's 32-element blocks: codes and parameters to bytes and back, without any rounding.

Every block holds 32 consecutive elements of a row (along ``ne[0]``, the last numpy axis) and an fp16 scale
``d`` (little-endian), plus:

=======  =====  =====================================================================  ==========================
type     bytes  after ``d``                                                            value
=======  =====  =====================================================================  ==========================
Q8_0     34     32 int8 codes ``c``                                                    ``d * c``
Q4_0     18     16 bytes: byte j = ``(c[j] + 8) | (c[j+16] + 8) << 4``                 ``d * c``, c in [-8, 7]
Q5_0     22     u32 ``qh`` (bit i: bit 4 of ``c[i] + 16``), then the low nibbles as Q4_0  ``d * c``, c in [-16, 15]
Q4_1     20     fp16 ``m``, then 16 bytes: byte j = ``u[j] | u[j+16] << 4``            ``d * u + m``, u in [0, 15]
=======  =====  =====================================================================  ==========================

(``y = d * c`` is computed in float32 from the fp16 ``d``; Q4_1 adds ``m`` after the product.)  Codes here are
the signed ``c`` (or the unsigned ``u`` for Q4_1), one int per element, in the tensor's own shape.
"""
from __future__ import annotations

import numpy as np

from .container import Q4_0, Q4_1, Q5_0, Q8_0, TENSOR_TYPES

BLOCK = 32
#: code range of each block type: (lowest, highest, signed)
CODE_RANGE = {Q8_0: (-128, 127, True), Q4_0: (-8, 7, True), Q5_0: (-16, 15, True), Q4_1: (0, 15, False)}


def _nibbles(u: np.ndarray) -> np.ndarray:
    """``(n, 32)`` values in [0, 16) -> ``(n, 16)`` bytes: element j low, element j + 16 high."""
    return (u[:, :16] | (u[:, 16:] << 4)).astype(np.uint8)


def _unnibble(qs: np.ndarray) -> np.ndarray:
    """``(n, 16)`` bytes -> ``(n, 32)`` values in [0, 16)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def encode(ggml_type: int, codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray | None = None) -> np.ndarray:
    """Block bytes (uint8, ``n_blocks * bytes_per_block``) of ``codes`` (any shape, last axis a multiple of 32)
    with one fp16 ``scale`` (and for Q4_1 ``minimum``) per block, given as arrays of ``codes.shape[:-1] +
    (codes.shape[-1] // 32,)`` float16-representable values.  Codes must lie in :data:`CODE_RANGE`."""
    lo, hi, _ = CODE_RANGE[ggml_type]
    c = np.asarray(codes).reshape(-1, BLOCK).astype(np.int16)
    n = c.shape[0]
    if n and (c.min() < lo or c.max() > hi):
        raise ValueError(f"codes outside [{lo}, {hi}] for {TENSOR_TYPES[ggml_type][0]}")
    d = np.asarray(scale, np.float16).reshape(n, 1).view(np.uint8)
    if ggml_type == Q8_0:
        body = [d, c.astype(np.int8).view(np.uint8)]
    elif ggml_type == Q4_0:
        body = [d, _nibbles((c + 8).astype(np.uint8))]
    elif ggml_type == Q5_0:
        u = (c + 16).astype(np.uint32)
        qh = ((u >> 4) << np.arange(BLOCK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32).astype("<u4")
        body = [d, qh.reshape(n, 1).view(np.uint8), _nibbles((u & 0x0F).astype(np.uint8))]
    elif ggml_type == Q4_1:
        if minimum is None:
            raise ValueError("Q4_1 blocks need a minimum")
        m = np.asarray(minimum, np.float16).reshape(n, 1).view(np.uint8)
        body = [d, m, _nibbles(c.astype(np.uint8))]
    else:
        raise ValueError(f"not a block type qcore writes: {TENSOR_TYPES.get(ggml_type, (ggml_type,))[0]}")
    return np.concatenate(body, axis=1).reshape(-1)


def decode(ggml_type: int, raw: np.ndarray, shape: tuple[int, ...]):
    """``(codes, scale, minimum)`` of the block bytes ``raw`` of a tensor of numpy ``shape``: codes int8 (uint8
    for Q4_1) of ``shape``, ``scale`` (and ``minimum`` for Q4_1, else None) float16 of ``shape[:-1] +
    (shape[-1] // 32,)``."""
    size = TENSOR_TYPES[ggml_type][2]
    b = np.asarray(raw, np.uint8).reshape(-1, size)
    n = b.shape[0]
    pshape = tuple(shape[:-1]) + (shape[-1] // BLOCK,)
    d = np.ascontiguousarray(b[:, :2]).view("<f2").astype(np.float16).reshape(pshape)
    m = None
    if ggml_type == Q8_0:
        c = np.ascontiguousarray(b[:, 2:]).view(np.int8)
    elif ggml_type == Q4_0:
        c = _unnibble(b[:, 2:]).astype(np.int8) - np.int8(8)
    elif ggml_type == Q5_0:
        qh = np.ascontiguousarray(b[:, 2:6]).view("<u4").reshape(n, 1)
        high = ((qh >> np.arange(BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)
        c = (_unnibble(b[:, 6:]) | (high << 4)).astype(np.int8) - np.int8(16)
    elif ggml_type == Q4_1:
        m = np.ascontiguousarray(b[:, 2:4]).view("<f2").astype(np.float16).reshape(pshape)
        c = _unnibble(b[:, 4:])
    else:
        raise ValueError(f"not a block type qcore reads: {TENSOR_TYPES.get(ggml_type, (ggml_type,))[0]}")
    return np.ascontiguousarray(c).reshape(shape), d, m
