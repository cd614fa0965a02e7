"""``qgemm`` and ``qlinear``: validation at the Python boundary, then a kernel's ``int8_gemm`` / ``lowbit_gemm``
capability (docs/contracts.md §1: ops reach kernels only through the Kernel plugin, by capability).

Conventions (documented in docs/gemm.md):

* ``qgemm(a, b)`` computes ``C = (A - za) @ (B - zb).T`` — ``b`` has the torch ``Linear`` layout ``(N, K)``,
  one row per output column.  Inputs are int8 or uint8, the result is int32, exact.
* ``qlinear(x, w, bias)`` quantizes each row of ``x`` (per-row asymmetric uint8, dynamic), multiplies with the
  weight codes in int32, applies the gemmlowp zero-point correction and scales back with the per-row activation
  scale and the per-tensor or per-channel weight scale, then adds ``bias``.

``kernel=None`` (every function here) takes the available kernel of highest priority that declares the
capability (``qcore.get_kernel(capability=...)``: ``cython``); ``kernel="numpy"`` runs the reference.
"""
from __future__ import annotations

import math

import numpy as np

from ..api import get_kernel
from ..errors import KernelNotFound
from ..plugin.manager import get_manager
from ..quantization import forms
from ..validation import as_float32

_INT32_MAX = (1 << 31) - 1
_CACHE_KEY = "qcore.ops.qlinear"


# -------------------------------------------------------------------------------------------- qgemm

def pack_weights(b: np.ndarray, *, kernel=None):
    """Pack int8/uint8 weights ``b`` of shape (N, K) once for repeated ``qgemm(a, packed)`` calls (with the same
    ``kernel``: packed weights are valid only for the kernel that made them)."""
    return get_kernel(kernel, capability="int8_gemm").pack_int8(b)


def qgemm(a, b, a_zero_point=0, b_zero_point=0, *, kernel=None) -> np.ndarray:
    """Exact int8 matrix product ``C[m, n] = sum_k (a[m, k] - za) * (b[n, k] - zb)`` as int32 (M, N).

    :param a: activations, int8 or uint8, shape (M, K)
    :param b: weights, int8 or uint8, shape **(N, K)** (the torch ``Linear`` layout: ``C = A @ B.T``), or the
        result of :func:`pack_weights`
    :param a_zero_point: an integer, or an array of shape (M,) (one per row), within the range of ``a.dtype``
    :param b_zero_point: an integer, or an array of shape (N,) (one per output column), within ``b``'s range
    :param kernel: a kernel declaring ``int8_gemm`` (name or instance); None: the default
    :raises TypeError: wrong types or dtypes
    :raises ValueError: wrong shapes, zero points out of range, or ``K`` so large the int32 result could
        overflow (``K * max|a - za| * max|b - zb| > 2**31 - 1``; e.g. K <= 33025 is always safe, K <= 65793
        for uint8 x int8 without zero points)

    Non-contiguous inputs are copied.  Empty M or N give an empty result, K == 0 gives zeros.
    """
    return get_kernel(kernel, capability="int8_gemm").qgemm(a, b, a_zero_point, b_zero_point)


# -------------------------------------------------------------------------------------------- qlinear

class _Plan:
    """How one weight QTensor runs in qlinear: ``mode`` "int8" (``weight`` from ``kernel.int8_weight``), "lowbit"
    (``lowbit``: a :class:`qcore.ops.lowbit.LowbitPlan`, the low-bit kernel or the rows path) or "empty"."""

    __slots__ = ("mode", "kernel", "weight", "n", "k", "reason", "lowbit")

    def __init__(self, mode, n, k, kernel=None, weight=None, reason="", lowbit=None):
        self.mode, self.n, self.k = mode, n, k
        self.kernel, self.weight, self.reason, self.lowbit = kernel, weight, reason, lowbit


def _lowbit_plan(w, kl, reason) -> _Plan:
    from . import lowbit

    lp = lowbit.plan_for(w, kl) if kl is not None else lowbit.build_plan(w, None)
    return _Plan("lowbit", w.shape[0], w.shape[1], reason=reason or lp.reason, lowbit=lp)


def _build_plan(w, k8, kl) -> _Plan:
    from . import lowbit

    n, k = w.shape
    if n == 0 or k == 0:
        return _Plan("empty", n, k)
    # the int8 GEMM takes 8-bit codes that decode affinely per tensor / per output channel; everything else
    # (fewer bits, groups, tables) runs on the low-bit kernel, which keeps the weight packed at its bit width
    form = lowbit.form_of(w)
    lay = w.layout
    if (k8 is None or not isinstance(form, forms.Affine) or form.offset is not None or w.bits != 8
            or not (lay.granularity == "tensor" or (lay.granularity == "channel" and lay.axis == 0))):
        return _lowbit_plan(w, kl, "" if k8 is not None else "no kernel with the int8_gemm capability")
    if not lowbit.form_agrees(w, form):
        return _lowbit_plan(w, kl, "codes do not decode as declared")
    codes = np.ascontiguousarray(w.codes)
    scale = np.broadcast_to(form.scale.reshape(-1), (n,)).astype(np.float32)
    zp = np.broadcast_to(form.zero_points().reshape(-1).astype(np.int64), (n,))
    # exactness of the int32 accumulator: |a - za| <= 255, |b - zb| <= bmax (from per-row extremes: no
    # full-size temporary of the codes)
    lo = codes.min(axis=1).astype(np.int64)
    hi = codes.max(axis=1).astype(np.int64)
    bmax = int(np.maximum(np.abs(lo - zp), np.abs(hi - zp)).max())
    if k * 255 * bmax > _INT32_MAX:
        return _lowbit_plan(w, kl, "K too large for an exact int32 accumulator")
    return _Plan("int8", n, k, kernel=k8, weight=k8.int8_weight(codes, scale, zp))


def _supporting(kernel, capability):
    return kernel if kernel is not None and kernel.supports(capability) else None


def _default_kernels():
    """(int8 kernel, low-bit kernel, plan-cache prefix) of qlinear with ``kernel=None``: by capability."""
    found = []
    for cap in ("int8_gemm", "lowbit_gemm"):
        try:
            found.append(get_kernel(capability=cap))
        except KernelNotFound:
            found.append(None)
    k8, kl = found
    return k8, kl, f"{_CACHE_KEY}/{k8.name if k8 else '-'}+{kl.name if kl else '-'}/"


def _kernels(kernel):
    """(int8 kernel or None, low-bit kernel or None, plan-cache prefix) for a ``kernel=`` argument."""
    if kernel is None:
        return get_manager().memo(_DEFAULTS, _default_kernels)
    kern = get_kernel(kernel)
    k8, kl = _supporting(kern, "int8_gemm"), _supporting(kern, "lowbit_gemm")
    if k8 is None and kl is None:
        raise KernelNotFound(f"kernel {kern.name!r} declares neither int8_gemm nor lowbit_gemm: it cannot run qlinear")
    return k8, kl, f"{_CACHE_KEY}/{kern.name}/"


_DEFAULTS = ("qcore.ops.qlinear", "kernels")


def _plan_for(w, kernel=None) -> _Plan:
    k8, kl, prefix = _kernels(kernel)
    key = prefix + k8.isa if k8 is not None else prefix  # one packed int8 weight per instruction-set level
    plan = w.cache.get(key)
    if plan is None:
        plan = w.cache.setdefault(key, _build_plan(w, k8, kl))
    return plan


def qlinear_path(w, *, kernel=None) -> str:
    """How :func:`qlinear` computes with the 2-D weight ``w`` (building its cached plan if needed): ``"int8"`` (the
    int8 GEMM: 8-bit codes that decode affinely per tensor / output channel), ``"lowbit"`` (the low-bit kernel:
    other affine forms and tables of at most 4 bits), ``"rows"`` (blocks of rows decoded by the scheme) or
    ``"empty"``."""
    from ..tensor import QTensor

    if not isinstance(w, QTensor) or len(w.shape) != 2:
        raise TypeError("w must be a 2-D qcore.QTensor")
    plan = _plan_for(w, kernel)
    if plan.mode == "lowbit":
        return "lowbit" if plan.lowbit.mode == "kernel" else "rows"
    return plan.mode


def hold_packed_once(w, *, kernel=None) -> bool:
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
    plan = _plan_for(w, kernel)
    # the closures hold the layout, never ``w`` (no reference cycle: a dropped module frees its weight at once)
    if plan.mode == "int8":
        kern, weight = plan.kernel, plan.weight
        w.hold_codes_in(lambda: kern.unpack_int8(weight))
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


def qlinear(x, w, bias=None, *, kernel=None) -> np.ndarray:
    """``y = x @ dequantize(w).T + bias`` computed on the integer codes; float32 of shape ``(..., N)``.

    :param x: float activations of shape ``(..., K)`` (float16/float64/int are converted to float32;
        non-contiguous arrays are copied).  NaN/Inf raise :class:`qcore.InputError`.
    :param w: a :class:`qcore.QTensor` of shape ``(N, K)`` (torch ``Linear`` layout), of any scheme: one whose
        codes decode as an ``Affine`` or ``Table`` form (``linear`` 1-8 bits of any granularity, ``kmeans``,
        ``log``, plugins; docs/plugins.md) runs on the integer kernels, others on blocks of decoded rows
    :param bias: ``None`` or shape ``(N,)``
    :param kernel: the kernel to run (a name or instance declaring ``int8_gemm`` and/or ``lowbit_gemm``);
        None: the default of each capability (``qcore.get_kernel(capability=...)``); ``"numpy"``: the reference

    8-bit affine weights per tensor / per output channel run the int8 GEMM: activations quantized dynamically
    **per row** to asymmetric uint8 (scale ``(max(0, max x) - min(0, min x)) / 255``, rounding half to even).
    Every other weight runs the low-bit kernel on its codes kept packed at their bit width (activations quantized
    per block of 32 to int8, scale ``max|x| / 127``; tables decoded in the inner loop), or, for what that kernel
    cannot express, blocks of rows decoded to float one at a time (docs/gemm.md, "Low-bit weights").  The
    packed weight is cached in ``w.cache`` (per kernel): do not modify ``w.params`` in place after the first call.
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
    plan = _plan_for(w, kernel)
    if m == 0 or n == 0 or plan.mode == "empty":
        out = np.zeros((m, n), np.float32)
        if bias is not None:
            out += bias
        return out.reshape(*lead, n)
    if plan.mode == "lowbit":
        from . import lowbit

        return lowbit.run(plan.lowbit, w, x2, bias).reshape(*lead, n)
    # the kernel's own checks are not repeated (x2 and bias validated above): at M = 1 they would show
    return plan.kernel._int8_linear(x2, plan.weight, bias).reshape(*lead, n)
