"""The ``codebook`` capability: table decode, nearest codebook entry and log levels (the ``kmeans`` and ``log``
schemes) — with the numpy reference beside each operation (the ``_`` methods' defaults).

Numerics every implementation follows bit for bit:

* ``lut_decode``: ``x = table[c, code & 0xFF]``;
* ``nearest_entry``: the index of the nearest entry of a sorted codebook row — the number of midpoints
  ``(e[j] + e[j+1]) / 2`` (in float64, exact) strictly below ``x``, so a tie takes the lower entry;
* ``log_encode``: with ``y = fl32(|x| / scale)`` and its float bits ``y = 1.f * 2^E``, the level
  ``m = clamp(E + (f >= T) + L, 1, L)`` (``T``: mantissa ``0.5`` for ``rounding="nearest"``, the first
  mantissa above ``sqrt(2) - 1`` for ``"log2"``), 0 when ``y`` is below the zero threshold (``2^-L``, resp.
  ``2^(0.5-L)``), the code ``-m`` for negative ``x`` (sign bit) and ``m`` otherwise; level ``m`` decodes as
  ``fl32(scale * 2^(m-L))``;
* the ``*_sse`` reductions are sums in float64; they equal the reference up to the order of additions
  (relative ``1e-12``), not bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..validation import as_3d, as_float32, check_int, non_finite_error
from .core import KernelBase, rows_of


class CodebookOps(KernelBase):
    """The ``codebook`` capability."""

    capability = "codebook"

    def _codes3(self, codes, axis):
        codes = np.asarray(codes)
        if codes.dtype not in (np.int8, np.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        codes = np.ascontiguousarray(codes)
        return codes, as_3d(codes, self._axis(codes, axis))

    def lut_decode(self, codes, table, axis=None, out=None) -> np.ndarray:
        """float32 ``table[c, code]`` for every code (``(C, T)`` table, ``T <= 256``; int8 codes index as
        ``code & 0xFF``, two's complement); codes ``>= T`` are a ``ValueError``."""
        codes, q3 = self._codes3(codes, axis)
        table = np.asarray(table, dtype=np.float32)
        if table.ndim != 2 or table.shape[0] != q3.shape[1] or not 1 <= table.shape[1] <= 256:
            raise ValueError(f"table must have shape (C, T) with C = {q3.shape[1]} channels and 1 <= T <= 256, got {table.shape}")
        if table.shape[1] < 256:
            if codes.size and int(codes.view(np.uint8).max()) >= table.shape[1]:
                raise ValueError(f"codes index beyond the table's {table.shape[1]} entries")
            table = np.concatenate([table, np.zeros((table.shape[0], 256 - table.shape[1]), np.float32)], axis=1)
        out = self._output(out, codes.shape, np.float32, codes)
        if codes.size:
            self._lut_decode(q3.view(np.uint8), np.ascontiguousarray(table), out.reshape(q3.shape))
        return out

    def _codebook_rows(self, codebook, channels: int):
        cb = np.ascontiguousarray(np.asarray(codebook, dtype=np.float32))
        if cb.ndim != 2 or cb.shape[0] != channels or cb.shape[1] < 2 or cb.shape[1] > 256 or cb.shape[1] & (cb.shape[1] - 1):
            raise ValueError(f"codebook must have shape (C, K) with C = {channels} and K a power of two in 2..256, got {cb.shape}")
        if not np.isfinite(cb).all():
            raise ValueError("codebook must be finite")
        if np.any(np.diff(cb, axis=1) < 0):
            raise ValueError("codebook rows must be sorted ascending")
        mid = (cb[:, :-1].astype(np.float64) + cb[:, 1:].astype(np.float64)) * 0.5
        return cb, np.ascontiguousarray(mid)

    def nearest_entry(self, x, codebook, axis=None, out=None) -> np.ndarray:
        """uint8 index of the nearest entry of codebook row ``c`` (``(C, K)``, sorted ascending, ``K`` a power of
        two) for every value of channel ``c``; a tie takes the lower entry.  NaN/Inf raise ``qcore.InputError``."""
        x = as_float32(x, check_finite=False)
        x3 = as_3d(x, self._axis(x, axis))
        cb, mid = self._codebook_rows(codebook, x3.shape[1])
        out = self._output(out, x.shape, np.uint8, x)
        if x.size and not self._nearest_entry(x3, mid, out.reshape(x3.shape)):
            raise non_finite_error(x)
        return out

    def nearest_entry_sse(self, x, codebook, axis=None) -> np.ndarray:
        """float64 ``(C,)``: per channel, the sum of squared errors when every value takes its nearest entry (a
        channel holding NaN/Inf gets a NaN/Inf sum)."""
        x = as_float32(x, check_finite=False)
        x3 = as_3d(x, self._axis(x, axis))
        cb, mid = self._codebook_rows(codebook, x3.shape[1])
        if x.size == 0:
            return np.zeros(x3.shape[1], np.float64)
        return np.asarray(self._nearest_entry_sse(x3, mid, cb), np.float64)

    @staticmethod
    def log_thresholds(levels: int, rounding: str) -> tuple[np.uint32, np.float32]:
        """``(T, zero threshold)`` of :meth:`log_encode` (see the module docstring)."""
        if rounding == "nearest":
            return np.uint32(0x400000), np.float32(2.0**-levels)
        if rounding == "log2":
            # first float32 mantissa with 1.f > sqrt(2) (float32(sqrt 2) = 1 + 0x3504F3/2^23 < sqrt 2)
            return np.uint32(0x3504F4), np.float32(2.0 ** (0.5 - levels))
        raise ValueError(f"rounding must be 'nearest' or 'log2', got {rounding!r}")

    def _log_args(self, x, scale, levels, rounding, axis):
        x = as_float32(x, check_finite=False)
        x3 = as_3d(x, self._axis(x, axis))
        levels = check_int(levels, "levels", 1, 127)  # 2^(m-L) must stay a normal float32
        scale = self._per_channel(scale, x3.shape[1], "scale")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scale must be finite and > 0")
        T, zthr = self.log_thresholds(levels, rounding)
        return x, x3, scale, levels, T, zthr

    def log_encode(self, x, scale, levels: int, rounding: str = "nearest", axis=None, out=None) -> np.ndarray:
        """int8 log codes ``±m`` (``m`` in ``0..levels``) of ``x`` with one ``scale`` per channel (the top level).
        NaN/Inf raise ``qcore.InputError``."""
        x, x3, scale, L, T, zthr = self._log_args(x, scale, levels, rounding, axis)
        out = self._output(out, x.shape, np.int8, x)
        if x.size and not self._log_encode(x3, scale, L, T, zthr, out.reshape(x3.shape)):
            raise non_finite_error(x)
        return out

    def log_sse(self, x, scale, levels: int, rounding: str = "nearest", axis=None) -> np.ndarray:
        """float64 ``(C,)``: per channel, ``sum (|x| - level(|x|))^2`` of :meth:`log_encode`'s levels.  Not a check
        of the input: a channel holding NaN/Inf gets a NaN/Inf sum."""
        x, x3, scale, L, T, zthr = self._log_args(x, scale, levels, rounding, axis)
        if x.size == 0:
            return np.zeros(x3.shape[1], np.float64)
        return np.asarray(self._log_sse(x3, scale, L, T, zthr), np.float64)

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _lut_decode(self, q3_u8, table256, out3) -> None:
        out3[...] = table256[rows_of(q3_u8), q3_u8]

    def _nearest_entry(self, x3, mid, out3) -> bool:
        """Write codes into ``out3`` (``mid``: ``(C, K-1)`` float64 midpoints); False if a value was NaN/Inf."""
        if not np.isfinite(x3).all():
            return False
        for c in range(x3.shape[1]):
            out3[:, c, :] = np.searchsorted(mid[c], x3[:, c, :].astype(np.float64), side="left")
        return True

    def _nearest_entry_sse(self, x3, mid, codebook) -> np.ndarray:
        q = np.empty(x3.shape, np.uint8)
        for c in range(x3.shape[1]):
            q[:, c, :] = np.searchsorted(mid[c], x3[:, c, :].astype(np.float64), side="left")
        d = x3.astype(np.float64) - codebook[rows_of(x3), q]
        return (d * d).sum(axis=(0, 2))

    def _log_encode(self, x3, scale, levels, T, zthr, out3) -> bool:
        if not np.isfinite(x3).all():
            return False
        m = log_levels(x3, scale, levels, T, zthr)
        out3[...] = np.where(np.signbit(x3), -m, m)
        return True

    def _log_sse(self, x3, scale, levels, T, zthr) -> np.ndarray:
        m = log_levels(x3, scale, levels, T, zthr)
        e = np.arange(levels + 1, dtype=np.float64) - levels
        mag = (scale.astype(np.float64)[:, None] * np.exp2(e)[None, :]).astype(np.float32)  # exact product, one rounding
        mag[:, 0] = 0.0
        d = np.abs(x3).astype(np.float64) - mag[rows_of(x3), m].astype(np.float64)
        return (d * d).sum(axis=(0, 2))


def log_levels(x3, scale, L, T, zthr):
    """(level index m) of every value with the float32 operations of the compiled kernels."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = np.abs(x3) / scale.reshape(1, -1, 1)
    b = y.view(np.uint32)
    m = (b >> 23).astype(np.int32) - 127 + ((b & 0x7FFFFF) >= T) + L
    m = np.clip(m, 1, L)
    return np.where(y >= zthr, m, 0)
