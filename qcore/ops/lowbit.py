"""Low-bit ``qlinear``: from a :class:`qcore.QTensor` to a kernel's packed low-bit weight, and the slower path.

Which weights take which path (docs/gemm.md, "Low-bit weights"):

* ``linear`` 1-7 bits (and 8 bits with groups), per tensor / per output channel / per group of a multiple of 32,
  symmetric or affine: the low-bit kernel on the codes' bit patterns (``Kernel.pack_lowbit``), with
  ``W = scale * (v - zero)``: signed codes are offset to unsigned (``v = code + 2**(bits-1)``), the zero point
  shifted alike (absent zero point: 0); 1-bit binary codes (``-alpha`` / ``+alpha``) are ``2*alpha*(v - 1/2)``.
* any scheme whose quantizer defines ``lookup_table(params)`` (kmeans, log, plugins such as NF4) with
  ``bits <= 4``: the same kernel through a 16-entry byte table per tensor / output channel / group.
* everything else a scheme can express (scales along the input axis, group sizes that are not a multiple of
  32, tables at 5-8 bits): the *rows* path — blocks of output rows decoded to float32 one at a time (at most
  ``ROWS_PATH_FLOATS`` floats) and multiplied with numpy; never a float copy of the whole weight.
"""
from __future__ import annotations

import numpy as np

from ..validation import check_all_finite, normalize_axis

_KEY = "qcore.ops.qlinear/lowbit"
#: floats of decoded weight the rows path holds at a time
ROWS_PATH_FLOATS = 1 << 20
#: rows checked at plan-build time: the kernel's formula must reproduce the scheme's own decode on them
_CHECK_ROWS = 4


class LowbitPlan:
    """How one weight runs: ``mode`` "kernel" (``packed`` from ``kernel.pack_lowbit``) or "rows"."""

    __slots__ = ("mode", "kernel", "packed", "n", "k", "reason", "table", "flip", "scale_mul")

    def __init__(self, mode, n, k, kernel=None, packed=None, reason="", table=None, flip=0, scale_mul=None):
        self.mode, self.n, self.k, self.kernel, self.packed, self.reason, self.table = mode, n, k, kernel, packed, reason, table
        self.flip = flip  # packed values = code bits ^ flip (so the codes come back with unpack_lowbit(packed, flip))
        self.scale_mul = scale_mul  # linear weights: the layout's scales are the QTensor's times this (None: tables)

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


# ------------------------------------------------------------------------------------------------ helpers

def _granularity(w):
    opts = w.options or {}
    gran = opts.get("granularity", "tensor")
    axis = opts.get("axis", 0)
    return gran, axis, opts.get("group_size")


def _row_sliced(w, name, arr, n0, n1):
    """The parameter array ``arr`` restricted to output rows [n0, n1) (a per-row or per-group parameter)."""
    gran, axis, _ = _granularity(w)
    n = w.shape[0]
    if gran == "group" or (gran == "channel" and normalize_axis(axis, 2) == 0):
        if arr.ndim >= 1 and arr.shape[0] == n:
            return arr[n0:n1]
    return arr


def _codes_rows(w, n0, n1):
    """Codes of rows [n0, n1) as int8/uint8 (n1-n0, K), unpacked from the packed bytes when the rows start on a
    byte boundary (they do for n0 a multiple of 8), else from ``w.codes``."""
    n, k = w.shape
    packed = getattr(w, "packed", None)
    if w.bits == 8 or packed is None or (n0 * k * w.bits) % 8:
        return np.asarray(w.codes)[n0:n1]
    start = n0 * k * w.bits // 8
    count = (n1 - n0) * k
    nbytes = (count * w.bits + 7) // 8
    kern = getattr(w.quantizer, "kernel", None)
    if kern is None:
        from ..api import get_kernel

        kern = get_kernel()
    return kern.unpack(np.ascontiguousarray(packed[start:start + nbytes]), w.bits, count, w.signed).reshape(n1 - n0, k)


def _table_index(w, n0, n1, tshape):
    """Index (rows, K) into ``table.reshape(-1, E)`` for rows [n0, n1), or None if the layout is not known."""
    n, k = w.shape
    pshape = tuple(tshape[:-1])
    rows = np.arange(n0, n1)[:, None]
    cols = np.arange(k)[None, :]
    if pshape == (1,):
        return np.zeros((n1 - n0, k), np.int64)
    gran, axis, gs = _granularity(w)
    if gran == "channel" and pshape == (w.shape[normalize_axis(axis, 2)],):
        return np.broadcast_to(rows if normalize_axis(axis, 2) == 0 else cols, (n1 - n0, k)).astype(np.int64)
    if gran == "group" and gs and len(pshape) == 2 and pshape == (n, k // gs):
        return (rows * (k // gs) + cols // gs).astype(np.int64)
    return None


def _decode_rows(w, n0, n1, table=None):
    """float32 values of rows [n0, n1): through the lookup table when the scheme has one, else the scheme's decode."""
    codes = _codes_rows(w, n0, n1)
    if table is not None:
        e = table.shape[-1]
        idx = _table_index(w, n0, n1, table.shape)
        return table.reshape(-1, e)[idx, codes.view(np.uint8) & (e - 1)].astype(np.float32)
    params = {name: _row_sliced(w, name, np.asarray(p), n0, n1) for name, p in w.params.items()}
    return np.asarray(w.quantizer.decode(codes, params), dtype=np.float32).reshape(n1 - n0, w.shape[1])


def lookup_table(w):
    """The scheme's lookup table for ``w`` (validated), or None if its quantizer declares none."""
    fn = getattr(w.quantizer, "lookup_table", None)
    table = fn(w.params) if fn is not None else None
    if table is None:
        return None
    table = np.asarray(table)
    if table.dtype.kind != "f":
        raise ValueError(f"scheme {w.scheme!r}: lookup_table must return a float array, got dtype {table.dtype}")
    table = table.astype(np.float32)
    try:
        pshape = tuple(w.quantizer.param_shape(np.broadcast_to(np.float32(0), w.shape)))
    except Exception:  # a scheme without the standard layout: one table per tensor is all we can check
        pshape = (1,)
    want = pshape + (1 << w.bits,)
    if table.shape != want:
        raise ValueError(f"scheme {w.scheme!r}: lookup_table returned shape {table.shape}, expected {want} "
                         f"(param_shape {pshape} + (2**bits,)); see docs/plugins.md")
    if not np.isfinite(table).all():
        raise ValueError(f"scheme {w.scheme!r}: lookup_table holds NaN or Inf values")
    return table


# ------------------------------------------------------------------------------------------------ plans

def _linear_spec(w):
    """(values, scale, zero, group_size) for the kernel, or a reason string why the linear weight cannot."""
    n, k = w.shape
    bits = w.bits
    gran, axis, gs = _granularity(w)
    if "scale" not in w.params:
        return "no scale parameter"
    scale = np.asarray(w.params["scale"], dtype=np.float32)
    zp = np.asarray(w.params.get("zero_point", np.zeros(1, np.int32)))
    if gran == "tensor":
        if scale.size != 1 or zp.size != 1:
            return "per-tensor parameters of an unexpected shape"
        scale = np.full((n, 1), scale.reshape(-1)[0], np.float32)
        zp = np.full((n, 1), zp.reshape(-1)[0], np.float64)
        gsz = k
    elif gran == "channel":
        if normalize_axis(axis, 2) != 0:
            return "scales along the input axis"
        if scale.size != n or zp.size not in (1, n):
            return "per-channel parameters of an unexpected shape"
        scale = scale.reshape(n, 1)
        zp = np.broadcast_to(zp.reshape(-1, 1), (n, 1)).astype(np.float64)
        gsz = k
    elif gran == "group":
        if not gs or k % gs:
            return "group size does not divide K"
        if gs % 32:
            return f"group size {gs} is not a multiple of 32"
        if scale.size != n * (k // gs) or zp.size not in (1, n * (k // gs)):
            return "per-group parameters of an unexpected shape"
        scale = scale.reshape(n, k // gs)
        zp = np.broadcast_to(zp.reshape(-1) if zp.size > 1 else zp.reshape(1), (n * (k // gs),)).reshape(n, k // gs).astype(np.float64)
        gsz = gs
    else:
        return f"unknown granularity {gran!r}"
    # the kernel's values are the code bits ^ flip (made from the packed stream by the kernel, see build_plan)
    if w.signed and bits == 1:  # binary: code -1 -> -alpha, 0 -> +alpha: 2*alpha*(v - 1/2) with v = code + 1
        flip = 1
        scale = (2 * scale).astype(np.float32)
        zero = np.full(scale.shape, 0.5, np.float32)
    elif w.signed:
        flip = 1 << (bits - 1)
        zero = (zp + (1 << (bits - 1))).astype(np.float32)
    else:
        flip = 0
        zero = zp.astype(np.float32)
    # the formula must be how this tensor decodes: compare a few rows with the scheme's own decode
    r = min(n, _CHECK_ROWS)
    values = (_codes_rows(w, 0, r).view(np.uint8) & np.uint8((1 << bits) - 1)) ^ np.uint8(flip)
    mine = np.repeat(scale[:r], gsz, axis=1) if gsz != k else np.broadcast_to(scale[:r], (r, k))
    zr = np.repeat(zero[:r], gsz, axis=1) if gsz != k else np.broadcast_to(zero[:r], (r, k))
    approx = mine * (values.astype(np.float32) - zr)
    if not np.allclose(approx, _decode_rows(w, 0, r), rtol=1e-5, atol=1e-30):
        return "codes do not decode as scale * (code - zero_point)"
    return flip, scale, zero, gsz


def _table_spec(w, table):
    n, k = w.shape
    if w.bits > 4:
        return f"{w.bits}-bit tables (the table path takes at most 4 bits)"
    pshape = table.shape[:-1]
    gran, axis, gs = _granularity(w)
    if pshape == (1,):
        t3, tg = table.reshape(1, 1, -1), k
    elif gran == "channel" and pshape == (n,) and normalize_axis(axis, 2) == 0:
        t3, tg = table.reshape(n, 1, -1), k
    elif gran == "group" and gs and pshape == (n, k // gs):
        if gs % 32:
            return f"group size {gs} is not a multiple of 32"
        t3, tg = table, gs
    else:
        return "tables along the input axis"
    return t3, tg


def build_plan(w, kernel) -> LowbitPlan:
    n, k = w.shape
    table = lookup_table(w)
    if table is None and w.scheme != "linear":
        raise ValueError(f"qlinear needs a 'linear' weight or a scheme whose quantizer declares lookup_table(); "
                         f"scheme {w.scheme!r} declares none (see docs/plugins.md)")
    if table is not None:
        spec = _table_spec(w, table)
        if isinstance(spec, str):
            return LowbitPlan("rows", n, k, reason=spec, table=table)
        t3, tg = spec
        # built from the packed stream: no unpacked (N, K) copy of the codes (pyx/lowbit_pack.h)
        packed = kernel.pack_lowbit_packed(w.packed, (n, k), w.bits, None, None, tg, table=t3, table_group_size=tg)
        return LowbitPlan("kernel", n, k, kernel=kernel, packed=packed)
    spec = _linear_spec(w)
    if isinstance(spec, str):
        return LowbitPlan("rows", n, k, reason=spec)
    flip, scale, zero, gsz = spec
    packed = kernel.pack_lowbit_packed(w.packed, (n, k), w.bits, scale, zero, gsz, flip=flip)
    return LowbitPlan("kernel", n, k, kernel=kernel, packed=packed, flip=flip,
                      scale_mul=2 if (w.signed and w.bits == 1) else 1)


def plan_for(w, kernel=None) -> LowbitPlan:
    """The cached plan of ``w`` for ``kernel`` (default: the fastest installed kernel)."""
    if kernel is None:
        from ..api import get_kernel

        kernel = get_kernel()
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
    n, k = plan.n, plan.k
    out = np.empty((x2.shape[0], n), np.float32)
    step = max(8, (ROWS_PATH_FLOATS // max(k, 1)) // 8 * 8)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        out[:, n0:n1] = x2 @ _decode_rows(w, n0, n1, plan.table).T
    if bias is not None:
        out += bias
    return out


__all__ = ["LowbitPlan", "build_plan", "plan_for", "run", "lookup_table"]
