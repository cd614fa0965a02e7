"""The ``int8_gemm`` capability: the packed int8 GEMM behind ``qcore.ops.qgemm`` and the 8-bit ``qcore.ops.qlinear``
— with the numpy reference beside it (the ``_`` methods' defaults, exact in int64).

Numerics every implementation follows bit for bit (docs/gemm.md):

* ``qgemm(a, b, za, zb)``: ``C[m, n] = sum_k (a[m, k] - za) * (b[n, k] - zb)`` exactly, as int32 (the public
  method refuses shapes whose sum could overflow int32).
* ``int8_linear(x, weight, bias)`` for a weight made by ``int8_weight(codes, scale, zero_point)`` (it decodes as
  ``(codes[n, k] - zero_point[n]) * scale[n]``): each row of ``x`` is quantized to uint8 on its own, with
  ``lo = min(0, min x)``, ``hi = max(0, max x)``, ``s = float32((float64(hi) - float64(lo)) / 255)`` (1 when
  ``hi == lo``, at least ``1e-30``), ``inv = float32(1) / s``, ``z = clamp(rint(-lo * inv), 0, 255)`` and codes
  ``q = clamp(rint(x * inv) + z, 0, 255)`` (float32 products, half to even); then ``acc = sum_k (q - z) *
  (codes - zero_point)`` exactly and ``y = float32(acc) * scale[n] * s + bias[n]`` (float32, in that order).

Packed objects are opaque and valid only for the kernel that made them; ``int8_shape`` reads their size.
"""
from __future__ import annotations

import operator

import numpy as np

from ..validation import non_finite_error
from .core import KernelBase, linear_operands

_INT32_MAX = (1 << 31) - 1
_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _int_matrix(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of int8 or uint8, got {type(x).__name__}")
    if x.dtype not in (np.int8, np.uint8):
        raise TypeError(f"{name} must have dtype int8 or uint8, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    return np.ascontiguousarray(x)  # Fortran-order and strided views are copied


def _zero_points(z, n: int, dtype: np.dtype, name: str) -> np.ndarray:
    """``z`` (an integer, or an integer array (n,)) as int64 (n,), each within the range of ``dtype``."""
    lo, hi = _RANGE[np.dtype(dtype)]
    if np.ndim(z) == 0:
        try:
            v = operator.index(z)
        except TypeError:
            raise TypeError(f"{name} must be an integer or a 1-D integer array, got {z!r}") from None
        if not lo <= v <= hi:
            raise ValueError(f"{name} must lie in [{lo}, {hi}] (the range of {np.dtype(dtype).name})")
        return np.full(n, v, np.int64)
    arr = np.asarray(z)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}] (the range of {np.dtype(dtype).name})")
    return arr


def _max_dev(z: np.ndarray, dtype) -> int:
    """max |v - z| over v in the dtype range and z in the zero points."""
    lo, hi = _RANGE[np.dtype(dtype)]
    if z.size == 0:
        return 0
    return int(max(hi - z.min(), z.max() - lo))


class Int8GemmOps(KernelBase):
    """The ``int8_gemm`` capability."""

    capability = "int8_gemm"

    # -- public, validated operations ----------------------------------------------------------------
    def pack_int8(self, b):
        """Pack int8/uint8 weights ``b`` of shape (N, K) (the torch ``Linear`` layout) once for repeated
        :meth:`qgemm` calls; the result is opaque and valid only for this kernel."""
        b = _int_matrix(b, "b")
        if b.shape[0] == 0 or b.shape[1] == 0:
            raise ValueError(f"b must be non-empty to be packed, got shape {b.shape}")
        return self._pack_int8(b)

    def int8_shape(self, packed) -> tuple[int, int, np.dtype]:
        """``(N, K, dtype)`` of a weight packed by :meth:`pack_int8` or :meth:`int8_weight` of this kernel."""
        n, k, dtype = self._int8_info(packed)
        return int(n), int(k), np.dtype(dtype)

    def qgemm(self, a, b, a_zero_point=0, b_zero_point=0) -> np.ndarray:
        """Exact ``C[m, n] = sum_k (a[m, k] - za) * (b[n, k] - zb)`` as int32 (M, N); ``b`` an int8/uint8 (N, K)
        array or the result of :meth:`pack_int8`.  See ``qcore.ops.qgemm`` for the arguments and errors."""
        a = _int_matrix(a, "a")
        if isinstance(b, np.ndarray):
            b = _int_matrix(b, "b")
            (n, kb), b_dtype, packed = b.shape, b.dtype, None
        else:
            n, kb, b_dtype = self.int8_shape(b)
            packed = b
        m, k = a.shape
        if k != kb:
            raise ValueError(f"a has K={k} columns but b (N, K) has K={kb}: b must be given as (N, K), i.e. C = a @ b.T")
        za = _zero_points(a_zero_point, m, a.dtype, "a_zero_point")
        zb = _zero_points(b_zero_point, n, b_dtype, "b_zero_point")
        bound = k * _max_dev(za, a.dtype) * _max_dev(zb, b_dtype)
        if bound > _INT32_MAX:
            raise ValueError(
                f"K={k} is too large for an exact int32 result with these dtypes/zero points "
                f"(worst case {bound} > 2**31-1); split K and add the partial products in int64"
            )
        if m == 0 or n == 0 or k == 0:
            return np.zeros((m, n), np.int32)
        if packed is None:
            packed = self._pack_int8(b)
        return self._qgemm(a, packed, za, zb)

    def int8_weight(self, codes, scale, zero_point=None):
        """A weight for :meth:`int8_linear`: int8/uint8 ``codes`` (N, K) decoding as ``(codes - zero_point[n]) *
        scale[n]`` (float32 ``scale`` (N,), integer ``zero_point`` (N,) or None for 0).  The caller guarantees
        the int32 accumulator cannot overflow (``K * 255 * max|codes - zero_point| <= 2**31 - 1``)."""
        codes = _int_matrix(codes, "codes")
        n, k = codes.shape
        if n == 0 or k == 0:
            raise ValueError(f"codes must be non-empty, got shape {codes.shape}")
        scale = np.ascontiguousarray(np.asarray(scale, np.float32).reshape(-1))
        if scale.shape != (n,) or not np.isfinite(scale).all():
            raise ValueError(f"scale must hold {n} finite values (one per output row)")
        zp = np.zeros(n, np.int64) if zero_point is None else np.asarray(zero_point).reshape(-1)
        if zp.dtype.kind not in "iu" or zp.shape != (n,):
            raise ValueError(f"zero_point must hold {n} integers (one per output row)")
        return self._int8_weight(codes, scale, zp.astype(np.int64))

    def int8_linear(self, x, weight, bias=None) -> np.ndarray:
        """``y = x @ W.T + bias`` (float32 (M, N)) with the activations quantized per row (module doc);
        NaN/Inf in ``x`` raise :class:`qcore.InputError`."""
        n, k, _ = self.int8_shape(weight)
        x, bias = linear_operands(x, n, k, bias)
        if x.shape[0] == 0:
            return np.zeros((0, n), np.float32)
        return self._int8_linear(x, weight, bias)

    def unpack_int8(self, packed) -> np.ndarray:
        """The codes a weight was packed from (:meth:`pack_int8` or :meth:`int8_weight`): (N, K), their dtype.
        Lets a holder keep only the packed weight and regenerate the codes on demand."""
        self._int8_info(packed)
        return self._unpack_int8(packed)

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _pack_int8(self, b):
        return ReferenceInt8(b)

    def _int8_info(self, packed):
        """``(N, K, dtype of the codes)``; ``TypeError`` for an object this kernel did not make."""
        if not isinstance(packed, ReferenceInt8):
            raise self._foreign("packed", packed)
        return packed.codes.shape + (packed.codes.dtype,)

    def _qgemm(self, a, packed, za, zb) -> np.ndarray:
        """``a`` int8/uint8 (M, K), ``za`` int64 (M,), ``zb`` int64 (N,); M, N, K >= 1."""
        acc = (a.astype(np.int64) - za[:, None]) @ (packed.codes.astype(np.int64) - zb[:, None]).T
        return acc.astype(np.int32)

    def _int8_weight(self, codes, scale, zero_point):
        return ReferenceInt8(codes, scale, zero_point)

    def _int8_linear(self, x2, weight, bias) -> np.ndarray:
        """``x2`` C-contiguous float32 (M, K), M >= 1; ``bias`` None or float32 (N,)."""
        if not np.isfinite(x2).all():
            raise non_finite_error(x2, "x")
        q, sa, za = quantize_rows(x2)
        acc = (q.astype(np.int64) - za[:, None]) @ (weight.codes.astype(np.int64) - weight.zero_point[:, None]).T
        y = acc.astype(np.float32) * weight.scale[None, :] * sa[:, None]
        if bias is not None:
            y = y + bias
        return y.astype(np.float32)

    def _unpack_int8(self, packed) -> np.ndarray:
        return packed.codes.copy()


class ReferenceInt8:
    """The reference's packed int8 weight: the codes themselves (and, for ``int8_linear``, scale and zero point)."""

    def __init__(self, codes, scale=None, zero_point=None):
        self.codes = np.array(codes, order="C")
        self.scale, self.zero_point = scale, zero_point

    @property
    def nbytes(self):
        return self.codes.nbytes + sum(p.nbytes for p in (self.scale, self.zero_point) if p is not None)


def quantize_rows(x2: np.ndarray):
    """Per-row asymmetric uint8 activations of ``int8_linear``: ``(codes (M, K) uint8, scale (M,) float32,
    zero_point (M,) int64)`` (module doc)."""
    lo = np.minimum(x2.min(axis=1), np.float32(0)).astype(np.float32)
    hi = np.maximum(x2.max(axis=1), np.float32(0)).astype(np.float32)
    s = np.where(hi > lo, ((hi.astype(np.float64) - lo.astype(np.float64)) / 255.0).astype(np.float32), np.float32(1))
    s = np.maximum(s, np.float32(1e-30)).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    z = np.clip(np.rint((-lo * inv).astype(np.float32)), 0, 255).astype(np.int64)
    q = np.clip(np.rint((x2 * inv[:, None]).astype(np.float32)).astype(np.int64) + z[:, None], 0, 255).astype(np.uint8)
    return q, s, z
