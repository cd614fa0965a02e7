"""``qgemm`` and ``qlinear``: validation at the Python boundary, then the ``qcore_plugins._gemm`` kernels.

Conventions (documented in docs/gemm.md):

* ``qgemm(a, b)`` computes ``C = (A - za) @ (B - zb).T`` — ``b`` has the torch ``Linear`` layout ``(N, K)``,
  one row per output column.  Inputs are int8 or uint8, the result is int32, exact.
* ``qlinear(x, w, bias)`` quantizes each row of ``x`` (per-row asymmetric uint8, dynamic), multiplies with the
  weight codes in int32, applies the gemmlowp zero-point correction and scales back with the per-row activation
  scale and the per-tensor or per-channel weight scale, then adds ``bias``.
"""
from __future__ import annotations

import math

import operator

import numpy as np

from ..quantization import forms
from ..validation import as_float32, check_all_finite, non_finite_error

_INT32_MAX = (1 << 31) - 1
_CACHE_KEY = "qcore.ops.qlinear"


def _ext():
    try:
        from qcore_plugins import _gemm
    except ImportError as exc:  # pragma: no cover - only without a built extension
        raise ImportError(
            "qcore.ops needs the compiled extension qcore_plugins._gemm; build it with "
            "`python setup.py build_ext --inplace` or `pip install .`"
        ) from exc
    return _gemm


# -------------------------------------------------------------------------------------------- qgemm

def _int_matrix(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of int8 or uint8, got {type(x).__name__}")
    if x.dtype not in (np.int8, np.uint8):
        raise TypeError(f"{name} must have dtype int8 or uint8, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    return np.ascontiguousarray(x)  # Fortran-order and strided views are copied


_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _zero_points(z, n: int, dtype: np.dtype, name: str):
    """``z`` as a Python int (scalar) or an int64 array (n,), each within the range of ``dtype``."""
    lo, hi = _RANGE[np.dtype(dtype)]
    if np.ndim(z) == 0:
        try:
            v = operator.index(z)
        except TypeError:
            raise TypeError(f"{name} must be an integer or a 1-D integer array, got {z!r}") from None
        if not lo <= v <= hi:
            raise ValueError(f"{name} must lie in [{lo}, {hi}] (the range of {np.dtype(dtype).name})")
        return v
    else:
        arr = np.asarray(z)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        if arr.shape != (n,):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {arr.shape}")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}] (the range of {np.dtype(dtype).name})")
    return arr


def _max_dev(z, dtype) -> int:
    """max |v - z| over v in the dtype range and z in the zero points (a scalar or an array)."""
    lo, hi = _RANGE[np.dtype(dtype)]
    if isinstance(z, int):
        return max(hi - z, z - lo)
    if z.size == 0:
        return 0
    return int(max(hi - z.min(), z.max() - lo))


def pack_weights(b: np.ndarray):
    """Pack int8/uint8 weights ``b`` of shape (N, K) once for repeated ``qgemm(a, packed)`` calls."""
    b = _int_matrix(b, "b")
    if b.shape[0] == 0 or b.shape[1] == 0:
        raise ValueError(f"b must be non-empty to be packed, got shape {b.shape}")
    return _ext().pack_b(b)


def qgemm(a, b, a_zero_point=0, b_zero_point=0) -> np.ndarray:
    """Exact int8 matrix product ``C[m, n] = sum_k (a[m, k] - za) * (b[n, k] - zb)`` as int32 (M, N).

    :param a: activations, int8 or uint8, shape (M, K)
    :param b: weights, int8 or uint8, shape **(N, K)** (the torch ``Linear`` layout: ``C = A @ B.T``), or the
        result of :func:`pack_weights`
    :param a_zero_point: an integer, or an array of shape (M,) (one per row), within the range of ``a.dtype``
    :param b_zero_point: an integer, or an array of shape (N,) (one per output column), within ``b``'s range
    :raises TypeError: wrong types or dtypes
    :raises ValueError: wrong shapes, zero points out of range, or ``K`` so large the int32 result could
        overflow (``K * max|a - za| * max|b - zb| > 2**31 - 1``; e.g. K <= 33025 is always safe, K <= 65793
        for uint8 x int8 without zero points)

    Non-contiguous inputs are copied.  Empty M or N give an empty result, K == 0 gives zeros.
    """
    g = _ext()
    a = _int_matrix(a, "a")
    packed = b if isinstance(b, g.PackedB) else None
    if packed is None:
        b = _int_matrix(b, "b")
        n, kb = b.shape
        b_dtype = b.dtype
    else:
        n, kb = packed.n, packed.k
        b_dtype = np.dtype(np.uint8) if packed.flipped else np.dtype(np.int8)
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
        packed = g.pack_b(b)
    # shift into the kernel's domains: uint8 activations, int8 weights
    za_u = za + (128 if a.dtype == np.int8 else 0)
    zb_s = zb - (128 if packed.flipped else 0)
    za_arr = np.full(m, za_u, np.int32) if isinstance(za_u, int) else za_u.astype(np.int32)
    zb_arr = None
    if np.any(zb_s):
        zb_arr = np.zeros(packed.np_, np.int32)
        zb_arr[:n] = zb_s
    out = np.empty((m, n), np.int32)
    g.gemm_s32(a, packed, za_arr, zb_arr, out)
    return out


# -------------------------------------------------------------------------------------------- qlinear

class _Plan:
    """How one weight QTensor runs in qlinear: the packed int8 GEMM, or the low-bit kernel (``lowbit``)."""

    __slots__ = ("mode", "packed", "sw", "zb", "n", "k", "reason", "lowbit")

    def __init__(self, mode, n, k, packed=None, sw=None, zb=None, reason="", lowbit=None):
        self.mode, self.n, self.k = mode, n, k
        self.packed, self.sw, self.zb, self.reason, self.lowbit = packed, sw, zb, reason, lowbit


def _lowbit_plan(w, reason) -> _Plan:
    from . import lowbit

    lp = lowbit.plan_for(w)
    return _Plan("lowbit", w.shape[0], w.shape[1], reason=reason or lp.reason, lowbit=lp)


def _build_plan(w, isa: str) -> _Plan:
    from . import lowbit

    n, k = w.shape
    if n == 0 or k == 0:
        return _Plan("empty", n, k)
    # the int8 GEMM takes 8-bit codes that decode affinely per tensor / per output channel; everything else
    # (fewer bits, groups, tables) runs on the low-bit kernel, which keeps the weight packed at its bit width
    form = lowbit.form_of(w)
    lay = w.layout
    if (not isinstance(form, forms.Affine) or form.offset is not None or w.bits != 8
            or not (lay.granularity == "tensor" or (lay.granularity == "channel" and lay.axis == 0))):
        return _lowbit_plan(w, "")
    if not lowbit.form_agrees(w, form):
        return _lowbit_plan(w, "codes do not decode as declared")
    codes = np.ascontiguousarray(w.codes)
    scale = np.broadcast_to(form.scale.reshape(-1), (n,)).astype(np.float32)
    zp = np.broadcast_to(form.zero_points().reshape(-1).astype(np.int64), (n,))
    # exactness of the int32 accumulator: |a - za| <= 255, |b - zb| <= bmax (from per-row extremes: no
    # full-size temporary of the codes)
    lo = codes.min(axis=1).astype(np.int64)
    hi = codes.max(axis=1).astype(np.int64)
    bmax = int(np.maximum(np.abs(lo - zp), np.abs(hi - zp)).max())
    if k * 255 * bmax > _INT32_MAX:
        return _lowbit_plan(w, "K too large for an exact int32 accumulator")
    g = _ext()
    packed = g.pack_b(codes, isa)
    sw = np.zeros(packed.np_, np.float32)
    sw[:n] = scale
    zb = None
    zb_s = zp - (128 if packed.flipped else 0)
    if np.any(zb_s):
        zb = np.zeros(packed.np_, np.int32)
        zb[:n] = zb_s
    return _Plan("int", n, k, packed=packed, sw=sw, zb=zb)


def _plan_for(w) -> _Plan:
    isa = _ext().ISA.copy  # the int8 GEMM copy of the current level: one packed weight per copy
    key = f"{_CACHE_KEY}/{isa}"
    plan = w.cache.get(key)
    if plan is None:
        plan = w.cache.setdefault(key, _build_plan(w, isa))
    return plan


def qlinear_path(w) -> str:
    """How :func:`qlinear` computes with the 2-D weight ``w`` (building its cached plan if needed): ``"int8"`` (the
    int8 GEMM: 8-bit codes that decode affinely per tensor / output channel), ``"lowbit"`` (the low-bit kernel:
    other affine forms and tables of at most 4 bits), ``"rows"`` (blocks of rows decoded by the scheme) or
    ``"empty"``."""
    from ..tensor import QTensor

    if not isinstance(w, QTensor) or len(w.shape) != 2:
        raise TypeError("w must be a 2-D qcore.QTensor")
    plan = _plan_for(w)
    if plan.mode == "lowbit":
        return "lowbit" if plan.lowbit.mode == "kernel" else "rows"
    return {"int": "int8"}.get(plan.mode, plan.mode)


def hold_packed_once(w) -> bool:
    """Build ``w``'s ``qlinear`` weight now and make it the only copy of the codes.

    The packed GEMM weight (int8 panels, or the low-bit bit planes) already holds every code, so the QTensor's
    own stored codes are dropped (:meth:`qcore.QTensor.hold_codes_in`) and rebuilt from that layout when read
    (``w.packed``, ``w.codes``, state dicts, saving; the same bytes); so is the ``scale`` parameter of a
    low-bit linear weight when the layout gives it back exactly (it keeps the scales in its panel order).  The adapters call it (torch ``QLinear``):
    a module then holds one packed copy of its weight.  Returns True when the codes are held by the kernel
    layout (already, or now), False for weights computed by the rows path (they keep their own codes).
    Idempotent; errors building the plan propagate (the same ones the first ``qlinear`` would raise).
    """
    from ..tensor import QTensor

    if not isinstance(w, QTensor):
        raise TypeError(f"w must be a qcore.QTensor, got {type(w).__name__}")
    if not w.holds_codes:
        return True
    if len(w.shape) != 2 or 0 in w.shape:
        return False
    plan = _plan_for(w)
    # the closures hold the layout, never ``w`` (no reference cycle: a dropped module frees its weight at once)
    if plan.mode == "int":
        packed = plan.packed
        if packed.flipped == w.signed:  # pragma: no cover - pack_b keeps the input's dtype (uint8: flipped)
            return False
        w.hold_codes_in(lambda: _ext().unpack_b(packed))
        return True
    if plan.mode == "lowbit" and plan.lowbit.mode == "kernel":
        lp, signed = plan.lowbit, bool(w.signed)
        params = {}
        scale = w.params.get("scale")
        if scale is not None and scale.size > 1:  # the layout keeps the scales too (in panel order)
            shape, dtype = scale.shape, scale.dtype
            again = lp.stored_scale(shape, dtype)
            if again is not None and again.dtype == dtype and np.array_equal(again, scale):  # exactly: else keep it
                params["scale"] = lambda: lp.stored_scale(shape, dtype)
        w.hold_codes_in(lambda: lp.stored_codes(signed), params)
        return True
    return False


def qlinear(x, w, bias=None) -> np.ndarray:
    """``y = x @ dequantize(w).T + bias`` computed on the integer codes; float32 of shape ``(..., N)``.

    :param x: float activations of shape ``(..., K)`` (float16/float64/int are converted to float32;
        non-contiguous arrays are copied).  NaN/Inf raise :class:`qcore.InputError`.
    :param w: a :class:`qcore.QTensor` of shape ``(N, K)`` (torch ``Linear`` layout): the ``linear`` scheme at
        1-8 bits (any granularity, symmetric or affine), or any scheme whose quantizer declares
        ``lookup_table(params)`` (``kmeans``, ``log``, plugins; docs/plugins.md)
    :param bias: ``None`` or shape ``(N,)``

    8-bit linear weights per tensor / per output channel run the int8 GEMM: activations quantized dynamically
    **per row** to asymmetric uint8 (scale ``(max(0, max x) - min(0, min x)) / 255``, rounding half to even).
    Every other weight runs the low-bit kernel on its codes kept packed at their bit width (activations quantized
    per block of 32 to int8, scale ``max|x| / 127``; tables decoded in the inner loop), or, for what that kernel
    cannot express, blocks of rows decoded to float one at a time (docs/gemm.md, "Low-bit weights").  The
    packed weight is cached in ``w.cache``: do not modify ``w.params`` in place after the first call.
    """
    from ..tensor import QTensor

    if not isinstance(w, QTensor):
        raise TypeError(f"w must be a qcore.QTensor (from qcore.quantize(w, 'linear', ...)), got {type(w).__name__}")
    if len(w.shape) != 2:
        raise ValueError(f"w must be 2-D (N, K) like a torch Linear weight, got shape {w.shape}")
    n, k = w.shape
    # NaN/Inf are detected inside the kernel's quantization pass (no extra pass over x); see below
    x = as_float32(x, "x", check_finite=False)
    if x.ndim == 0:
        raise ValueError(f"x must have shape (..., {k}), got a 0-d array")
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features (last axis) but w has shape (N={n}, K={k}); expected x of shape (..., {k})")
    if bias is not None:
        bias = as_float32(bias, "bias")
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},) (one per output feature), got {bias.shape}")
    lead = x.shape[:-1]
    m = math.prod(lead)  # (np.prod costs microseconds: visible at M = 1)
    x2 = x.reshape(m, k)
    plan = _plan_for(w)
    if m == 0 or n == 0 or plan.mode == "empty":
        out = np.zeros((m, n), np.float32)
        if bias is not None:
            out += bias
        return out.reshape(*lead, n)
    if plan.mode == "lowbit":
        from . import lowbit

        return lowbit.run(plan.lowbit, w, x2, bias).reshape(*lead, n)
    bias_p = None
    if bias is not None:
        bias_p = np.zeros(plan.packed.np_, np.float32)
        bias_p[:n] = bias
    out = np.empty((m, n), np.float32)
    if _ext().qlinear_f32(x2, plan.packed, plan.sw, plan.zb, bias_p, out) >= 0:
        raise non_finite_error(x2, "x")  # the kernel saw NaN/Inf (the one message, qcore/validation.py)
    return out.reshape(*lead, n)
