"""Activation-aware weight scaling (AWQ, Lin et al., 2023) for any installed scheme.

For one linear layer ``y = x @ W.T`` (``W`` of shape ``(N, K)``), a per-input-channel scale ``s > 0`` changes
nothing in float — ``y = (x / s) @ (W * s).T`` — but it changes what rounding does: the columns of ``W * s``
that meet large inputs are stretched, so the scheme's grid (fitted per row or group) spends more of its
resolution on them.  AWQ takes ``s = a ** alpha`` with ``a`` the mean ``|x|`` of each input channel over the
calibration inputs, normalised to a geometric mean of 1 over its range (``s / sqrt(max s * min s)``), and
picks ``alpha`` on a grid in ``[0, 1]`` by the layer's output error on the calibration inputs,
``trace((W - W') H (W - W')^T)`` with ``W' = Q(W * s) / s`` and ``H = mean(x x^T)``.  ``alpha = 0`` (``s = 1``)
is round to nearest, so on the calibration objective AWQ is never worse than RTN.

The quantized weight is ``Q(W * s)``; a model must divide the layer's input by ``s`` (``qtorch`` keeps ``s`` in
the module, see ``qcore.integrations.torch._ptq``).  With ``gptq=True`` the scaled weight is quantized by
:func:`qcore.gptq` with the Hessian of the scaled input, ``H / (s s^T)``, at the ``alpha`` chosen by round to
nearest.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..tensor import QTensor
from .gptq import _float_matrix, check_hessian, encoding_quantizer


def awq_scales(act_scale, alpha: float) -> np.ndarray:
    """``a ** alpha`` normalised to ``sqrt(max * min) == 1`` (float64; channels with ``a == 0`` get 1)."""
    a = np.asarray(act_scale, np.float64)
    live = a > 0
    s = np.ones_like(a)
    if alpha == 0 or not live.any():
        return s
    s[live] = a[live] ** alpha
    s[live] /= np.sqrt(s[live].max() * s[live].min())
    return s


def awq(w, hessian, scheme="linear", *, act_scale=None, grid: int = 20, gptq: bool = False,
        clip_search: bool = False, gptq_options: dict | None = None, **options: Any) -> tuple[QTensor, np.ndarray]:
    """Quantize ``w`` (``(N, K)``) with the AWQ input scale chosen on the calibration Hessian.

    :param hessian: ``(K, K)``, the mean of ``x x^T`` over calibration inputs (the objective)
    :param act_scale: ``(K,)`` mean ``|x|`` per input channel; default ``sqrt(diag(hessian))`` (the RMS)
    :param grid: ``alpha`` is searched on ``0, 1/grid, ..., 1`` (the even points, then the neighbours of the best)
    :param gptq: quantize the scaled weight by :func:`qcore.gptq` (``gptq_options`` go to it)
    :param clip_search: after the scale is chosen, fit the scaled weight's parameters with the MSE-optimal
        clipping of :func:`qcore.gptq` (``clip_search=True``; with a diagonal Hessian when ``gptq`` is False)
    :returns: ``(qt, s)``: ``qt`` a QTensor of ``W * s`` (``s`` along the input axis), ``s`` float32 ``(K,)``;
        the layer computes ``(x / s) @ qt.dequantize().T``
    """
    from .gptq import gptq as run_gptq

    wa = _float_matrix(w, "w", "of shape (N, K)").astype(np.float32)
    n, k = wa.shape
    h = check_hessian(hessian, k)
    if act_scale is None:
        a = np.sqrt(np.maximum(np.diag(h), 0.0))
    else:
        a = np.asarray(act_scale, np.float64)
        if a.shape != (k,):
            raise ValueError(f"act_scale must have shape ({k},), got {a.shape}")
        if not np.isfinite(a).all():
            raise InputError("act_scale contains NaN or Inf values")
        if (a < 0).any():
            raise ValueError("act_scale must be >= 0 (a mean of |x| per input channel)")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= 1000:
        raise ValueError(f"grid must be an integer in [1, 1000], got {grid!r}")
    q = encoding_quantizer(scheme, options, "awq")

    # the search: fit/encode/decode only (no packing), the objective in float32 BLAS; every other grid point
    # first, then the two neighbours of the best (the objective is smooth in alpha): about half the evaluations
    h32 = h.astype(np.float32)
    errs: dict[int, float] = {}

    def objective(i: int) -> float:
        if i not in errs:
            s = awq_scales(a, i / grid).astype(np.float32)
            ws = np.ascontiguousarray(wa * s[None, :])
            params = q.fit(ws)
            d = wa - np.asarray(q.decode(q.encode(ws, params), params), np.float32) / s[None, :]
            errs[i] = float(np.einsum("nk,nk->", d @ h32, d, dtype=np.float64))
        return errs[i]

    coarse = sorted(set(range(0, grid + 1, 2)) | {grid})
    best = min(coarse, key=lambda i: (objective(i), i))
    best = min((i for i in (best - 1, best, best + 1) if 0 <= i <= grid), key=lambda i: (objective(i), i))
    s = awq_scales(a, best / grid).astype(np.float32)
    qt = q.quantize(np.ascontiguousarray(wa * s[None, :]))
    if gptq or clip_search:
        s64 = s.astype(np.float64)
        hs = h / np.outer(s64, s64)
        if gptq:
            gopts = dict(gptq_options or {})
            if clip_search:
                gopts["clip_search"] = True
            qt = run_gptq(wa * s[None, :], hs, q, **gopts)
        else:  # a diagonal Hessian: round to nearest, parameters fitted with the clip search
            qt = run_gptq(wa * s[None, :], np.diag(np.diag(hs)), q, clip_search=True, act_order=False)
    return qt, s


__all__ = ["awq", "awq_scales"]
