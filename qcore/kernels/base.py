"""The :class:`Kernel` interface: the few array operations every scheme is built from.

The public methods validate their arguments (dtype, contiguity, shapes, ranges) and then call the
underscore methods a kernel plugin implements.  Those receive only valid input:

* float arrays are float32, C-contiguous, viewed as 3-D ``(outer, C, inner)`` where ``C`` is the size
  of the quantization axis (``1`` for per-tensor work) and parameters have shape ``(C,)``;
* code arrays are ``int8`` (signed schemes) or ``uint8`` (unsigned), C-contiguous;
* sizes are non-zero.

Numerics every implementation must follow bit for bit (the ``numpy`` kernel is the reference):

* ``quantize_affine``: ``q = clamp(rint(x * inv_scale) + zero_point, qmin, qmax)`` in float32, with
  ``inv_scale = float32(1) / scale`` and ``rint`` rounding half to even (a scale may be negative: the
  symmetric low-bit linear scheme uses one to give the largest magnitude the extra negative code);
* ``dequantize_affine``: ``x = float32(q - zero_point) * scale``;
* ``pack``: codes as a little-endian bit stream of exactly ``bits`` bits each (code ``i`` occupies bits
  ``i*bits .. i*bits+bits-1`` counting from bit 0 of byte 0); signed codes are stored in two's complement
  and sign-extended by ``unpack``.  ``pack`` gives ``ceil(n*bits/8)`` bytes; unused high bits are zero.
* ``lut_decode`` (table decode, the ``log`` and ``kmeans`` schemes): ``x = table[c, code & 0xFF]``;
* ``nearest_entry`` (``kmeans``): the index of the nearest entry of a sorted codebook row — the number of
  midpoints ``(e[j] + e[j+1]) / 2`` (in float64, exact) strictly below ``x``, so a tie takes the lower entry;
* ``log_encode`` (``log``): with ``y = fl32(|x| / scale)`` and its float bits ``y = 1.f * 2^E``, the level
  ``m = clamp(E + (f >= T) + L, 1, L)`` (``T``: mantissa ``0.5`` for ``rounding="nearest"``, the first
  mantissa above ``sqrt(2) - 1`` for ``"log2"``), 0 when ``y`` is below the zero threshold (``2^-L``, resp.
  ``2^(0.5-L)``), the code ``-m`` for negative ``x`` (sign bit) and ``m`` otherwise; level ``m`` decodes as
  ``fl32(scale * 2^(m-L))``;
* ``histogram``: value ``v`` of channel ``c`` counts in bin ``trunc((v - lo[c]) * (1 / width[c]))`` clamped
  to ``[0, bins-1]``, computed in float64 — except per tensor (``C == 1``), where it is computed in float32
  (``(v - float32(lo)) * float32(1 / width)``) unless the range reaches beyond ``±1e37``;
* the ``*_sse`` / ``histogram_*`` reductions are sums in float64; they equal the reference up to the order of
  additions (relative ``1e-12``), not bit for bit.

Every operation a scheme or an observer needs goes through these methods, so a third-party kernel can take
any of them over; the conformance kit (``qcore.testing.check_kernel``) checks each against the ``numpy``
reference kernel.
"""
from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np

from .. import isa as _isa
from ..errors import InputError
from ..validation import as_3d, as_float32, check_int, non_finite_error, normalize_axis
from . import reference
from .kmeans import KMeansFit
from .memory import new_array


def code_dtype(signed: bool) -> np.dtype:
    return np.dtype(np.int8) if signed else np.dtype(np.uint8)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


class Kernel(KMeansFit):
    """Base class of compute kernels.

    Subclasses set ``name`` and implement the five ``_`` methods of the affine and packing operations
    (``_minmax``, ``_quantize_affine``, ``_dequantize_affine``, ``_pack``, ``_unpack``).  The codebook and
    histogram operations (``_lut_decode``, ``_nearest_entry``, ``_nearest_entry_sse``, ``_log_encode``,
    ``_log_sse``, ``_histogram``, ``_minmax_histogram``, ``_bin_stats``, ``_histogram_sq_error``,
    ``_histogram_kl``) have numpy defaults (qcore/kernels/reference.py); override those you accelerate.
    """

    name: ClassVar[str] = ""
    #: get_kernel() without a name picks the available kernel with the highest priority
    priority: ClassVar[int] = 0

    @classmethod
    def available(cls) -> bool:
        """False when the kernel cannot run here (e.g. its extension module failed to build)."""
        return True

    def __repr__(self) -> str:
        return f"<qcore kernel {self.name!r}>"

    # -- instruction sets (qcore/isa.py; docs/contracts.md) ---------------------------------------------
    def isas(self) -> list[str]:
        """The instruction-set levels this kernel runs here, best first: none above the CPU's or the
        ``QCORE_ISA`` cap (``baseline``, ``avx2``, ``avx512``, ``avx512vnni``).  A kernel without copies per
        level runs ``["baseline"]``."""
        return ["baseline"]

    @property
    def isa(self) -> str:
        """The level this kernel runs at now (one of :meth:`isas`)."""
        return self.isas()[0]

    def set_isa(self, level: str) -> None:
        """Run at ``level`` from now on (tests and benchmarks; not while the kernel runs in other threads).
        ``ValueError`` for a name that is not a level, a level above the ``QCORE_ISA`` cap or one this kernel
        does not run here; a kernel with copies per level overrides ``_set_isa``."""
        self._set_isa(_isa.require(level, self.isas(), f"kernel {self.name!r}"))

    def _set_isa(self, level: str) -> None:
        pass

    # -- helpers shared by the public methods -------------------------------------------------------
    @staticmethod
    def _axis(x: np.ndarray, axis) -> int | None:
        return None if axis is None else normalize_axis(axis, x.ndim)

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

    # -- public, validated operations ----------------------------------------------------------------
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

    @staticmethod
    def _output(out, shape, dtype, source) -> np.ndarray:
        """A new array, or ``out`` checked to be a writeable C-contiguous array of that shape and dtype that
        does not overlap ``source`` (the kernels read and write in parallel)."""
        if out is None:
            return new_array(shape, dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.dtype != dtype or out.shape != tuple(shape):
            raise ValueError(f"out must have dtype {np.dtype(dtype)} and shape {tuple(shape)}, got {out.dtype} {out.shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
        if np.may_share_memory(out, source):
            raise ValueError("out must not overlap the input")
        return out

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

    # -- codebooks: table decode, nearest entry, log levels -------------------------------------------
    @staticmethod
    def _per_channel(values, channels: int, name: str, dtype=np.float32) -> np.ndarray:
        v = np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1))
        if v.size != channels:
            raise ValueError(f"{name} has {v.size} values, expected one per channel ({channels})")
        return v

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

    # -- histograms --------------------------------------------------------------------------------------
    @staticmethod
    def _hist_out(out, channels: int) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 2 or out.shape[0] != channels:
            raise ValueError(f"out must be a float64 (C, bins) array with C = {channels}")
        if not out.flags.c_contiguous or not out.flags.writeable or out.shape[1] < 1:
            raise ValueError("out must be C-contiguous, writeable and have at least one bin")
        return out

    def histogram(self, x, lo, width, out, axis=None) -> np.ndarray:
        """Add the counts of ``x``'s values to ``out`` (float64 ``(C, bins)``): bin ``i`` of channel ``c`` is
        ``[lo[c] + i * width[c], ...)``, values outside land in the first or last bin.  Returns ``out``.
        The one binning formula, per tensor and per channel: ``trunc((v - lo) * (1 / width))`` in float64, clamped
        to ``[0, bins - 1]`` (``qcore/kernels/reference.py`` ``bins``).  Not a check of the input (observers call :meth:`minmax` first, which refuses NaN/Inf): a NaN or Inf value
        is counted in some bin, never outside ``out``."""
        x = as_float32(x, check_finite=False)
        x3 = as_3d(x, self._axis(x, axis))
        C = x3.shape[1]
        out = self._hist_out(out, C)
        lo = self._per_channel(lo, C, "lo", np.float64)
        width = self._per_channel(width, C, "width", np.float64)
        if not (np.isfinite(lo).all() and np.isfinite(width).all() and (width > 0).all()):
            raise ValueError("lo must be finite and width finite and > 0")
        if x.size:
            self._histogram(x3, lo, width, out)
        return out

    def minmax_histogram(self, x, lo: float, width: float, out) -> tuple[float, float, bool]:
        """One pass over ``x`` (per tensor): its min and max, and its counts added to ``out`` (``(1, bins)``, as
        :meth:`histogram`) only if every value lies in ``[lo, lo + bins * width]``.  ``(min, max, added)``;
        NaN/Inf raise ``qcore.InputError`` with ``out`` untouched."""
        x = as_float32(x, check_finite=False).reshape(-1)
        out = self._hist_out(out, 1)
        lo, width = float(lo), float(width)
        if not (np.isfinite(lo) and np.isfinite(width) and width > 0):
            raise ValueError("lo must be finite and width finite and > 0")
        if x.size == 0:
            raise ValueError("minmax_histogram of an empty array is undefined")
        mn, mx, finite, added = self._minmax_histogram(x, lo, width, out)
        if not finite:
            raise non_finite_error(x)
        return float(mn), float(mx), bool(added)

    def minmax_histogram_spill(self, x, lo: float, width: float, out, capacity: int):
        """As :meth:`minmax_histogram`, but values outside ``[lo, lo + bins * width]`` do not stop the counting: the
        values inside are counted into ``out`` and those outside returned (float32, in no particular order) for the
        caller to count once it has widened its histogram — one pass over ``x`` where a batch reaching beyond the
        range took two.  ``(min, max, outside)``; ``outside`` is None and ``out`` untouched if more than
        ``capacity`` values fall outside.  NaN/Inf raise ``qcore.InputError`` with ``out`` untouched."""
        x = as_float32(x, check_finite=False).reshape(-1)
        out = self._hist_out(out, 1)
        lo, width = float(lo), float(width)
        if not (np.isfinite(lo) and np.isfinite(width) and width > 0):
            raise ValueError("lo must be finite and width finite and > 0")
        if x.size == 0:
            raise ValueError("minmax_histogram_spill of an empty array is undefined")
        capacity = check_int(capacity, "capacity", 0, 1 << 40)
        mn, mx, finite, outside = self._minmax_histogram_spill(x, lo, width, out, capacity)
        if not finite:
            raise non_finite_error(x)
        return float(mn), float(mx), None if outside is None else np.asarray(outside, np.float32)

    def bin_stats(self, rows, lo, hi, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row of ``rows`` (``(C, N)`` float32, finite): ``bins`` equal bins over ``[lo[c], hi[c]]`` (bin
        ``trunc((v - lo) * bins / (hi - lo))`` in float64, clamped; everything in bin 0 when ``hi == lo``) and per
        bin the count (int64), the sum (float64), the minimum and the maximum (float32, ``±inf`` when empty)."""
        rows = as_float32(rows)
        if rows.ndim != 2:
            raise ValueError(f"rows must be 2-d (C, N), got shape {rows.shape}")
        C = rows.shape[0]
        bins = check_int(bins, "bins", 1, 1 << 24)
        lo = self._per_channel(lo, C, "lo", np.float64)
        hi = self._per_channel(hi, C, "hi", np.float64)
        width = hi - lo
        if not (np.isfinite(width).all() and (width >= 0).all()):
            raise ValueError("lo and hi must be finite with hi >= lo")
        sc = np.where(width > 0, bins / np.where(width > 0, width, 1.0), 0.0)
        cnt = np.zeros((C, bins), np.int64)
        sm = np.zeros((C, bins), np.float64)
        bmin = np.full((C, bins), np.inf, np.float32)
        bmax = np.full((C, bins), -np.inf, np.float32)
        if rows.size:
            self._bin_stats(rows, lo, sc, cnt, sm, bmin, bmax)
        return cnt, sm, bmin, bmax

    def histogram_sq_error(self, idx, cnt, lo, width, g0, step, levels: float) -> np.ndarray:
        """float64 ``(C, K)``: the squared error of grid ``k`` (points ``g0[c, k] + j * step[c, k]``, ``j = 0..levels``,
        values beyond clamp) on channel ``c``'s histogram, values spread uniformly inside each bin.  The
        histogram comes compacted: ``cnt[c, m]`` values in bin ``idx[c, m]`` (``(C, M)``; ``cnt == 0`` pads)."""
        idx = np.ascontiguousarray(idx, np.int64)
        cnt = np.ascontiguousarray(cnt, np.float64)
        g0 = np.ascontiguousarray(g0, np.float64)
        step = np.ascontiguousarray(step, np.float64)
        if idx.ndim != 2 or cnt.shape != idx.shape or g0.ndim != 2 or step.shape != g0.shape or g0.shape[0] != idx.shape[0]:
            raise ValueError(f"shapes do not match: idx {idx.shape}, cnt {cnt.shape}, g0 {g0.shape}, step {step.shape}")
        C = idx.shape[0]
        lo = self._per_channel(lo, C, "lo", np.float64)
        width = self._per_channel(width, C, "width", np.float64)
        if not ((width > 0).all() and np.isfinite(g0).all() and np.isfinite(step).all() and (step >= 0).all()):
            raise ValueError("width must be > 0 and the grids finite with step >= 0")
        if idx.size and (idx.min() < 0):
            raise ValueError("bin indices must be >= 0")
        levels = float(levels)
        if not (np.isfinite(levels) and levels >= 0):
            raise ValueError(f"levels must be a finite number >= 0, got {levels}")
        if g0.size == 0:
            return np.zeros(g0.shape, np.float64)
        if idx.shape[1] == 0:
            return np.zeros(g0.shape, np.float64)
        return np.asarray(self._histogram_sq_error(idx, cnt, lo, width, g0, step, levels), np.float64)

    def histogram_kl(self, hist, start, end, levels: int) -> np.ndarray:
        """float64 ``(C, K)``: the KL divergence (TensorRT's entropy calibration) of clipping channel ``c``'s
        histogram ``hist`` (``(C, bins)``) to bins ``[start[c, k], end[c, k])`` and quantizing them to ``levels``
        levels; ``inf`` for windows holding nothing."""
        hist = np.ascontiguousarray(hist, np.float64)
        start = np.ascontiguousarray(start, np.int64)
        end = np.ascontiguousarray(end, np.int64)
        if hist.ndim != 2 or start.ndim != 2 or end.shape != start.shape or start.shape[0] != hist.shape[0]:
            raise ValueError(f"shapes do not match: hist {hist.shape}, start {start.shape}, end {end.shape}")
        levels = check_int(levels, "levels", 1, 1 << 30)
        if start.size == 0:
            return np.zeros(start.shape, np.float64)
        nb = hist.shape[1]
        start, end = np.clip(start, 0, nb), np.clip(end, 0, nb)
        return np.asarray(self._histogram_kl(hist, np.ascontiguousarray(start), np.ascontiguousarray(end), levels), np.float64)

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

    # -- what a kernel implements ---------------------------------------------------------------------
    def _minmax(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _quantize_affine(self, x3, inv_scale, zero_point, qmin, qmax, out3) -> bool:
        """Write codes into ``out3``; return False if any input value was NaN/Inf (the caller raises)."""
        raise NotImplementedError

    def _dequantize_affine(self, q3, scale, zero_point, out3) -> None:
        raise NotImplementedError

    def _pack(self, codes_u8: np.ndarray, bits: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def _unpack(self, packed: np.ndarray, bits: int, count: int, signed: bool, out: np.ndarray) -> None:
        raise NotImplementedError

    # The codebook and histogram operations default to the numpy reference (qcore/kernels/reference.py): a
    # kernel overrides those it accelerates; the conformance kit checks the overrides against the reference.
    def _lut_decode(self, q3_u8, table256, out3) -> None:
        reference.lut_decode(q3_u8, table256, out3)

    def _nearest_entry(self, x3, mid, out3) -> bool:
        """Write codes into ``out3`` (``mid``: ``(C, K-1)`` float64 midpoints); False if a value was NaN/Inf."""
        return reference.nearest_entry(x3, mid, out3)

    def _nearest_entry_sse(self, x3, mid, codebook) -> np.ndarray:
        return reference.nearest_entry_sse(x3, mid, codebook)

    def _log_encode(self, x3, scale, levels, T, zthr, out3) -> bool:
        return reference.log_encode(x3, scale, levels, T, zthr, out3)

    def _log_sse(self, x3, scale, levels, T, zthr) -> np.ndarray:
        return reference.log_sse(x3, scale, levels, T, zthr)

    def _histogram(self, x3, lo, width, out) -> None:
        reference.histogram(x3, lo, width, out)

    def _minmax_histogram(self, x, lo, width, out) -> tuple[float, float, bool, bool]:
        """``(min, max, finite, added)``; ``out`` unchanged unless ``added``."""
        return reference.minmax_histogram(x, lo, width, out)

    def _minmax_histogram_spill(self, x, lo, width, out, capacity):
        """``(min, max, finite, outside)``; ``out`` unchanged unless ``outside`` is not None."""
        return reference.minmax_histogram_spill(x, lo, width, out, capacity)

    def _bin_stats(self, rows, lo, sc, cnt, sm, bmin, bmax) -> None:
        """Accumulate into the outputs; bin ``trunc((v - lo[c]) * sc[c])`` clamped to ``[0, bins-1]``."""
        reference.bin_stats(rows, lo, sc, cnt, sm, bmin, bmax)

    def _histogram_sq_error(self, idx, cnt, lo, width, g0, step, levels) -> np.ndarray:
        return reference.histogram_sq_error(idx, cnt, lo, width, g0, step, levels)

    def _histogram_kl(self, hist, start, end, levels) -> np.ndarray:
        return reference.histogram_kl(hist, start, end, levels)

    def _search_scales(self, rows, dgrid, qmin, qmax) -> tuple[np.ndarray, np.ndarray]:
        return reference.search_scales(rows, dgrid, qmin, qmax)


    # -- low-bit GEMM (issue 13): weights kept packed, computed on directly -------------------------------
    # A kernel packs a weight once (pack_lowbit, cached by qcore.ops.qlinear on the QTensor) and multiplies
    # float activations with it (lowbit_linear).  The arithmetic every implementation follows (the numpy
    # kernel is the reference; docs/gemm.md "Low-bit weights"):
    #   weight:      W[n, k] = scale[n, g] * (v[n, k] - zero[n, g]),  g = k // group_size, v in 0..255 where
    #                v = values[n, k] (linear), or v = t8 + 128 with t8 the int8 table entry (tables, below)
    #   activations: each row cut into blocks of 32 k (zero padded); per block sa = max|x| / 127 (float32;
    #                0 when below 1e-30), q = clamp(rint(x * (1 / sa)), -127, 127), asum = sum(q)
    #   product:     y[m, n] = sum_g [ sum_{b in g} float(dot_b) * (sa_b * scale[n, g])
    #                                  - S[m, g] * (scale[n, g] * zero[n, g]) ] + bias[n]
    #                dot_b = sum_{k in b} q[m, k] * v[n, k] (exact integer); S = sum_{b in g} sa_b * asum_b
    # Float sums run block by block in that order; SIMD kernels may fuse the multiply-add (tolerance ~1e-6).
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
        if this kernel cannot give it back; lets a holder drop its own copy of the scales."""
        self._lowbit_shape(packed_weight)
        return self._lowbit_scales(packed_weight)

    def _lowbit_scales(self, packed_weight):
        return None

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
        x = as_float32(x, "x", check_finite=False)
        n, k = self._lowbit_shape(packed)
        if x.ndim != 2 or x.shape[1] != k:
            raise ValueError(f"x must have shape (M, {k}), got {x.shape}")
        if bias is not None:
            bias = np.ascontiguousarray(np.asarray(bias, dtype=np.float32))
            if bias.shape != (n,):
                raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
        if x.shape[0] == 0:
            out = np.zeros((0, n), np.float32)
            return out
        return self._lowbit_linear(x, packed, bias)

    def _lowbit_shape(self, packed) -> tuple[int, int]:
        """(N, K) of a packed low-bit weight of this kernel."""
        raise NotImplementedError(f"kernel {self.name!r} has no low-bit GEMM")

    def _pack_lowbit(self, values, bits, scale, zero, group_size, table_bytes):
        """``table_bytes``: None, or uint8 (R, G_t, 16) with R = N or 1 (``v = t8 + 128``, entries past
        2**bits unused); then ``scale``/``zero`` are per (n, table group) and ``zero`` is 128."""
        raise NotImplementedError(f"kernel {self.name!r} has no low-bit GEMM")

    def _lowbit_linear(self, x2, packed, bias):
        raise NotImplementedError(f"kernel {self.name!r} has no low-bit GEMM")

    def _pack_lowbit_packed(self, packed, n, k, bits, flip, scale, zero, group_size, table_bytes):
        """Default: unpack the whole stream (the reference kernel keeps unpacked values anyway)."""
        values = self.unpack(packed, bits, n * k, False).reshape(n, k)
        if flip:
            values ^= np.uint8(flip)
        return self._pack_lowbit(values, bits, scale, zero, group_size, table_bytes)

    def _unpack_lowbit(self, packed_weight, flip):
        raise NotImplementedError(f"kernel {self.name!r} cannot unpack its low-bit layout")


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

_instances: dict[type, Kernel] = {}
_instances_lock = threading.Lock()


def kernel_instance(cls: type[Kernel]) -> Kernel:
    """Kernels are stateless: one shared instance per class."""
    inst = _instances.get(cls)
    if inst is None:
        with _instances_lock:
            inst = _instances.setdefault(cls, cls())
    return inst


