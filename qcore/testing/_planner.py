"""Conformance checks for :class:`qcore.Planner` subclasses (planner plugins such as ``mixed``)."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from ..quantization.planner import Planner
from ._common import Check

SHAPE = (16, 64)


def _cls(obj) -> type[Planner]:
    cls = obj if isinstance(obj, type) else type(obj)
    if not (isinstance(cls, type) and issubclass(cls, Planner)):
        raise TypeError(f"check_planner needs a qcore.Planner subclass or instance, got {obj!r}")
    return cls


def _make(obj, **options) -> Planner:
    if isinstance(obj, Planner) and not options:
        return obj
    cls = _cls(obj)
    base = dict(obj.export_options()) if isinstance(obj, Planner) else {}
    base.pop("kernel", None)
    return cls(**{**base, **options})


def _data(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (shape[0], 1))).astype(np.float32)


def check_class_contract(obj):
    """A non-empty string ``name``, an ``options`` dict, and the planner methods (no scheme methods needed)."""
    cls = _cls(obj)
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__}.name must be a non-empty string, got {cls.name!r}"
    assert isinstance(cls.options, dict), f"options must be a dict of defaults, got {type(cls.options).__name__}"
    for m in ("measure", "plan", "quantize_candidate"):
        assert getattr(cls, m) is not getattr(Planner, m), f"{cls.__name__} must implement {m}()"


def check_unknown_option_refused(obj):
    """An option the planner does not declare is a ``TypeError`` naming it."""
    cls = _cls(obj)
    try:
        cls(no_such_option_zz=1)
    except TypeError as exc:
        assert "no_such_option_zz" in str(exc), f"the TypeError does not name the option: {exc}"
    else:
        raise AssertionError("an unknown option was accepted")


def check_measure_records(obj):
    """``measure`` gives one record per applicable candidate with ``spec``, ``label``, ``nbytes`` (> 0),
    ``error`` (finite, >= 0) and ``sqnr_db``; each spec quantizes to exactly that storage."""
    p = _make(obj)
    x = _data(1)
    m = p.measure(x)
    assert isinstance(m, list) and m, f"measure returned {m!r}, expected a non-empty list of candidate records"
    for c in m:
        for key in ("spec", "label", "nbytes", "error", "sqnr_db"):
            assert key in c, f"candidate record {c.get('label', c)!r} lacks {key!r}"
        assert c["nbytes"] > 0 and math.isfinite(c["error"]) and c["error"] >= 0, f"bad record {c['label']}: {c}"
    c = m[0]
    qt = p.quantize_candidate(x, c["spec"])
    assert int(qt.nbytes) == int(c["nbytes"]), f"candidate {c['label']}: measured {c['nbytes']} bytes, quantizes to {qt.nbytes}"


def check_plan_respects_capacity(obj):
    """``plan`` over two tensors returns one valid index each, never above ``capacity_bits``, and no worse in
    total error than the cheapest choice; a capacity below the cheapest candidates is a ``ValueError``."""
    p = _make(obj)
    ms = [p.measure(_data(2)), p.measure(_data(3, (8, 32)))]
    cheapest = sum(min(8 * c["nbytes"] for c in m) for m in ms)
    priciest = sum(max(8 * c["nbytes"] for c in m) for m in ms)
    for cap in (cheapest, (cheapest + priciest) / 2, priciest):
        picks = p.plan(ms, capacity_bits=cap)
        assert len(picks) == 2 and all(0 <= k < len(m) for k, m in zip(picks, ms)), f"plan returned {picks}"
        used = sum(8 * m[k]["nbytes"] for k, m in zip(picks, ms))
        assert used <= cap, f"plan uses {used} bits, capacity {cap}"
        err = sum(m[k]["error"] for k, m in zip(picks, ms))
        base = sum(min(m, key=lambda c: (c["nbytes"], c["error"]))["error"] for m in ms)
        assert err <= base * (1 + 1e-9), f"capacity {cap}: total error {err} above the cheapest plan's {base}"
    try:
        p.plan(ms, capacity_bits=cheapest / 2)
    except ValueError:
        pass
    else:
        raise AssertionError("a capacity below the cheapest candidates was accepted")


def check_quantize_returns_a_candidate(obj):
    """``quantize`` returns a QTensor of a registered *scheme* (never the planner's name) that its scheme,
    rebuilt from the stored options, decodes to the same values."""
    from ..api import get_quantizer, list_planners

    p = _make(obj)
    x = _data(4)
    qt = p.quantize(x)
    assert qt.scheme not in list_planners(), f"quantize returned a QTensor of scheme {qt.scheme!r}, a planner"
    assert qt.shape == x.shape
    back = get_quantizer(qt.scheme, **qt.options).decode(qt.codes, qt.params)
    assert np.array_equal(np.asarray(back, np.float32).reshape(qt.shape), qt.dequantize()), "the scheme decodes differently"


def check_model_plan_and_file_round_trip(obj):
    """``qcore.quantize_model(..., scheme=name, budget_bits=B)`` plans every tensor (``planned_by``), stays within
    the budget when the planner declares ``budget_bits``, and the saved file loads back to the same codes."""
    import qcore

    cls = _cls(obj)
    tensors = {"a.weight": _data(5), "b.weight": _data(6, (8, 32))}
    kw = {"budget_bits": 4.0} if "budget_bits" in cls.options else {}
    qm = qcore.quantize_model(tensors, scheme=cls.name, progress=False, **kw)
    assert all(qm.info[n].get("planned_by") == cls.name for n in qm.quantized), f"info: {qm.info}"
    if kw:
        assert qm.average_bits <= 4.0, f"average bits {qm.average_bits} above the budget 4.0"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        qm.save(path)
        back = qcore.load_quantized(path)
        for n in qm.quantized:
            assert np.array_equal(back[n].codes, qm[n].codes), f"{n}: codes differ after save/load"


PLANNER_CHECKS = [
    check_class_contract,
    check_unknown_option_refused,
    check_measure_records,
    check_plan_respects_capacity,
    check_quantize_returns_a_candidate,
    check_model_plan_and_file_round_trip,
]


def planner_checks(obj=None) -> list[Check]:
    return [Check(f.__name__, f, "planner") for f in PLANNER_CHECKS]
