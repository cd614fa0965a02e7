"""Low-bit ``qlinear``: from a :class:`qcore.QTensor` to a kernel's packed low-bit weight, and the slower path.

Which weights take which path (docs/gemm.md, "Low-bit weights"):

* codes that decode as an ``Affine`` form (``decodes_as``, docs/contracts.md §2; e.g. ``linear``) at 1-7 bits
  (and 8 bits with groups), per tensor / per output channel / per group of a multiple of 32: the low-bit kernel
  (a kernel's ``lowbit_gemm`` capability, ``Kernel.pack_lowbit``) on the codes' bit patterns, with
  ``W = scale * (v - zero)``: signed codes are offset to unsigned (``v = code + 2**(bits-1)``), the zero point
  shifted alike (absent zero point: 0; an offset folded into it); a 1-bit ``(+alpha, -alpha)`` table (binary
  ``linear``) is ``2*alpha*(v - 1/2)``.
* a ``Table`` form (kmeans, log, plugins such as NF4) with ``bits <= 4``: the same kernel through a 16-entry
  byte table per tensor / output channel / group.
* everything else (scales along the input axis, group sizes that are not a multiple of 32, tables at 5-8
  bits, schemes without a form): the *rows* path — blocks of output rows decoded by the scheme one at a time
  (at most ``ROWS_PATH_FLOATS`` floats) and multiplied with numpy; never a float copy of the whole weight.
"""
from __future__ import annotations

import numpy as np

from ..quantization import forms
from ..validation import check_all_finite

_KEY = "qcore.ops.qlinear/lowbit"
#: floats of decoded weight the rows path holds at a time
ROWS_PATH_FLOATS = 1 << 20
#: rows checked at plan-build time: the kernel's formula must reproduce the scheme's own decode on them
_CHECK_ROWS = 4


class LowbitPlan:
    """How one weight runs: ``mode`` "kernel" (``packed`` from ``kernel.pack_lowbit``) or "rows"."""

    __slots__ = ("mode", "kernel", "packed", "n", "k", "reason", "flip", "scale_mul")

    def __init__(self, mode, n, k, kernel=None, packed=None, reason="", flip=0, scale_mul=None):
        self.mode, self.n, self.k, self.kernel, self.packed, self.reason = mode, n, k, kernel, packed, reason
        self.flip = flip  # packed values = code bits ^ flip (so the codes come back with unpack_lowbit(packed, flip))
        self.scale_mul = scale_mul  # affine weights: the layout's scales are the form's times this (None: tables)

    def stored_scale(self, shape, dtype):
        """The QTensor's ``scale`` parameter rebuilt from the layout's scales (linear weights), or None."""
        if self.scale_mul is None:
            return None
        sw = self.kernel.lowbit_scales(self.packed)
        if sw is None:
            return None
        if self.scale_mul != 1:
            sw = sw / np.float32(self.scale_mul)
        return np.ascontiguousarray(sw.astype(dtype, copy=False).reshape(shape))

    def stored_codes(self, signed: bool):
        """The weight's stored codes rebuilt from the kernel layout (``mode`` "kernel"): the packed stream below
        8 bits, the int8/uint8 (N, K) code array at 8 bits — what :meth:`qcore.QTensor.hold_codes_in` needs."""
        stream = self.kernel.unpack_lowbit(self.packed, self.flip)
        if self.packed.bits == 8:
            return stream.view(np.int8 if signed else np.uint8).reshape(self.n, self.k)
        return stream

    def __repr__(self):
        return f"<LowbitPlan {self.mode} {self.n}x{self.k}{' (' + self.reason + ')' if self.reason else ''}>"


# ------------------------------------------------------------------------------------------------ forms

def form_of(w):
    """What ``w``'s codes decode as (``w.quantizer.decodes_as(w.params)``), checked against its layout: an
    ``Affine`` or ``Table`` form, or None (only the scheme's ``decode`` knows)."""
    form = w.quantizer.decodes_as(w.params)
    forms.check_form(form, w.layout, w.shape, w.bits, f"scheme {w.scheme!r}: decodes_as")
    return form


def form_agrees(w, form, rows: int = _CHECK_ROWS) -> bool:
    """The declared form reproduces the scheme's own ``decode`` on the first rows (a cheap guard, at plan time,
    against a plugin whose declaration is wrong: its weight then takes the rows path)."""
    r = min(w.shape[0], rows)
    mine = forms.decode(form, w.row_codes(0, r), w.layout, w.bits)
    return bool(np.allclose(mine, w.decode_rows(0, r), rtol=1e-6, atol=1e-30))


# ------------------------------------------------------------------------------------------------ plans

def _per_row(w, arr):
    """A form's array (laid out per tensor / output channel / group) as float64 ``(N, G)`` and the group size,
    or a reason string why the layout has no per-row form."""
    n, k = w.shape
    lay = w.layout
    arr = np.asarray(arr, np.float64).reshape(-1)
    if lay.granularity == "tensor" or arr.size == 1:
        return np.full((n, 1), arr[0]), k
    if lay.granularity == "channel":
        if lay.axis != 0:
            return "scales along the input axis"
        return arr.reshape(n, 1), k
    gs = lay.group_size
    if gs % 32:
        return f"group size {gs} is not a multiple of 32"
    return arr.reshape(n, k // gs), gs


def _affine_spec(w, form):
    """(flip, scale, zero, group_size, scale_mul) for the kernel (``W = scale * (v - zero)``, ``v`` the code bits
    ``^ flip``), or a reason string why this affine weight cannot take the kernel."""
    bits = w.bits
    scale = _per_row(w, form.scale)
    if isinstance(scale, str):
        return scale
    scale, gsz = scale
    zero, _ = _per_row(w, form.zero_points())
    if form.offset is not None:  # x = (q - zp) * s + off = s * (q - (zp - off / s))
        off, _ = _per_row(w, form.offset)
        if np.any((scale == 0) & (off != 0)):
            return "an offset with a zero scale"
        zero = zero - np.where(scale != 0, off / np.where(scale != 0, scale, 1.0), 0.0)
    # the kernel's values are the code bits ^ flip (offset binary): signed codes move up by 2**(bits-1)
    flip = (1 << (bits - 1)) if w.signed else 0
    return flip, scale.astype(np.float32), (zero + flip).astype(np.float32), gsz, 1


def _binary_spec(w, form):
    """A 1-bit table ``(t0, t1) = (+a, -a)`` (binary ``±alpha`` codes) as the affine ``2a * (v - 1/2)`` with
    ``v`` the code bit flipped; None if the table is not of that shape."""
    t = form.table.reshape(-1, 2)
    if not np.array_equal(t[:, 1], -t[:, 0]):
        return None
    alpha = _per_row(w, t[:, 0])
    if isinstance(alpha, str):
        return None
    alpha, gsz = alpha
    scale = (2 * alpha.astype(np.float32)).astype(np.float32)
    return 1, scale, np.full(scale.shape, 0.5, np.float32), gsz, 2


def _table_spec(w, form):
    n, k = w.shape
    table = form.table
    if w.bits > 4:
        return f"{w.bits}-bit tables (the table path takes at most 4 bits)"
    lay = w.layout
    if table.reshape(-1, table.shape[-1]).shape[0] == 1:
        return table.reshape(1, 1, -1), k
    if lay.granularity == "channel":
        if lay.axis != 0:
            return "tables along the input axis"
        return table.reshape(n, 1, -1), k
    gs = lay.group_size
    if gs % 32:
        return f"group size {gs} is not a multiple of 32"
    return table.reshape(n, k // gs, -1), gs


def build_plan(w, kernel) -> LowbitPlan:
    """The plan of ``w`` on ``kernel`` (one declaring ``lowbit_gemm``; None: the rows path)."""
    n, k = w.shape
    form = form_of(w)
    if form is None:
        return LowbitPlan("rows", n, k, reason=f"scheme {w.scheme!r} declares no decode form")
    if kernel is None:
        return LowbitPlan("rows", n, k, reason="no kernel with the lowbit_gemm capability")
    spec = None
    if isinstance(form, forms.Table) and w.bits == 1:
        spec = _binary_spec(w, form)
    if spec is None and isinstance(form, forms.Table):
        tspec = _table_spec(w, form)
        if isinstance(tspec, str):
            return LowbitPlan("rows", n, k, reason=tspec)
        if not form_agrees(w, form):
            return LowbitPlan("rows", n, k, reason="the declared table does not reproduce decode")
        t3, tg = tspec
        # built from the packed stream: no unpacked (N, K) copy of the codes (pyx/lowbit_pack.h)
        packed = kernel.pack_lowbit_packed(w.packed, (n, k), w.bits, None, None, tg, table=t3, table_group_size=tg)
        return LowbitPlan("kernel", n, k, kernel=kernel, packed=packed)
    if spec is None:
        spec = _affine_spec(w, form)
    if isinstance(spec, str):
        return LowbitPlan("rows", n, k, reason=spec)
    if not form_agrees(w, form):
        return LowbitPlan("rows", n, k, reason="the declared form does not reproduce decode")
    flip, scale, zero, gsz, scale_mul = spec
    packed = kernel.pack_lowbit_packed(w.packed, (n, k), w.bits, scale, zero, gsz, flip=flip)
    return LowbitPlan("kernel", n, k, kernel=kernel, packed=packed, flip=flip, scale_mul=scale_mul)


def plan_for(w, kernel=None) -> LowbitPlan:
    """The cached plan of ``w`` for ``kernel`` (a name or instance declaring ``lowbit_gemm``; None: the default
    kernel of that capability)."""
    from ..api import get_kernel

    kernel = get_kernel(kernel, capability="lowbit_gemm")
    key = f"{_KEY}/{kernel.name}"
    plan = w.cache.get(key)
    if plan is None:
        plan = w.cache.setdefault(key, build_plan(w, kernel))
    return plan


def run(plan: LowbitPlan, w, x2, bias):
    """``x2 @ W.T + bias`` for a plan of ``w``; ``x2`` C-contiguous float32 (M, K) and ``bias`` None or float32
    (N,), as ``qcore.ops.qlinear`` validated them (the kernel's own checks are not repeated: at M = 1 they are
    a visible part of the call)."""
    if plan.mode == "kernel":
        return plan.kernel._lowbit_linear(x2, plan.packed, bias)
    check_all_finite(x2, "x")
    return rows_linear(x2, w, bias)


def rows_linear(x2, w, bias=None, block_floats: int = ROWS_PATH_FLOATS):
    """The rows path: ``x2 @ W.T + bias`` (float32 ``(M, N)``) with blocks of ``w``'s rows decoded by its scheme
    (:meth:`qcore.QTensor.decode_rows`) one at a time — at most ``block_floats`` floats, never all of ``W``.
    Blocks start on multiples of 8 rows (a byte of the packed stream)."""
    n, k = w.shape
    out = np.empty((x2.shape[0], n), np.float32)
    step = max(8, (block_floats // max(k, 1)) // 8 * 8)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        np.matmul(x2, w.decode_rows(n0, n1).T, out=out[:, n0:n1])
    if bias is not None:
        out += bias
    return out


__all__ = ["LowbitPlan", "build_plan", "plan_for", "run", "rows_linear", "form_of"]
