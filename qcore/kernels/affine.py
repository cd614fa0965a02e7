"""The ``affine`` capability: min/max, affine quantize and dequantize, bit packing, the linear scheme's scale
search — with the numpy reference beside each operation (the ``_`` methods' defaults).

Numerics every implementation follows bit for bit (the reference below is the oracle):

* ``quantize_affine``: ``q = clamp(rint(x * inv_scale) + zero_point, qmin, qmax)`` in float32, with
  ``inv_scale = float32(1) / scale`` and ``rint`` rounding half to even (a scale may be negative: the
  symmetric low-bit linear scheme uses one to give the largest magnitude the extra negative code);
* ``dequantize_affine``: ``x = float32(q - zero_point) * scale``;
* ``pack``: codes as a little-endian bit stream of exactly ``bits`` bits each (code ``i`` occupies bits
  ``i*bits .. i*bits+bits-1`` counting from bit 0 of byte 0); signed codes are stored in two's complement
  and sign-extended by ``unpack``.  ``pack`` gives ``ceil(n*bits/8)`` bytes; unused high bits are zero;
* ``search_scales``: see the method.

The ``_`` methods receive only valid input: float arrays float32, C-contiguous, viewed as 3-D
``(outer, C, inner)`` where ``C`` is the size of the quantization axis (``1`` per tensor) and parameters have
shape ``(C,)``; code arrays ``int8`` (signed) or ``uint8``; sizes non-zero.
"""
from __future__ import annotations

import numpy as np

from ..validation import as_3d, as_float32, check_int, non_finite_error
from .core import KernelBase, code_dtype, packed_size


class AffineOps(KernelBase):
    """The ``affine`` capability (what the ``linear`` scheme and every observer use)."""

    capability = "affine"

    @staticmethod
    def _params(x3: np.ndarray, scale, zero_point):
        channels = x3.shape[1]
        scale = np.ascontiguousarray(np.asarray(scale, dtype=np.float32).reshape(-1))
        zp = np.asarray(zero_point)
        if zp.dtype.kind not in "iu" and not (zp.dtype.kind == "f" and np.all(zp == np.round(zp))):
            raise TypeError("zero_point must hold integers")
        zp = np.ascontiguousarray(zp.astype(np.int32).reshape(-1))
        if x3.size == 0:  # nothing to compute: check the counts without broadcasting (channels may be huge)
            if scale.size not in (1, channels) or zp.size not in (1, channels):
                raise ValueError(
                    f"scale and zero_point must have one value per channel ({channels}), got {scale.size} and {zp.size}"
                )
            if not (np.isfinite(scale).all() and (scale != 0).all()):
                raise ValueError("scale must be finite and non-zero")
            return scale, zp
        if scale.size == 1 and channels != 1:
            scale = np.full(channels, scale[0], np.float32)
        if zp.size == 1 and channels != 1:
            zp = np.full(channels, zp[0], np.int32)
        if scale.shape != (channels,) or zp.shape != (channels,):
            raise ValueError(
                f"scale and zero_point must have one value per channel ({channels}), got {scale.size} and {zp.size}"
            )
        if not (np.isfinite(scale).all() and (scale != 0).all()):
            raise ValueError("scale must be finite and non-zero")
        return scale, zp

    @staticmethod
    def _code_range(qmin, qmax):
        qmin = check_int(qmin, "qmin", -128, 255)
        qmax = check_int(qmax, "qmax", -128, 255)
        if qmin > qmax or (qmin < 0 and qmax > 127):
            raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] must lie within int8 or uint8")
        return qmin, qmax

    def minmax(self, x, axis=None) -> tuple[np.ndarray, np.ndarray]:
        """Minimum and maximum over all axes but ``axis`` (everything if None): two float32 ``(C,)`` arrays.

        NaN/Inf raise :class:`qcore.InputError`; an empty reduction raises ``ValueError``.
        """
        x = as_float32(x, check_finite=False)
        ax = self._axis(x, axis)
        x3 = as_3d(x, ax)
        if x3.shape[0] * x3.shape[2] == 0 or x3.shape[1] == 0:
            raise ValueError("minmax of an empty array (or an empty reduction) is undefined")
        lo, hi = self._minmax(x3)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise non_finite_error(x)
        return lo, hi

    def absmax(self, x, axis=None) -> np.ndarray:
        """``max(|x|)`` over all axes but ``axis``: a float32 ``(C,)`` array."""
        lo, hi = self.minmax(x, axis)
        return np.maximum(-lo, hi)

    def quantize_affine(self, x, scale, zero_point, qmin: int, qmax: int, axis=None, out=None) -> np.ndarray:
        """Integer codes of ``x`` (same shape), ``int8`` if ``qmin < 0`` else ``uint8``.

        ``out``: an existing array to write the codes into (saves allocating, and the OS zeroing, new memory);
        if the call raises, its contents are unspecified.
        """
        x = as_float32(x, check_finite=False)
        qmin, qmax = self._code_range(qmin, qmax)
        ax = self._axis(x, axis)
        x3 = as_3d(x, ax)
        scale, zp = self._params(x3, scale, zero_point)
        out = self._output(out, x.shape, code_dtype(qmin < 0), x)
        if x.size == 0:
            return out
        with np.errstate(over="ignore"):
            inv = (np.float32(1.0) / scale).astype(np.float32)
        if not np.isfinite(inv).all():
            raise ValueError("scale is too small: 1/scale overflows float32")
        finite = self._quantize_affine(x3, inv, zp, qmin, qmax, out.reshape(x3.shape))
        if not finite:
            raise non_finite_error(x)
        return out

    def dequantize_affine(self, codes, scale, zero_point, axis=None, out=None) -> np.ndarray:
        """float32 values ``(codes - zero_point) * scale`` (same shape as ``codes``).

        ``out``: an existing float32 array to write into; for large outputs most of the time of a fresh
        array is the operating system zeroing its pages.
        """
        codes = np.asarray(codes)
        if codes.dtype not in (np.int8, np.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        codes = np.asarray(codes, order="C")
        ax = self._axis(codes, axis)
        q3 = as_3d(codes, ax)
        scale, zp = self._params(q3, scale, zero_point)
        out = self._output(out, codes.shape, np.float32, codes)
        if codes.size:
            self._dequantize_affine(q3, scale, zp, out.reshape(q3.shape))
        return out

    def pack(self, codes, bits: int) -> np.ndarray:
        """Pack int8/uint8 codes at exactly ``bits`` bits each: a ``uint8`` array of ``ceil(n*bits/8)`` bytes.

        Codes must fit: ``[0, 2^bits-1]`` for uint8, ``[-2^(bits-1), 2^(bits-1)-1]`` for int8.
        """
        bits = check_int(bits, "bits", 1, 8)
        codes = np.asarray(codes)
        if codes.dtype not in (np.int8, np.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        flat = np.ascontiguousarray(codes).reshape(-1)
        if flat.size:
            if codes.dtype == np.int8:
                lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            else:
                lo, hi = 0, (1 << bits) - 1
            if int(flat.min()) < lo or int(flat.max()) > hi:
                raise ValueError(f"codes out of range [{lo}, {hi}] for {bits}-bit {codes.dtype} packing")
        out = np.zeros(packed_size(flat.size, bits), dtype=np.uint8)
        if flat.size:
            self._pack(flat.view(np.uint8), bits, out)
        return out

    def unpack(self, packed, bits: int, count: int, signed: bool) -> np.ndarray:
        """Inverse of :meth:`pack`: ``count`` codes, int8 (sign-extended) if ``signed`` else uint8."""
        bits = check_int(bits, "bits", 1, 8)
        count = check_int(count, "count", 0, 2**62)
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise TypeError("packed must be a 1-d uint8 array")
        need = packed_size(count, bits)
        if packed.size != need:
            raise ValueError(f"{count} codes of {bits} bits need {need} bytes, got {packed.size}")
        out = np.empty(count, dtype=code_dtype(signed))
        if count:
            self._unpack(np.ascontiguousarray(packed), bits, count, bool(signed), out)
        return out

    def search_scales(self, rows, dgrid, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``linear`` scheme's symmetric low-bit scale search: per row of ``rows`` (``(R, L)`` float32, finite),
        the scale ``±max|row| / d`` (``d`` from ``dgrid``, tried ``+d0, -d0, +d1, ...``, a later one only if
        strictly better) of least squared error with codes ``clip(rint(x / scale), qmin, qmax)``; an all-zero row
        gets scale 1.  Returns float32 ``(scale, err)`` ``(R,)`` arrays, ``err`` in units of ``max|row|^2``."""
        rows = np.ascontiguousarray(rows, np.float32)
        dgrid = np.ascontiguousarray(dgrid, np.float32).reshape(-1)
        if rows.ndim != 2:
            raise ValueError(f"rows must be 2-d (R, L), got shape {rows.shape}")
        if dgrid.size == 0 or not (np.isfinite(dgrid).all() and (dgrid > 0).all()):
            raise ValueError("dgrid must hold at least one finite divisor > 0")
        qmin, qmax = int(qmin), int(qmax)
        if qmin >= 0 or qmax <= 0:
            raise ValueError("qmin must be negative and qmax positive")
        if not np.isfinite(rows).all():
            raise non_finite_error(rows, "rows")
        s, e = self._search_scales(rows, dgrid, qmin, qmax)
        return np.asarray(s, np.float32), np.asarray(e, np.float32)

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _minmax(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x3.min(axis=(0, 2)).astype(np.float32), x3.max(axis=(0, 2)).astype(np.float32)

    def _quantize_affine(self, x3, inv_scale, zero_point, qmin, qmax, out3) -> bool:
        """Write codes into ``out3``; return False if any input value was NaN/Inf (the caller raises)."""
        if not np.isfinite(x3).all():
            return False
        inv = inv_scale.reshape(1, -1, 1)
        zp = zero_point.reshape(1, -1, 1).astype(np.float32)
        v = np.rint(x3 * inv)  # float32 product, rounded half to even
        q = np.clip(v + zp, qmin, qmax)
        out3[...] = q.astype(out3.dtype)
        return True

    def _dequantize_affine(self, q3, scale, zero_point, out3) -> None:
        diff = q3.astype(np.int32) - zero_point.reshape(1, -1, 1)
        out3[...] = diff.astype(np.float32) * scale.reshape(1, -1, 1)

    def _pack(self, codes_u8: np.ndarray, bits: int, out: np.ndarray) -> None:
        # bit j of code i goes to stream bit i*bits + j (little-endian bit stream)
        mask = np.uint8((1 << bits) - 1)
        codes = codes_u8 & mask
        stream = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
        packed = np.packbits(stream, bitorder="little")
        out[: packed.size] = packed

    def _unpack(self, packed: np.ndarray, bits: int, count: int, signed: bool, out: np.ndarray) -> None:
        stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
        weights = (1 << np.arange(bits)).astype(np.int32)
        vals = stream.astype(np.int32) @ weights
        if signed:
            vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals)
        out[...] = vals.astype(out.dtype)

    def _search_scales(self, rows, dgrid, qmin, qmax) -> tuple[np.ndarray, np.ndarray]:
        return search_scales(rows, dgrid, qmin, qmax)


def _row_errors(rows, s, sn, ia, qmin, qmax):
    """Squared error per row in units of amax^2, float32, summed in the C kernel's order (8 lanes, then the tail)."""
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.clip(np.rint(rows * inv[:, None]), qmin, qmax).astype(np.float32)
    e = (q * sn[:, None] - rows * ia[:, None]).astype(np.float32)
    e = (e * e).astype(np.float32)
    n8 = (rows.shape[1] // 8) * 8
    acc = np.zeros((rows.shape[0], 8), np.float32)
    for i in range(0, n8, 8):
        acc += e[:, i:i + 8]
    tail = np.zeros(rows.shape[0], np.float32)
    for i in range(n8, rows.shape[1]):
        tail += e[:, i]
    a = acc
    return (((a[:, 0] + a[:, 1]) + (a[:, 2] + a[:, 3])) + ((a[:, 4] + a[:, 5]) + (a[:, 6] + a[:, 7]))) + tail


def search_scales(rows: np.ndarray, dgrid: np.ndarray, qmin: int, qmax: int):
    """The numpy reference of :meth:`AffineOps.search_scales` (bit for bit): per row of ``rows`` (R, L),
    the scale ``±max|row| / d`` of least squared error (candidates ``+d0, -d0, +d1, ...``, a later one only if
    strictly better); an all-zero row gets scale 1.  Returns float32 ``(scale, err)``, ``err`` in units of
    ``max|row|^2`` (computed that way so rows near the float32 maximum do not overflow)."""
    rows = np.ascontiguousarray(rows, np.float32)
    amax = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0], np.float32)
    best_s = np.ones(rows.shape[0], np.float32)
    best_e = np.full(rows.shape[0], np.inf, np.float32)
    live = amax > 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ia = (np.float32(1) / np.where(live, amax, np.float32(1))).astype(np.float32)
        for d in np.asarray(dgrid, np.float32):
            for negative in (False, True):
                s = (amax / d).astype(np.float32)
                sn = np.full(rows.shape[0], np.float32(1) / d, np.float32)
                if negative:
                    s, sn = -s, -sn
                s = np.where(live, s, np.float32(1))
                e = _row_errors(rows, s, sn, ia, qmin, qmax)
                better = live & (e < best_e)
                best_s = np.where(better, s, best_s)
                best_e = np.where(better, e, best_e)
    best_e = np.where(live, best_e, np.float32(0))
    return best_s.astype(np.float32), best_e.astype(np.float32)
