"""Fake quantization by the ``linear`` scheme on torch ops: any device, autograd-friendly, no numpy.

The numerics are those of ``plugins/schemes/linear.py`` and the affine kernel, step by step, so that
``decode(encode(w))`` computed here equals qcore's own bit for bit (``convert`` then stores exactly the weights the
QAT model saw; ``tests/test_qat_torch.py`` checks it):

* range: per tensor / channel / group minimum and maximum (the ``minmax`` observer, float32);
* parameters in float64 from the float32 range, cast to float32: affine ``scale = (max(hi,0) - min(lo,0)) /
  (2^k - 1)``, ``zp = clamp(rint(-min(lo,0) / scale), 0, 2^k - 1)``; symmetric ``scale = max(-lo, hi) /
  (2^(k-1) - 1)``, ``zp = 0``; a constant ``c`` gets scale ``|c|`` (affine: ``zp = 1`` when ``c < 0``);
  scale 0 becomes 1 and others at least ``2^-100``;
* 1-bit symmetric: ``alpha = mean|x|`` (float64), codes ``-1``/``0`` decoded to ``-alpha``/``+alpha``;
  2-bit symmetric: ternary, ``alpha`` and the threshold by least squares on the sorted ``|x|`` (float64);
* codes ``q = clamp(rint(x * float32(1 / scale)) + zp, qmin, qmax)`` (``torch.round`` rounds half to even, as
  ``rint``), values ``float32(q - zp) * scale``; symmetric codes use the narrow range ``[-qmax, qmax]``, except
  at 3 and 4 bits: the full signed range with the scheme's searched scale (``_searched_scale``).

Gradients are straight-through (identity): ``fq(x) + (x - x.detach())``, whose value is exactly ``fq(x)``.
"""
from __future__ import annotations

import torch

from typing import Any

#: the smallest scale the linear scheme produces (``MIN_SCALE`` in plugins/schemes/linear.py)
MIN_SCALE = 2.0**-100

#: linear-scheme options this module reproduces, with the values it supports
_LAYOUTS = ("tensor", "channel", "group")


def torch_supported(quantizer) -> bool:
    """True when ``quantizer`` (a qcore quantizer) is one whose ``quantize().dequantize()`` of a weight this module
    reproduces exactly: the ``linear`` scheme, ``minmax`` range, options it knows with supported values."""
    if getattr(quantizer, "observer_name", None) != "minmax":
        return False
    return linear_options_supported(quantizer)


def linear_options_supported(quantizer) -> bool:
    """True for a scheme that declares the linear rule (``Quantizer.linear_rule``: the built-in ``linear``
    scheme, a copy of it) with only options whose numerics this module reproduces."""
    if not getattr(quantizer, "linear_rule", False):
        return False
    cfg = dict(quantizer.config)
    known = {"symmetric", "granularity", "axis", "group_size"}
    extra = set(cfg) - known
    # options another stage may add to the scheme: supported only at the values that do not change numerics
    benign = {"scale_dtype": "float32", "zero": "point"}
    if any(k not in benign or cfg[k] != benign[k] for k in extra):
        return False
    return cfg.get("granularity", "tensor") in _LAYOUTS


def _float64_ok(device: torch.device) -> bool:
    return device.type != "mps"


class _Layout:
    """Rows of one parameter set each: ``rows(x) -> (R, n)`` and back."""

    def __init__(self, shape, granularity: str, axis: int, group_size: int):
        self.shape = tuple(shape)
        self.granularity = granularity
        nd = len(self.shape)
        if granularity == "channel":
            if nd == 0:
                raise ValueError("granularity='channel' needs an array of at least one dimension")
            self.axis = axis % nd if -nd <= axis < nd else None
            if self.axis is None:
                raise ValueError(f"axis {axis} is out of range for a tensor of {nd} dimension(s)")
        elif granularity == "group":
            if nd == 0:
                raise ValueError("granularity='group' needs an array of at least one dimension")
            if self.shape[-1] % group_size:
                raise ValueError(f"group_size={group_size} does not divide the last axis of length {self.shape[-1]}"
                                 f" (shape {self.shape})")
        self.group_size = group_size

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.granularity == "tensor":
            return x.reshape(1, -1)
        if self.granularity == "channel":
            return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return x.reshape(-1, self.group_size)

    def back(self, r: torch.Tensor) -> torch.Tensor:
        if self.granularity == "tensor" or self.granularity == "group":
            return r.reshape(self.shape)
        moved = (self.shape[self.axis],) + tuple(s for i, s in enumerate(self.shape) if i != self.axis)
        return r.reshape(moved).movedim(0, self.axis)


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """``(scale float32, zero_point float32)`` of the linear scheme for float32 ranges ``lo``, ``hi`` (any shape)."""
    dev = lo.device
    wide = torch.float64 if _float64_ok(dev) else torch.float32
    lo = lo.to(torch.float32).to(wide)
    hi = hi.to(torch.float32).to(wide)
    const = lo == hi
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = torch.maximum(-lo, hi) / qmax
        scale = torch.where(const, lo.abs(), scale)
        zp = torch.zeros_like(scale)
    else:
        qmax = (1 << bits) - 1
        lo0, hi0 = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi0 - lo0) / qmax
        scale = torch.where(const, lo.abs(), scale)
        zpc = torch.where(const & (lo < 0), 1.0, 0.0).to(wide)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.where(const, zpc, torch.round(-lo0 / safe))
        zp = torch.clamp(zp, 0, qmax)
    scale = scale.to(torch.float32)
    scale = torch.where(scale == 0, torch.ones_like(scale), torch.clamp(scale, min=MIN_SCALE))
    return scale, zp.to(torch.float32)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(rint(x * float32(1 / scale)) + zp, qmin, qmax)`` as float32 (scale/zp broadcast against ``x``)."""
    inv = torch.reciprocal(scale.to(torch.float32))
    return torch.clamp(torch.round(x * inv) + zp, qmin, qmax)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    return (q - zp) * scale


def _alpha_least_squares(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """The 1-bit (mean |x|) or ternary least-squares ``alpha`` per row, float32 (as the linear scheme)."""
    wide = torch.float64 if _float64_ok(rows.device) else torch.float32
    a = rows.abs().to(wide)
    if bits == 1:
        return a.mean(dim=1).to(torch.float32)
    srt = torch.sort(a, dim=1, descending=True).values
    csum = torch.cumsum(srt, dim=1)
    m = torch.arange(1, srt.shape[1] + 1, device=rows.device, dtype=wide)
    best = torch.argmax(csum * csum / m, dim=1)
    alpha = (csum.gather(1, best[:, None])[:, 0] / (best + 1).to(wide)).to(torch.float32)
    return torch.where(alpha > 0, torch.clamp(alpha, min=MIN_SCALE), torch.ones_like(alpha))


def _searched_scale(r: torch.Tensor, bits: int) -> torch.Tensor:
    """The linear scheme's symmetric 3-/4-bit scale per row (``plugins/schemes/linear.py``: least squared error among
    ``±max|x| / d``, errors in units of ``max|x|`` summed in its C kernel's order), float32 ``(R,)``."""
    top = 1 << (bits - 1)
    qmin, qmax = -top, top - 1
    amax = r.abs().amax(dim=1)
    live = amax > 0
    one = torch.ones((), dtype=torch.float32, device=r.device)
    ia = torch.reciprocal(torch.where(live, amax, one))
    best_s = torch.ones_like(amax)
    best_e = torch.full_like(amax, float("inf"))
    n = r.shape[1]
    n8 = n // 8 * 8
    for i in range(9):
        d = torch.tensor(top - 1.5 + 0.25 * i, dtype=torch.float32, device=r.device)  # exact in float32
        for negative in (False, True):
            sc = amax / d
            sn = (one / d).expand_as(amax)
            if negative:
                sc, sn = -sc, -sn
            sc = torch.where(live, sc, one)
            q = torch.clamp(torch.round(r * torch.reciprocal(sc)[:, None]), qmin, qmax)
            e = q * sn[:, None] - r * ia[:, None]
            e = e * e
            acc = torch.zeros(r.shape[0], 8, dtype=torch.float32, device=r.device)
            for j in range(0, n8, 8):
                acc = acc + e[:, j:j + 8]
            tail = torch.zeros_like(amax)
            for j in range(n8, n):
                tail = tail + e[:, j]
            a = acc
            err = (((a[:, 0] + a[:, 1]) + (a[:, 2] + a[:, 3])) + ((a[:, 4] + a[:, 5]) + (a[:, 6] + a[:, 7]))) + tail
            better = live & (err < best_e)
            best_s = torch.where(better, sc, best_s)
            best_e = torch.where(better, err, best_e)
    lo, hi = r.amin(dim=1), r.amax(dim=1)
    scale = torch.where(lo == hi, lo.abs(), best_s)
    mag = torch.clamp(scale.abs(), min=MIN_SCALE)
    # both ends of the grid finite (the scheme's finite_grid): |qmin * scale| <= float32 max
    fmax = torch.finfo(torch.float32).max
    mag = torch.where(torch.isfinite(mag * top), mag, torch.full_like(mag, fmax / top))
    return torch.where(scale == 0, one, torch.copysign(mag, scale))


def linear_fake_quant_values(x: torch.Tensor, bits: int, symmetric: bool, granularity: str = "tensor",
                             axis: int = 0, group_size: int = 128) -> torch.Tensor:
    """``decode(encode(x))`` of the linear scheme, parameters fitted on ``x`` itself (min/max), no gradient."""
    with torch.no_grad():
        xf = x.detach().to(torch.float32)
        if xf.numel() == 0:
            return x.detach().clone()
        lay = _Layout(xf.shape, granularity, axis, group_size)
        r = lay.rows(xf)
        if symmetric and bits == 1:
            alpha = _alpha_least_squares(r, 1)[:, None]
            out = torch.where(r >= 0, alpha, -alpha)
        elif symmetric and bits == 2:
            alpha = _alpha_least_squares(r, 2)[:, None]
            out = dequantize_codes(quantize_codes(r, alpha, torch.zeros_like(alpha), -1, 1), alpha, 0.0)
        elif symmetric and bits in (3, 4):  # full signed range, searched scale (docs/schemes.md)
            scale = _searched_scale(r, bits)[:, None]
            zero = torch.zeros_like(scale)
            top = 1 << (bits - 1)
            out = dequantize_codes(quantize_codes(r, scale, zero, -top, top - 1), scale, zero)
        else:
            lo, hi = r.amin(dim=1), r.amax(dim=1)
            scale, zp = affine_params(lo, hi, bits, symmetric)
            qmax = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
            qmin = -qmax if symmetric else 0
            out = dequantize_codes(quantize_codes(r, scale[:, None], zp[:, None], qmin, qmax), scale[:, None],
                                   zp[:, None])
        return lay.back(out).to(x.dtype)


def straight_through(x: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
    """``fq`` in the forward pass (exactly: ``fq + 0``), the identity's gradient to ``x`` in the backward pass."""
    if not x.requires_grad:
        return fq
    return fq + (x - x.detach())


def linear_fake_quant(x: torch.Tensor, bits: int = 8, symmetric: bool = False, granularity: str = "tensor",
                      axis: int = 0, group_size: int = 128) -> torch.Tensor:
    """Fake quantization of ``x`` by the linear scheme (parameters from ``x``'s min/max), straight-through."""
    return straight_through(x, linear_fake_quant_values(x, bits, symmetric, granularity, axis, group_size))


def options_of(quantizer) -> dict[str, Any]:
    cfg = quantizer.config
    return {"bits": quantizer.bits, "symmetric": bool(cfg.get("symmetric", False)),
            "granularity": cfg.get("granularity", "tensor"), "axis": int(cfg.get("axis", 0)),
            "group_size": int(cfg.get("group_size", 128))}
