"""``quantize_dynamic(model, "mixed", budget_bits=B, calibrate=fn)``: mixed precision judged by each layer's output.

1. One run of ``fn`` on the float model collects every selected layer's input Hessian ``H``
   (:func:`collect_hessians`; memory: one ``K x K`` matrix per distinct layer input).
2. The planner measures every candidate of every layer by its output error ``trace((W - W') H (W - W')^T)``
   (with ``method="gptq"`` each candidate is quantized by :func:`qcore.gptq` for the measurement), and plans
   under ``budget_bits`` average bits per weight over the selected layers (codes and parameters counted; the
   budget is never exceeded).
3. The layers are quantized with their chosen candidates: by round to nearest, or with ``method="gptq"`` in
   order, each on already-quantized inputs (:func:`gptq_layers`).  GPTQ does not change a candidate's storage,
   so the plan's budget still holds (checked).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ._ptq import _targets, collect_hessians, gptq_layers


def quantize_mixed(model: nn.Module, planner, calibrate, *, method="rtn", include=None, exclude=None,
                   gptq_options=None, progress=True) -> nn.Module:
    import qcore

    from ._modules import QLinear
    from ._tensors import _numpy_view

    targets = _targets(model, include, exclude)
    if not targets:
        import warnings

        warnings.warn("quantize_dynamic: no nn.Linear module was selected; the model is unchanged", stacklevel=3)
        return model
    hs = collect_hessians(model, calibrate, include=include, exclude=exclude)
    names = list(targets)
    measured, total = [], 0
    for name in names:
        w = _numpy_view(targets[name].weight)
        h = hs.get(f"{name}.weight")
        m = planner.measure(w, hessian=h, method=method if h is not None else "rtn")
        if not m:
            raise ValueError(f"layer {name!r}: no mixed candidate applies to a weight of shape {w.shape}")
        measured.append(m)
        total += w.size
    capacity = planner.capacity_bits(total)
    picks = planner.plan(measured, capacity_bits=capacity, names=names)
    spec = {n: measured[i][k]["spec"] for i, (n, k) in enumerate(zip(names, picks))}
    del hs
    gopts = dict(gptq_options or {})

    def quantize_layer(name, lin, h, abs_mean=None):
        w = _numpy_view(lin.weight)
        q = planner._quantizer(spec[name])
        qt = qcore.gptq(w, h, q, **gopts) if (h is not None and method == "gptq") else q.quantize(w)
        return QLinear(lin.in_features, lin.out_features, qt, lin.bias)

    if method == "gptq":
        model = gptq_layers(model, calibrate, quantize_layer, include=include, exclude=exclude, progress=progress)
    else:
        new = {id(lin): quantize_layer(n, lin, None) for n, lin in targets.items()}
        if isinstance(model, nn.Linear) and id(model) in new:
            model = new[id(model)]
        for parent in list(model.modules()):
            for cname, child in list(parent._modules.items()):
                if child is not None and id(child) in new:
                    parent._modules[cname] = new[id(child)]
    if capacity is not None:
        used = sum(8 * m.weight.nbytes for m in model.modules() if isinstance(m, QLinear))
        if used > capacity + 1e-6:  # pragma: no cover - the planner guarantees it and GPTQ keeps storage
            raise RuntimeError(f"mixed plan exceeds its budget: {used / total:.4f} bits per weight")
    return model


__all__ = ["quantize_mixed"]
