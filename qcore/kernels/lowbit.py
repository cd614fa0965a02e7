"""The ``lowbit_gemm`` capability: low-bit weights (1-8 bits, affine or 16-entry tables) packed once and computed
on directly (``qcore.ops.qlinear`` for every weight but the 8-bit per-channel ones) — with the numpy reference
beside it (the ``_`` methods' defaults: :class:`ReferenceLowbit` keeps the code bit patterns and parameters).

A kernel packs a weight once (pack_lowbit, cached by qcore.ops.qlinear on the QTensor) and multiplies
float activations with it (lowbit_linear).  The arithmetic every implementation follows (the numpy
kernel is the reference; docs/gemm.md "Low-bit weights")::

  weight:      W[n, k] = scale[n, g] * (v[n, k] - zero[n, g]),  g = k // group_size, v in 0..255 where
               v = values[n, k] (linear), or v = t8 + 128 with t8 the int8 table entry (tables, below)
  activations: each row cut into blocks of 32 k (zero padded); per block sa = max|x| / 127 (float32;
               0 when below 1e-30), q = clamp(rint(x * (1 / sa)), -127, 127), asum = sum(q)
  product:     y[m, n] = sum_g [ sum_{b in g} float(dot_b) * (sa_b * scale[n, g])
                                 - S[m, g] * (scale[n, g] * zero[n, g]) ] + bias[n]
               dot_b = sum_{k in b} q[m, k] * v[n, k] (exact integer); S = sum_{b in g} sa_b * asum_b

Float sums run block by block in that order; SIMD kernels may fuse the multiply-add (tolerance ~1e-6).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..validation import check_int, non_finite_error
from .core import KernelBase, linear_operands, packed_size


class LowbitOps(KernelBase):
    """The ``lowbit_gemm`` capability."""

    capability = "lowbit_gemm"
    LOWBIT_BLOCK: ClassVar[int] = 32

    def pack_lowbit(self, values, bits: int, scale, zero, group_size: int, table=None, table_group_size=None):
        """Pack a weight of shape (N, K) for :meth:`lowbit_linear`; the result is kernel-specific and read-only.

        :param values: ``uint8`` (N, K), each ``< 2**bits``: the codes' bit patterns
        :param bits: 1..8 (1..4 with ``table``)
        :param scale, zero: float32 (N, K // group_size): ``W = scale * (v - zero)`` (for linear codes ``v`` is
            ``values``; ``zero`` need not be an integer).  Ignored (may be None) with ``table``.
        :param group_size: a multiple of 32, or K (one scale per row)
        :param table: None, or float32 (R, K // table_group_size, 2**bits) with R = N or 1: the decoded value
            of code bits ``c`` is ``table[n, k // table_group_size, c]``.  Each table row becomes int8 entries
            ``t8 = clamp(rint(T * (127 / max|T|)), -127, 127)`` with scale ``max|T| / 127`` (see
            :func:`lowbit_table_bytes`); ``group_size`` is then ``table_group_size``.
        :raises ValueError: shapes, ranges, group sizes or non-finite parameters that the path cannot take
        """
        values = np.asarray(values)
        if values.dtype != np.uint8 or values.ndim != 2:
            raise TypeError(f"values must be a 2-D uint8 array, got {values.dtype} with shape {values.shape}")
        n, k = values.shape
        if n == 0 or k == 0:
            raise ValueError(f"pack_lowbit needs a non-empty weight, got shape {values.shape}")
        bits = check_int(bits, "bits", 1, 4 if table is not None else 8)
        values = np.ascontiguousarray(values)
        if values.size and int(values.max()) >= (1 << bits):
            raise ValueError(f"values must be < 2**bits = {1 << bits}")
        scale, zero, gs, tbytes = self._lowbit_params(n, k, bits, scale, zero, group_size, table, table_group_size)
        return self._pack_lowbit(values, bits, scale, zero, gs, tbytes)

    def pack_lowbit_packed(self, packed, shape, bits: int, scale, zero, group_size: int, table=None,
                           table_group_size=None, *, flip: int = 0):
        """:meth:`pack_lowbit` from codes packed at ``bits`` bits each (a QTensor's ``packed`` stream,
        docs/format.md §3) instead of unpacked values: ``values = code_bits ^ flip`` (``flip`` ``2**(bits-1)``
        turns two's-complement codes into the offset-binary values the kernel takes; 0 keeps them).

        Same result as ``pack_lowbit(unpack(packed) ^ flip, ...)``; kernels that override
        :meth:`_pack_lowbit_packed` (the cython kernel) never unpack the whole weight (a panel of rows at a time).

        :param packed: 1-d ``uint8`` of exactly ``ceil(N*K*bits/8)`` bytes
        :param shape: ``(N, K)``
        """
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise TypeError(f"packed must be a 1-d uint8 array, got {packed.dtype} with shape {packed.shape}")
        try:
            n, k = (check_int(s, "shape", 0, 2**62) for s in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be (N, K) of two non-negative integers, got {shape!r}") from None
        if n == 0 or k == 0:
            raise ValueError(f"pack_lowbit_packed needs a non-empty weight, got shape {(n, k)}")
        bits = check_int(bits, "bits", 1, 4 if table is not None else 8)
        flip = check_int(flip, "flip", 0, (1 << bits) - 1)
        need = packed_size(n * k, bits)
        if packed.size != need:
            raise ValueError(f"{n}x{k} codes of {bits} bits need {need} packed bytes, got {packed.size}")
        scale, zero, gs, tbytes = self._lowbit_params(n, k, bits, scale, zero, group_size, table, table_group_size)
        return self._pack_lowbit_packed(np.ascontiguousarray(packed), n, k, bits, flip, scale, zero, gs, tbytes)

    def unpack_lowbit(self, packed_weight, flip: int = 0) -> np.ndarray:
        """The inverse of :meth:`pack_lowbit_packed` with the same ``flip``: the codes of a weight packed by this
        kernel as the packed stream (1-d ``uint8``, ``ceil(N*K*bits/8)`` bytes, unused high bits of the last byte
        0).  Lets a holder keep only the kernel's layout and regenerate the stream on demand."""
        n, k = self._lowbit_shape(packed_weight)
        bits = int(packed_weight.bits)
        flip = check_int(flip, "flip", 0, (1 << bits) - 1)
        return self._unpack_lowbit(packed_weight, flip)

    def lowbit_scales(self, packed_weight):
        """The float32 ``scale`` (N, K // group_size) a weight was packed with (tables: the table scales), or None
        if this kernel cannot give it back (override ``_lowbit_scales`` to return None); lets a holder drop its
        own copy of the scales."""
        self._lowbit_shape(packed_weight)
        return self._lowbit_scales(packed_weight)

    def _lowbit_params(self, n, k, bits, scale, zero, group_size, table, table_group_size):
        """Validated (scale, zero, group_size, table_bytes) for :meth:`_pack_lowbit`."""
        tbytes = None
        if table is not None:
            group_size = table_group_size if table_group_size is not None else group_size
            gs = self._lowbit_group(group_size, k, "table_group_size")
            table = np.asarray(table, dtype=np.float32)
            want = (k // gs, 1 << bits)
            if table.ndim != 3 or table.shape[0] not in (1, n) or table.shape[1:] != want:
                raise ValueError(f"table must have shape ({n} or 1, {want[0]}, {want[1]}), got {table.shape}")
            if not np.isfinite(table).all():
                raise ValueError("table holds NaN or Inf values")
            tbytes, tscale = lowbit_table_bytes(table)
            scale = np.ascontiguousarray(np.broadcast_to(tscale, (n, want[0])), dtype=np.float32)
            zero = np.full(scale.shape, 128.0, np.float32)
            flat = tbytes.reshape(-1, 16)
            if (flat == flat[0]).all():  # the same byte table everywhere (e.g. log: tables differ only by scale)
                tbytes = flat[:1].reshape(1, 1, 16)
            elif tbytes.shape[0] == 1:
                tbytes = np.ascontiguousarray(np.broadcast_to(tbytes, (n,) + tbytes.shape[1:]))
        else:
            gs = self._lowbit_group(group_size, k, "group_size")
            g = k // gs
            scale = np.asarray(scale, dtype=np.float32)
            zero = np.asarray(zero, dtype=np.float32)
            if scale.shape != (n, g) or zero.shape != (n, g):
                raise ValueError(f"scale and zero must have shape ({n}, {g}), got {scale.shape} and {zero.shape}")
            if not (np.isfinite(scale).all() and np.isfinite(zero).all()):
                raise ValueError("scale and zero must be finite")
            scale, zero = np.ascontiguousarray(scale), np.ascontiguousarray(zero)
        return scale, zero, gs, tbytes

    @staticmethod
    def _lowbit_group(gs, k: int, name: str) -> int:
        gs = check_int(gs, name, 1, 2**62)
        if gs != k and (gs % 32 or k % gs):
            raise ValueError(f"{name}={gs} must be K (={k}) or a multiple of 32 dividing K")
        return gs

    def lowbit_linear(self, x, packed, bias=None) -> np.ndarray:
        """``y = x @ W.T + bias`` (float32 (M, N)) for a weight from :meth:`pack_lowbit` of this kernel.

        ``x``: float32 (M, K) (converted and made contiguous); NaN/Inf raise :class:`qcore.InputError`.
        """
        n, k = self._lowbit_shape(packed)
        x, bias = linear_operands(x, n, k, bias)
        if x.shape[0] == 0:
            return np.zeros((0, n), np.float32)
        return self._lowbit_linear(x, packed, bias)

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _lowbit_shape(self, packed) -> tuple[int, int]:
        """(N, K) of a packed low-bit weight of this kernel; ``TypeError`` for anything else."""
        if not isinstance(packed, ReferenceLowbit):
            raise self._foreign("packed", packed)
        return packed.values.shape

    def _pack_lowbit(self, values, bits, scale, zero, group_size, table_bytes):
        """``table_bytes``: None, or uint8 (R, G_t, 16) with R = N or 1 (``v = t8 + 128``, entries past
        2**bits unused); then ``scale``/``zero`` are per (n, table group) and ``zero`` is 128."""
        return ReferenceLowbit(values, bits, scale, zero, group_size, table_bytes)

    def _pack_lowbit_packed(self, packed, n, k, bits, flip, scale, zero, group_size, table_bytes):
        """Default: unpack the whole stream (the reference keeps unpacked values anyway)."""
        values = self.unpack(packed, bits, n * k, False).reshape(n, k)
        if flip:
            values ^= np.uint8(flip)
        return self._pack_lowbit(values, bits, scale, zero, group_size, table_bytes)

    def _lowbit_scales(self, p):
        return np.array(p.scale, np.float32)

    def _unpack_lowbit(self, p, flip):
        return self.pack(p.values ^ np.uint8(flip), p.bits)

    def _lowbit_linear(self, x2, p, bias):
        """``x2 @ W.T + bias`` block by block of 32 k, as the module doc says (NaN/Inf raise InputError)."""
        if not np.isfinite(x2).all():
            raise non_finite_error(x2)
        m, k = x2.shape
        n = p.values.shape[0]
        q, sa, asum = lowbit_quantize_blocks(x2)
        nb = sa.shape[1]
        gblk = nb if p.group_size == k else p.group_size // 32
        ng = p.scale.shape[1]
        swz = (p.scale * p.zero).astype(np.float32)
        # one integral zero point for the whole weight (symmetric codes, tables): folded into the exact
        # integer dot product of each block (dot - z * asum), as the compiled kernels do
        z0 = float(p.zero.flat[0])
        zint = bool((p.zero == p.zero.flat[0]).all()) and z0 == int(z0) and -256 <= z0 <= 256
        y = np.zeros((m, n), np.float32)
        rows = np.arange(n)[:, None]
        for g in range(ng):
            s = np.zeros(m, np.float32)
            for b in range(g * gblk, min(nb, (g + 1) * gblk)):
                vb = np.zeros((n, 32), np.uint8)
                part = p.values[:, 32 * b: 32 * b + 32]
                vb[:, : part.shape[1]] = part
                if p.tables is not None:
                    vb = p.tables[0, 0][vb] if p.tables.shape[:2] == (1, 1) else p.tables[rows, g, vb]
                dot = q[:, 32 * b: 32 * b + 32].astype(np.int64) @ vb.astype(np.int64).T
                if zint:
                    dot = dot - int(z0) * asum[:, b, None].astype(np.int64)
                y = y + dot.astype(np.float32) * (sa[:, b, None] * p.scale[None, :, g])
                s = s + sa[:, b] * asum[:, b].astype(np.float32)
            if not zint:
                y = y - s[:, None] * swz[None, :, g]
        if bias is not None:
            y = y + bias
        return y.astype(np.float32)



class ReferenceLowbit:
    """The reference's packed low-bit weight: the code bit patterns (uint8, not floats) and parameters."""

    def __init__(self, values, bits, scale, zero, group_size, tables):
        self.values, self.bits, self.scale, self.zero = values.copy(), bits, scale, zero
        self.group_size, self.tables = group_size, tables

    @property
    def nbytes(self):
        return self.values.nbytes + self.scale.nbytes + self.zero.nbytes + (self.tables.nbytes if self.tables is not None else 0)


def lowbit_quantize_blocks(x2):
    """Per-32-block int8 activations: ``(q int8 (M, Kp), sa float32 (M, nb), asum int32 (M, nb))``."""
    m, k = x2.shape
    nb = -(-k // 32)
    xp = np.zeros((m, nb * 32), np.float32)
    xp[:, :k] = x2
    xb = xp.reshape(m, nb, 32)
    amax = np.abs(xb).max(axis=2)
    sa = (amax / np.float32(127)).astype(np.float32)
    ok = sa >= np.float32(1e-30)
    sa = np.where(ok, sa, np.float32(0)).astype(np.float32)
    inv = np.where(ok, np.float32(1) / np.where(ok, sa, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(xb * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(m, -1), sa, q.astype(np.int32).sum(axis=2).astype(np.int32)


def lowbit_table_bytes(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte tables of a float table (R, G, E) (E <= 16): ``(v uint8 (R, G, 16), scale float32 (R, G))``.

    Per row: ``m = max|T|``; ``scale = m / 127`` and ``t8 = clamp(rint(T * (127 / m)), -127, 127)`` (float32
    arithmetic, round half to even); an all-zero row gets scale 1 and t8 = 0.  ``v = t8 + 128``; entries past E
    are 128 (value 0).  So ``T ~ scale * (v - 128)`` within ``scale / 2``.
    """
    table = np.asarray(table, dtype=np.float32)
    r, g, e = table.shape
    m = np.abs(table).max(axis=2)
    pos = m > 0
    scale = np.where(pos, m / np.float32(127), np.float32(1)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(pos, np.float32(127) / np.where(pos, m, 1), np.float32(0)).astype(np.float32)
    t8 = np.clip(np.rint(table * inv[:, :, None]), -127, 127).astype(np.int32)
    v = np.full((r, g, 16), 128, np.uint8)
    v[:, :, :e] = (t8 + 128).astype(np.uint8)
    return v, scale
