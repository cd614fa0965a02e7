"""Conformance checks for :class:`qcore.Planner` subclasses (planner plugins such as ``mixed``).

They exercise the whole contract of ``qcore/quantization/planner.py`` (docs/contracts.md §3): ``measure`` with
and without Hessians in folds and with ``method="gptq"``, JSON-serialisable records, ``plan`` within the
capacity and deterministic, ``quantize_candidate`` fitted on the data at the measured size, pickling (what an
executor needs), and ``qcore.quantize_model`` end to end with Hessians.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import tempfile

import numpy as np

from ..quantization.planner import Planner
from ._common import Check

SHAPE = (16, 64)
#: keys every measurement record carries
RECORD_KEYS = ("spec", "label", "bits", "nbytes", "error", "error_in_sample", "held_out", "sqnr_db")


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


def _folds(k_in: int, seed: int, folds: int = 2, rows: int = 512):
    """Hessians of correlated, anisotropic inputs of width ``k_in``, in ``folds`` folds."""
    from ..ptq.hessian import HessianAccumulator

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((k_in, k_in)))
    x = (rng.standard_normal((rows, k_in)) * np.exp(-np.arange(k_in) / 8.0)) @ q.T
    return HessianAccumulator(folds).update(x.astype(np.float32)).folds()


def _output_error(w, w_hat, h) -> float:
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.einsum("nk,nk->", d @ np.asarray(h, np.float64), d))


def check_class_contract(obj):
    """A non-empty string ``name``, an ``options`` dict, and the planner methods with the contract's keywords:
    ``measure(x, *, hessians, method, sensitivity)``, ``quantize_candidate(x, spec, *, hessians, method)``."""
    cls = _cls(obj)
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__}.name must be a non-empty string, got {cls.name!r}"
    assert isinstance(cls.options, dict), f"options must be a dict of defaults, got {type(cls.options).__name__}"
    for m in ("measure", "plan", "quantize_candidate"):
        assert getattr(cls, m) is not getattr(Planner, m), f"{cls.__name__} must implement {m}()"
    wants = {"measure": ("hessians", "method", "sensitivity"), "quantize_candidate": ("hessians", "method"),
             "plan": ("capacity_bits", "target_sqnr", "names")}
    for m, keys in wants.items():
        params = inspect.signature(getattr(cls, m)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [k for k in keys if k not in params and not takes_any]
        assert not missing, f"{cls.__name__}.{m}() lacks the keyword argument(s) {', '.join(missing)} of the contract"


def check_unknown_option_refused(obj):
    """An option the planner does not declare is a ``TypeError`` naming it."""
    cls = _cls(obj)
    try:
        cls(no_such_option_zz=1)
    except TypeError as exc:
        assert "no_such_option_zz" in str(exc), f"the TypeError does not name the option: {exc}"
    else:
        raise AssertionError("an unknown option was accepted")


def _check_records(m, what: str):
    assert isinstance(m, list) and m, f"{what}: measure returned {m!r}, expected a non-empty list of candidate records"
    for c in m:
        for key in RECORD_KEYS:
            assert key in c, f"{what}: candidate record {c.get('label', c)!r} lacks {key!r}"
        assert c["nbytes"] > 0 and math.isfinite(c["error"]) and c["error"] >= 0, f"{what}: bad record {c['label']}: {c}"
        assert math.isfinite(c["error_in_sample"]) and c["error_in_sample"] >= 0, f"{what}: bad record {c}"
        assert isinstance(c["held_out"], bool), f"{what}: held_out must be a bool, got {c['held_out']!r}"
    try:
        back = json.loads(json.dumps(m))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{what}: records must be JSON-serialisable (they travel through executors): {exc}") from None
    assert back == m, f"{what}: records change through JSON (tuples or numpy scalars?)"


def check_measure_records(obj):
    """``measure`` without data gives one record per applicable candidate with the contract's keys
    (``held_out`` False), JSON-serialisable; each spec quantizes to exactly the measured storage."""
    p = _make(obj)
    x = _data(1)
    m = p.measure(x)
    _check_records(m, "without data")
    assert not any(c["held_out"] for c in m), "records without data claim held-out scores"
    for c in m[:3]:
        qt = p.quantize_candidate(x, c["spec"])
        assert int(qt.nbytes) == int(c["nbytes"]), f"candidate {c['label']}: measured {c['nbytes']} bytes, quantizes to {qt.nbytes}"


def check_measure_with_hessians(obj):
    """With Hessians of two folds the records are held out (``held_out`` True) and the output error follows
    the data (a scaled Hessian scales no relative ranking); with one fold they are in-sample (``held_out`` False);
    ``method="gptq"`` measures and quantizes at the measured storage, and the GPTQ candidate's output error on
    the data is no worse than round to nearest's."""
    p = _make(obj)
    x = _data(7)
    two, one = _folds(SHAPE[1], 8), _folds(SHAPE[1], 8, folds=1)
    for method in ("rtn", "gptq"):
        m2 = p.measure(x, hessians=two, method=method)
        _check_records(m2, f"two folds, method={method!r}")
        assert all(c["held_out"] for c in m2), f"method={method!r}: two folds but records not held out"
        m1 = p.measure(x, hessians=one, method=method)
        _check_records(m1, f"one fold, method={method!r}")
        assert not any(c["held_out"] for c in m1), f"method={method!r}: one fold but records claim held-out scores"
    m = p.measure(x, hessians=two, method="gptq")
    h = two.full()
    worse = []
    for c in m[:4]:
        g = p.quantize_candidate(x, c["spec"], hessians=two, method="gptq")
        r = p.quantize_candidate(x, c["spec"], hessians=two)
        assert int(g.nbytes) == int(c["nbytes"]), f"candidate {c['label']}: measured {c['nbytes']} bytes, GPTQ gives {g.nbytes}"
        eg, er = _output_error(x, g.dequantize(), h), _output_error(x, r.dequantize(), h)
        if eg > er * 1.001 + 1e-12:
            worse.append(f"{c['label']}: {eg:.4g} > {er:.4g}")
    assert not worse, "method='gptq' fits worse than round to nearest on its own data: " + "; ".join(worse)


def check_measure_and_plan_deterministic(obj):
    """The same inputs give the same records and the same plan."""
    p = _make(obj)
    x, h = _data(9), _folds(SHAPE[1], 10)
    a, b = p.measure(x, hessians=h), p.measure(x.copy(), hessians=h)
    assert a == b, "measure gave different records for the same inputs"
    ms = [a, p.measure(_data(11), hessians=h)]
    cap = sum(min(8 * c["nbytes"] for c in m) + max(8 * c["nbytes"] for c in m) for m in ms) / 2
    assert p.plan(ms, capacity_bits=cap) == p.plan(ms, capacity_bits=cap), "plan differs for the same inputs"


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


def check_planner_pickles(obj):
    """The planner survives pickling (an executor sends it to its workers) and measures the same after."""
    p = _make(obj)
    back = pickle.loads(pickle.dumps(p))
    x, h = _data(12), _folds(SHAPE[1], 13)
    assert back.measure(x, hessians=h) == p.measure(x, hessians=h), "the unpickled planner measures differently"


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
    the budget when the planner declares ``budget_bits``, with and without Hessians (``method="gptq"``, held-out
    errors recorded), and the saved file loads back to the same codes."""
    import qcore

    cls = _cls(obj)
    tensors = {"a.weight": _data(5), "b.weight": _data(6, (8, 32))}
    kw = {"budget_bits": 4.0} if "budget_bits" in cls.options else {}
    hs = {"a.weight": _folds(64, 14), "b.weight": _folds(32, 15)}
    qm = qcore.quantize_model(tensors, scheme=cls.name, progress=False, **kw)
    qg = qcore.quantize_model(tensors, scheme=cls.name, progress=False, hessians=hs, method="gptq", **kw)
    for model in (qm, qg):
        assert all(model.info[n].get("planned_by") == cls.name for n in model.quantized), f"info: {model.info}"
        if kw:
            assert model.average_bits <= 4.0, f"average bits {model.average_bits} above the budget 4.0"
    for n in qg.quantized:
        info = qg.info[n]
        assert info.get("method") == "gptq" and info.get("held_out") is True, f"{n}: info {info}"
        assert math.isfinite(info["error"]) and math.isfinite(info["error_in_sample"]), f"{n}: info {info}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        qg.save(path)
        back = qcore.load_quantized(path)
        for n in qg.quantized:
            assert np.array_equal(back[n].codes, qg[n].codes), f"{n}: codes differ after save/load"


PLANNER_CHECKS = [
    check_class_contract,
    check_unknown_option_refused,
    check_measure_records,
    check_measure_with_hessians,
    check_measure_and_plan_deterministic,
    check_plan_respects_capacity,
    check_planner_pickles,
    check_quantize_returns_a_candidate,
    check_model_plan_and_file_round_trip,
]


def planner_checks(obj=None) -> list[Check]:
    return [Check(f.__name__, f, "planner") for f in PLANNER_CHECKS]
