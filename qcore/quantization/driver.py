"""The one measure -> plan loop of planners (docs/contracts.md §3), used by ``qcore.quantize_model``, the torch
adapter (``quantize_dynamic(model, "mixed", calibrate=fn)``) and the command line.

::

    items = [PlanItem(name, size, load) ...]         # load() -> (x, hessians or None); read when measured
    chosen = run_plan(planner, items, method="gptq", capacity_bits=B * total, measure_map=executor.map)
    # chosen[i]: the measurement record of item i's candidate (+ "index"); the caller quantizes it with
    # planner.quantize_candidate(x, chosen[i]["spec"], hessians=..., method=...) where its data is

* **Measuring** is one task per item, :func:`measure_item` — a top-level function of ``(planner, item,
  method)`` that reads its own tensor (``item.load()``) and returns JSON-serialisable records, so
  ``measure_map`` may be ``map`` or any ``concurrent.futures.Executor``'s ``map`` (the planner, the item and
  its ``load`` must then pickle: ``load`` a top-level function or a small picklable object).
* **Planning** is central: :func:`choose` calls ``planner.plan`` once over every item and checks the answer
  (one valid index per item; never above ``capacity_bits``).
* **Quantizing** is the caller's: ``quantize_model`` tensor by tensor, the torch adapter layer by layer on
  already-quantized inputs.

With Hessians of one fold (an old Hessian file, or calibration too small to split), candidates can only be
scored in-sample: :func:`run_plan` warns once, naming how many tensors it concerns.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .planner import Planner

#: keys every measurement record has (docs/contracts.md §3)
RECORD_KEYS = ("spec", "label", "nbytes", "error", "sqnr_db")


@dataclass(frozen=True)
class PlanItem:
    """One tensor to plan: its ``name``, ``size`` (elements), and ``load() -> (x, hessians or None)``.

    ``sensitivity`` (optional) is passed to the planner's ``measure`` for this tensor."""

    name: str
    size: int
    load: Callable[[], tuple[Any, Any]]
    sensitivity: Any = field(default=None)


def planner_kwargs(hessians=None, method: str = "rtn", sensitivity=None) -> dict:
    """The keyword arguments of ``measure``/``quantize_candidate``: only those that are given (a planner that
    takes no Hessians keeps working on data-free calls)."""
    kw: dict[str, Any] = {}
    if hessians is not None:
        kw["hessians"] = hessians
    if method != "rtn":
        kw["method"] = method
    if sensitivity is not None:
        kw["sensitivity"] = sensitivity
    return kw


def _check_records(planner: Planner, name: str, records) -> list[dict]:
    if not isinstance(records, list) or not records:
        raise ValueError(f"tensor {name!r}: no candidate of planner {planner.name!r} applies to it"
                         if isinstance(records, list) else
                         f"planner {planner.name!r}: measure() returned {type(records).__name__}, not a list of records")
    for r in records:
        missing = [k for k in RECORD_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise TypeError(f"planner {planner.name!r}: a measurement record of {name!r} lacks {', '.join(missing)}")
    return records


def measure_item(planner: Planner, item: PlanItem, method: str = "rtn") -> tuple[list[dict], int]:
    """The measuring task of one item: ``(records, folds)`` — the planner's records for ``item``'s tensor, and
    how many folds its Hessians had (0: none).  Top-level, so an executor can run it."""
    x, hessians = item.load()
    # a tensor without data (a layer that never ran, an embedding) is measured without it: round to nearest
    kw = planner_kwargs(hessians, method if hessians is not None else "rtn", item.sensitivity)
    try:
        records = planner.measure(x, **kw)
    except (ValueError, TypeError) as exc:
        raise named_error(exc, item.name) from exc
    records = _check_records(planner, item.name, records)
    folds = 0 if hessians is None else int(getattr(hessians, "k", 1))
    return records, folds


def named_error(exc: Exception, name: str) -> Exception:
    """``exc`` again, its message starting with the tensor's name (unless it does already)."""
    if str(exc).startswith(f"tensor {name!r}"):
        return exc
    try:
        new = type(exc)(f"tensor {name!r}: {exc}")
    except Exception:  # noqa: BLE001 - exotic exception signature: keep the original
        return exc
    new.__cause__ = exc
    return new


def measure_items(planner: Planner, items: list[PlanItem], *, method: str = "rtn", measure_map=map,
                  progress=None) -> list[list[dict]]:
    """Every item's records, in order (``measure_map(measure_item, ...)``); ``progress.update(size)`` per item."""
    n = len(items)
    results = measure_map(measure_item, [planner] * n, list(items), [method] * n)
    out, one_fold = [], 0
    for item, (records, folds) in zip(items, results):
        out.append(records)
        one_fold += folds == 1
        if progress is not None:
            progress.update(item.size)
    if one_fold:
        warnings.warn(f"planner {planner.name!r}: {one_fold} tensor(s) have calibration statistics in one fold only "
                      f"(an older Hessian file, or too little calibration data to split): their candidates are "
                      f"scored on the data they were fitted on (in-sample), which favours overfitting choices",
                      UserWarning, stacklevel=3)
    return out


def choose(planner: Planner, items: list[PlanItem], measurements: list[list[dict]], *,
           capacity_bits: float | None = None, target_sqnr: float | None = None) -> list[dict]:
    """``planner.plan`` over every item, checked: the chosen record of each item (a copy, with ``"index"``)."""
    if not items:
        return []
    picks = planner.plan(measurements, capacity_bits=capacity_bits, target_sqnr=target_sqnr,
                         names=[it.name for it in items])
    if not isinstance(picks, (list, tuple)) or len(picks) != len(items):
        raise RuntimeError(f"planner {planner.name!r}: plan() returned {picks!r}, expected one index per tensor "
                           f"({len(items)})")
    chosen = []
    for item, m, k in zip(items, measurements, picks):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(m):
            raise RuntimeError(f"planner {planner.name!r}: plan() chose {k!r} for {item.name!r}, which has "
                               f"{len(m)} candidates")
        chosen.append({**m[k], "index": int(k)})
    if capacity_bits is not None and target_sqnr is None:
        used = sum(8 * int(c["nbytes"]) for c in chosen)
        if used > capacity_bits + 1e-6:
            raise RuntimeError(f"planner {planner.name!r}: its plan uses {used} bits, above the capacity "
                               f"{capacity_bits:.0f}")
    return chosen


def run_plan(planner: Planner, items: list[PlanItem], *, method: str = "rtn", capacity_bits: float | None = None,
             target_sqnr: float | None = None, measure_map=map, progress=None) -> list[dict]:
    """Measure every item (``measure_map``), plan centrally; the chosen record per item (see the module
    docstring)."""
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if capacity_bits is not None and not (isinstance(capacity_bits, (int, float)) and math.isfinite(capacity_bits)):
        raise ValueError(f"capacity_bits must be a finite number, got {capacity_bits!r}")
    measurements = measure_items(planner, items, method=method, measure_map=measure_map, progress=progress)
    return choose(planner, items, measurements, capacity_bits=capacity_bits, target_sqnr=target_sqnr)


def jsonable(records: list[dict]) -> bool:
    """Whether measurement records survive JSON (what an executor's result must do)."""
    try:
        json.dumps(records, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["PlanItem", "run_plan", "measure_items", "measure_item", "choose", "planner_kwargs", "named_error",
           "RECORD_KEYS"]
