"""``quantize_dynamic(model, "mixed", budget_bits=B, calibrate=fn)``: mixed precision judged by each layer's output.

1. One run of ``fn`` on the float model collects every selected layer's input statistics in folds
   (:func:`collect_hessians`; memory: ``folds`` ``K x K`` matrices per layer).
2. The planner measures every candidate of every layer through the driver
   (:func:`qcore.quantization.driver.run_plan`): by its output error on held-out folds (with
   ``method="gptq"`` each candidate is fitted by :func:`qcore.gptq` on the other folds), and plans under
   ``budget_bits`` average bits per weight over the selected layers (codes and parameters counted; never
   exceeded).
3. The layers are quantized with their chosen candidates (``planner.quantize_candidate``): by round to
   nearest, or with ``method="gptq"`` in order, each on already-quantized inputs (:func:`gptq_layers`).  GPTQ
   does not change a candidate's storage, so the plan's budget still holds (checked).

The returned model carries the plan: ``model.qcore_plan``, one record per layer (``layer``, ``candidate``,
``bits``, ``nbytes``, ``error`` (held out), ``error_in_sample``, ``held_out``).
"""
from __future__ import annotations

from torch import nn

from qcore.quantization.driver import PlanItem, planner_kwargs, run_plan
from qcore.ptq.hessian import HessianFolds

from ._ptq import _targets, collect_hessians, gptq_layers


class _Weight:
    """``load()`` of a layer's PlanItem: its weight (a numpy view) and its float Hessians."""

    def __init__(self, w, hessians):
        self.w, self.hessians = w, hessians

    def __call__(self):
        return self.w, self.hessians


def plan_record(name: str, record: dict) -> dict:
    """One row of ``model.qcore_plan``."""
    row = {"layer": name, "candidate": record["label"], "bits": record.get("bits"), "nbytes": int(record["nbytes"])}
    for key in ("error", "error_in_sample", "held_out"):
        if key in record:
            row[key] = record[key]
    return row


def quantize_mixed(model: nn.Module, planner, calibrate, *, method="rtn", include=None, exclude=None,
                   progress=True, float_targets: float | None = None) -> nn.Module:
    from ._modules import QLinear
    from ._tensors import _numpy_view

    targets = _targets(model, include, exclude)
    if not targets:
        import warnings

        warnings.warn("quantize_dynamic: no nn.Linear module was selected; the model is unchanged", stacklevel=3)
        return model
    hs = collect_hessians(model, calibrate, include=include, exclude=exclude)
    names = list(targets)
    items = []
    for name in names:
        w = _numpy_view(targets[name].weight)
        items.append(PlanItem(name, int(w.size), _Weight(w, hs.get(f"{name}.weight"))))
    total = sum(it.size for it in items)
    capacity = planner.capacity_bits(total)
    # a layer that never ran has no Hessians: the driver measures it by round to nearest, without data
    chosen = dict(zip(names, run_plan(planner, items, method=method, capacity_bits=capacity)))
    del hs

    def quantize_layer(name, lin, h, abs_mean=None):
        w = _numpy_view(lin.weight)
        kw = planner_kwargs(None if h is None else HessianFolds.of(h), method if h is not None else "rtn")
        qt = planner.quantize_candidate(w, chosen[name]["spec"], **kw)
        return QLinear(lin.in_features, lin.out_features, qt, lin.bias)

    if method == "gptq":
        model = gptq_layers(model, calibrate, quantize_layer, include=include, exclude=exclude, progress=progress,
                            float_targets=float_targets)
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
    model.qcore_plan = [plan_record(n, chosen[n]) for n in names]
    return model


__all__ = ["quantize_mixed"]
