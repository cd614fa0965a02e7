"""``qcore.quantize_model``: quantize many named tensors by glob patterns and rules, optionally under a bit budget."""
from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np

from ..api import get_quantizer
from ..metrics import matches, sqnr_db
from ..ptq import gptq
from ..ptq.hessian import (DEFAULT_FOLDS, HessianAccumulator, HessianFile, HessianFolds, MixedHessians, hessian_for,
                           hessian_key, load_hessians)
from ..quantization.driver import PlanItem, choose, measure_items, named_error, planner_kwargs
from ..quantization.planner import Planner
from ..tensor import QTensor
from .qmodel import QModel
from .tensors import TensorFile, load_tensors, shape_and_dtype

#: keys of a rule that are not scheme options
_RULE_KEYS = ("scheme", "skip")


def _patterns(value, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        pats = list(value)
    except TypeError:
        raise TypeError(f"{what} must be a glob pattern or a list of them, got {type(value).__name__}") from None
    if not all(isinstance(p, str) for p in pats):
        raise TypeError(f"{what} must hold strings (glob patterns), got {pats!r}")
    return pats


def _normalize_rules(rules) -> list[tuple[str, dict | None]]:
    if rules is None:
        return []
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for item in items:
        try:
            pat, opts = item
        except (TypeError, ValueError):
            raise TypeError("rules must map glob patterns to option dicts (or be a list of (pattern, options) pairs)") from None
        if not isinstance(pat, str):
            raise TypeError(f"rule patterns must be strings, got {pat!r}")
        if opts is None or opts is False:
            out.append((pat, None))
            continue
        if not isinstance(opts, Mapping):
            raise TypeError(f"rule {pat!r}: options must be a dict (or None to keep the tensor as it is), got {opts!r}")
        opts = dict(opts)
        if opts.pop("skip", False):
            out.append((pat, None))
        else:
            out.append((pat, opts))
    return out


def _per_tensor(value, name: str, default=None):
    """``value[name]`` (exact name, else the first matching glob pattern) for dict-valued options, else ``value``."""
    if isinstance(value, Mapping):
        if name in value:
            return value[name]
        for pat, v in value.items():
            if isinstance(pat, str) and matches(name, pat):
                return v
        return default
    return default if value is None else value


def plan_tensors(tensors: Mapping, scheme: str, include=None, exclude=None, rules=None, options=None) -> list[tuple[str, str | None, dict]]:
    """For each tensor name: ``(name, scheme or None to keep it, options)``.  No data is read.

    The first rule whose pattern matches a name decides for it (even a 1-d tensor: a rule is how you ask for
    biases and norms to be quantized); other tensors are quantized when they are float, have at least two
    dimensions, match ``include`` (if given) and do not match ``exclude``.  Non-float tensors always stay.
    """
    inc = _patterns(include, "include")
    exc = _patterns(exclude, "exclude")
    rls = _normalize_rules(rules)
    options = dict(options or {})
    out = []
    for name in tensors:
        shape, dtype = shape_and_dtype(tensors, name)
        if dtype.kind != "f":
            out.append((name, None, {}))
            continue
        rule = next(((p, o) for p, o in rls if matches(name, p)), None)
        if rule is not None:
            pat, ropts = rule
            if ropts is None:
                out.append((name, None, {"rule": pat}))
                continue
            rs = ropts.get("scheme", scheme)
            base = options if rs == scheme else {}
            merged = {**base, **{k: v for k, v in ropts.items() if k != "scheme"}}
            out.append((name, rs, {**merged, "__rule__": pat}))
            continue
        if len(shape) < 2 or (inc is not None and not matches(name, inc)) or (exc and matches(name, exc)):
            out.append((name, None, {}))
            continue
        out.append((name, scheme, dict(options)))
    return out


def progress_bar(total: int, enabled, desc: str):
    """A tqdm bar on stderr counting weights (``total`` of them), only when stderr is a terminal.

    ``enabled`` may also be a callable ``(phase, done, total)``: it is called instead of drawing a bar (tests
    and embedding applications watch progress that way)."""
    if callable(enabled):
        return _CallbackBar(total, enabled, desc)
    if not (bool(enabled) and sys.stderr.isatty()):
        return _NoBar()
    from tqdm.auto import tqdm  # a dependency (setup.py); imported only when a bar is drawn

    return tqdm(total=total, desc=desc, unit="weight", unit_scale=True, leave=False, file=sys.stderr)


class _NoBar:
    n = 0
    total = 0

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def set_description_str(self, s):
        pass

    def reset(self, total=None):
        pass

    def close(self):
        pass


class _CallbackBar(_NoBar):
    def __init__(self, total, fn, desc):
        self.total, self.fn, self.desc, self.n = total, fn, desc, 0

    def update(self, n=1):
        self.n += n
        self.fn(self.desc, self.n, self.total)

    def set_description_str(self, s):
        self.desc = s

    def reset(self, total=None):
        self.n = 0
        if total is not None:
            self.total = total


def _source_dtype(tensors, name: str) -> str:
    """The dtype ``name`` has at its source (``"bfloat16"`` for bf16 tensors of a file)."""
    if isinstance(tensors, TensorFile):
        return tensors.source_dtype(name)
    return str(shape_and_dtype(tensors, name)[1])


def _set_source_dtype(qt: QTensor, tensors, name: str) -> None:
    """Record the input's dtype in the QTensor (``qcore dequantize`` writes that dtype back by default)."""
    src = _source_dtype(tensors, name)
    if src in ("float16", "bfloat16", "float32", "float64"):
        qt.dtype = src


def _check_budget_floor(planned, fixed, counts, total_weights, budget_bits) -> None:
    """Refuse, before measuring anything, a budget below what the narrowest candidate's codes alone need."""
    floor = 0.0
    for name, q, _ in planned:
        specs = getattr(q, "specs", None) or []
        bits = [int(s["bits"]) for s in specs if isinstance(s, dict) and "bits" in s]
        if not bits:
            return  # a planner that does not list its candidates: only the measured check applies
        floor += min(bits) * counts[name]
    # fixed-scheme tensors count against the same budget, at their own code width
    floor += sum(int(getattr(q, "bits", 1)) * counts[name] for name, q, _ in fixed)
    floor /= max(total_weights, 1)
    if budget_bits < floor:
        raise ValueError(f"budget_bits={budget_bits:g} is below the minimum: the narrowest candidates' codes alone take "
                         f"{floor:.3f} bits per weight, before their parameters; raise the budget or add narrower candidates")


def _hessian_source(hessians):
    """``hessians`` as a mapping ``name -> HessianFolds or (K, K) array`` (a path opens a lazy
    :class:`qcore.ptq.HessianFile`; a list of paths or mappings mixes them with equal weight), and what to close
    (or None)."""
    if hessians is None:
        return None, None
    if isinstance(hessians, (list, tuple)):
        if not hessians:
            raise ValueError("hessians is an empty list")
        parts = [_hessian_source(h)[0] for h in hessians]
        mixed = MixedHessians(parts)
        return mixed, mixed
    if isinstance(hessians, (str, os.PathLike)):
        f = load_hessians(hessians)
        return f, f
    if not isinstance(hessians, Mapping):
        raise TypeError(f"hessians must be a mapping name -> (K, K) array (or qcore.ptq.HessianFolds), a path to "
                        f"a Hessian file, or a list of them (mixed with equal weight), got {type(hessians).__name__}")
    return hessians, None


def _hessians_of_arrays(calibrate, names, tensors) -> dict[str, HessianFolds]:
    """``calibrate={name or pattern: input activations X}`` as Hessians in folds, for the tensors it names."""
    if not isinstance(calibrate, Mapping):
        raise TypeError("quantize_model's calibrate= is a mapping {tensor name or glob pattern: input activations X} "
                        f"(functions running a model are the torch adapter's calibrate=), got {type(calibrate).__name__}")
    out = {}
    for name in names:
        x = _per_tensor(calibrate, name)
        if x is None:
            continue
        try:
            out[name] = HessianAccumulator(folds=DEFAULT_FOLDS).update(x).folds()
        except (TypeError, ValueError) as exc:
            raise named_error(exc, name) from exc
    return out


class _Load:
    """``load()`` of a :class:`PlanItem`: ``(tensor, HessianFolds or None)``.  Holds only what the tensor needs:
    a lazily read file (which pickles as its path) or the one array, and the one Hessian entry."""

    def __init__(self, tensors, name: str, hessians, hkey: str | None):
        self.name = name
        self.tensors = tensors if isinstance(tensors, TensorFile) else {name: tensors[name]}
        if hkey is None or hessians is None:
            self.hessians, self.hkey = None, None
        elif isinstance(hessians, HessianFile) or (isinstance(hessians, MixedHessians) and all(
                isinstance(src, HessianFile) for src in hessians.sources)):  # lazy: pickles as paths
            self.hessians, self.hkey = hessians, hkey
        else:
            self.hessians, self.hkey = {hkey: hessians[hkey]}, hkey

    def __call__(self):
        x = self.tensors[self.name]
        h = None if self.hkey is None else HessianFolds.of(self.hessians[self.hkey])
        return x, h


def quantize_model(tensors, scheme: str = "linear", *, include=None, exclude=None, rules=None,
                   budget_bits: float | None = None, progress: bool = True, method: str = "rtn", hessians=None,
                   calibrate=None, **options: Any) -> QModel:
    """Quantize a model's named tensors into a :class:`qcore.QModel`.

    :param tensors: ``{name: array}`` (a dict, ``qcore.load_tensors(...)``'s lazy mapping), or a path to a
        ``.safetensors``/``.npz`` file, read tensor by tensor
    :param scheme: the scheme for tensors no rule names; ``"mixed"`` chooses scheme and bits per tensor
    :param include: glob pattern(s): only matching tensors are quantized (default: every float tensor of 2+ dims)
    :param exclude: glob pattern(s): matching tensors stay as they are
    :param rules: ``{pattern: options}`` (or a list of pairs), first match wins: per-tensor options such as
        ``{"bits": 8}`` or ``{"scheme": "kmeans", "bits": 4}``; ``None``/``{"skip": True}`` keeps the tensor.
        A rule also quantizes 1-d tensors (biases, norms), which otherwise stay float.
    :param budget_bits: with ``scheme="mixed"``: average bits per quantized weight, parameters counted, over
        all quantized tensors (those with fixed schemes count too); never exceeded
    :param progress: a tqdm bar on stderr when it is a terminal, counting weights and naming the phase
        (``measuring`` the mixed candidates, ``quantizing``); or a callable ``(phase, done, total)``
    :param method: ``"rtn"`` (round to nearest) or ``"gptq"`` (:func:`qcore.gptq` with each tensor's Hessian;
        tensors without one — embeddings, say — are rounded to nearest, and ``qm.info[name]["method"]`` says
        which method each tensor got)
    :param hessians: the layers' input statistics: ``{tensor name: H}`` (``H = mean(x x^T)`` of the layer's
        inputs, ``(K, K)`` for a ``(N, K)`` weight, or a :class:`qcore.ptq.HessianFolds`) or the path of a
        Hessian file (``qtorch.collect_hessians``; older one-fold files too); names match exactly or by a
        dotted suffix.  Needed by ``method="gptq"``; with ``scheme="mixed"`` the candidates are judged by their
        output error ``trace((W - W') H (W - W')^T)`` on held-out folds (docs/ptq.md)
    :param calibrate: ``{tensor name or pattern: input activations X}``: Hessians in folds made from ``X``
        (for the tensors ``hessians`` does not cover).  ``calibration=`` is its deprecated spelling.
    :param options: scheme options (``bits``, ``granularity``, ...).  For ``mixed``: ``candidates``,
        ``target_sqnr``, ``output_error``, ``gptq_options`` and ``sensitivity`` (a number, or
        ``{name or pattern: weight or per-element array}``, weighting the weight error of tensors without data)

    Memory: tensors are read, quantized and dropped one at a time, so a lazily loaded file needs about its
    largest tensor plus the output.  ``mixed`` makes two passes (measure every candidate, then quantize the
    chosen one) to keep that bound; its measure -> plan loop is :func:`qcore.quantization.driver.run_plan`.
    """
    if "calibration" in options:
        warnings.warn("quantize_model(calibration=...) is deprecated; use calibrate= (activation arrays) or "
                      "hessians= (Hessians)", DeprecationWarning, stacklevel=2)
        if calibrate is not None:
            raise TypeError("pass calibrate= or its deprecated spelling calibration=, not both")
        calibrate = options.pop("calibration")
    own_file = None
    if isinstance(tensors, (str, os.PathLike)):
        tensors = own_file = load_tensors(tensors)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> array or a path, got {type(tensors).__name__}")
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a string, got {scheme!r}")
    if budget_bits is not None:
        if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float, np.integer, np.floating)):
            raise TypeError(f"budget_bits must be a number, got {budget_bits!r}")
        if not (math.isfinite(budget_bits) and budget_bits > 0):
            raise ValueError(f"budget_bits must be a positive number, got {budget_bits}")
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and hessians is None and calibrate is None:
        raise TypeError("method='gptq' needs hessians= (a mapping or a file of per-tensor Hessians, "
                        "e.g. from qtorch.collect_hessians) or calibrate= (input activations per tensor)")
    sensitivity = options.pop("sensitivity", None)
    plan = plan_tensors(tensors, scheme, include, exclude, rules, options)
    hess, own_hess = _hessian_source(hessians)

    model = QModel()
    quantizers: dict[tuple, Any] = {}

    def quantizer_for(s, opts):
        key = (s, tuple(sorted((k, repr(v)) for k, v in opts.items())))
        if key not in quantizers:
            quantizers[key] = get_quantizer(s, **opts)
        return quantizers[key]

    # which tensors does a planner (mixed) handle?
    planned, fixed = [], []
    for name, s, opts in plan:
        if s is None:
            continue
        q = quantizer_for(s, {k: v for k, v in opts.items() if k != "__rule__"})
        (planned if isinstance(q, Planner) else fixed).append((name, q, opts.get("__rule__")))
    if (hess is not None or calibrate is not None) and method == "rtn" and not planned:
        raise TypeError("hessians and calibrate are used by method='gptq' or by a planning scheme (scheme='mixed')")
    if sensitivity is not None and not planned:
        raise TypeError("sensitivity is an option of a planning scheme (scheme='mixed')")
    if budget_bits is not None and not planned:
        raise ValueError(f"budget_bits needs a planning scheme (scheme='mixed'); scheme {scheme!r} quantizes every tensor at fixed bits")
    if calibrate is not None:  # activation arrays: Hessians in folds, for the tensors hessians= does not cover
        names = [n for n, _, _ in fixed + planned if hessian_for(hess, n) is None]
        extra = _hessians_of_arrays(calibrate, names, tensors)
        hess = extra if hess is None else _Chain(extra, hess)

    def count(name):
        n = 1
        for d in shape_and_dtype(tensors, name)[0]:
            n *= int(d)
        return n

    counts = {name: count(name) for name, _, _ in fixed + planned}
    total_weights = sum(counts.values())
    if planned and budget_bits is not None:
        _check_budget_floor(planned, fixed, counts, total_weights, budget_bits)
    bar = progress_bar(sum(counts[n] for n, _, _ in fixed), progress, "quantizing")
    results: dict[str, tuple[QTensor, float, dict]] = {}
    try:
        fixed_bits = 0
        for name, q, rule in fixed:
            bar.set_postfix_str(name[-40:])
            x = tensors[name]
            h = hessian_for(hess, name) if method == "gptq" and np.ndim(x) == 2 else None
            try:
                qt = q.quantize(x) if h is None else gptq(x, HessianFolds.of(h).full(), q)
            except (ValueError, TypeError) as exc:
                raise named_error(exc, name) from exc
            _set_source_dtype(qt, tensors, name)
            info = {"rule": rule} if rule else {}
            if method == "gptq":
                info["method"] = "rtn" if h is None else "gptq"
            results[name] = (qt, sqnr_db(x, qt.dequantize()), info)
            fixed_bits += 8 * qt.nbytes
            del x
            bar.update(counts[name])
        if planned:
            _quantize_planned(tensors, planned, fixed, results, fixed_bits, budget_bits, sensitivity, bar, counts,
                              hess, method)
        for name, s, opts in plan:
            if name in results:
                qt, snr, info = results[name]
                model[name] = qt
                model.info[name] = {"sqnr_db": snr, **info}
            else:
                src = _source_dtype(tensors, name)
                arr = tensors.raw(name) if src == "bfloat16" else tensors[name]
                model[name] = np.array(arr, copy=True) if isinstance(tensors, TensorFile) and not arr.flags.writeable else arr
                if src == "bfloat16":  # kept as its 16-bit patterns: written back as bfloat16, unchanged
                    model.info.setdefault(name, {})["dtype"] = "bfloat16"
                if opts.get("rule"):
                    model.info.setdefault(name, {})["rule"] = opts["rule"]
    finally:
        bar.close()
        for f in (own_file, own_hess):
            if f is not None and hasattr(f, "close"):
                f.close()
    return model


class _Chain(Mapping):
    """Hessians from activation arrays first, then a Hessian file."""

    def __init__(self, first: Mapping, second: Mapping):
        self.first, self.second = first, second

    def __getitem__(self, key):
        return self.first[key] if key in self.first else self.second[key]

    def __iter__(self):
        yield from self.first
        yield from (k for k in self.second if k not in self.first)

    def __len__(self):
        return sum(1 for _ in self)

    def __contains__(self, key):
        return key in self.first or key in self.second


def _plan_item(tensors, name, hess, count, sensitivity) -> PlanItem:
    hkey = hessian_key(hess, name) if hess is not None and len(shape_and_dtype(tensors, name)[0]) == 2 else None
    return PlanItem(name, count, _Load(tensors, name, hess, hkey), _per_tensor(sensitivity, name))


def _quantize_planned(tensors, planned, fixed, results, fixed_bits, budget_bits, sensitivity, bar, counts,
                      hess=None, method="rtn"):
    # pass 1: measure every candidate of every planned tensor (the driver; one task per tensor)
    bar.reset(total=sum(counts[n] for n, _, _ in planned))
    bar.set_description_str("measuring")
    groups: dict[int, list[int]] = {}  # one planner decides for all tensors that share it (normally one)
    for i, (_, q, _) in enumerate(planned):
        groups.setdefault(id(q), []).append(i)
    items = [_plan_item(tensors, name, hess, counts[name], sensitivity) for name, _, _ in planned]
    measured: list = [None] * len(planned)
    for idxs in groups.values():
        q = planned[idxs[0]][1]
        for i, m in zip(idxs, measure_items(q, [items[i] for i in idxs], method=method, progress=bar)):
            measured[i] = m
    # plan: the budget left by fixed-scheme tensors; other planner groups (rare) keep their own minimum
    total_count = sum(counts[n] for n, _, _ in planned + fixed)
    choice: dict[int, dict] = {}
    for idxs in groups.values():
        q = planned[idxs[0]][1]
        budget = budget_bits if budget_bits is not None else q.config.get("budget_bits")
        target = q.config.get("target_sqnr")
        capacity = None
        if budget is not None and target is None:
            capacity = budget * total_count - fixed_bits
            for j, other in enumerate(measured):
                if j not in idxs:
                    capacity -= min(8 * c["nbytes"] for c in other)
        if capacity is not None:
            need = sum(min(8 * c["nbytes"] for c in measured[i]) for i in idxs)
            if need > capacity:
                floor = (need + fixed_bits + (budget * total_count - fixed_bits - capacity)) / total_count
                raise ValueError(f"budget_bits={budget:g} is too small: the cheapest candidates need {floor:.3f} bits per "
                                 f"weight (parameters counted); raise the budget to at least {math.ceil(floor * 1000) / 1000:.3f} "
                                 f"or add cheaper candidates")
        picks = choose(q, [items[i] for i in idxs], [measured[i] for i in idxs], capacity_bits=capacity,
                       target_sqnr=target)
        for i, c in zip(idxs, picks):
            choice[i] = c
    # pass 2: quantize each tensor with its chosen candidate, fitted on all its data
    bar.reset(total=sum(counts[n] for n, _, _ in planned))
    bar.set_description_str("quantizing")
    for i, (name, q, rule) in enumerate(planned):
        bar.set_postfix_str(name[-40:])
        x, h = items[i].load()
        cand = choice[i]
        qt = q.quantize_candidate(x, cand["spec"], **planner_kwargs(h, method if h is not None else "rtn"))
        _set_source_dtype(qt, tensors, name)
        info = {"planned_by": q.name, "candidate": cand["label"]}
        for key in ("error", "error_in_sample"):
            if key in cand and h is not None:
                info[key] = float(cand[key])
        if h is not None:
            info["held_out"] = bool(cand.get("held_out", False))
        if method == "gptq":
            info["method"] = "gptq" if h is not None else "rtn"
        if rule:
            info["rule"] = rule
        results[name] = (qt, sqnr_db(x, qt.dequantize()), info)
        del x
        bar.update(counts[name])
    if budget_bits is not None:
        used = sum(8 * r[0].nbytes for r in results.values())
        if used > budget_bits * total_count + 1e-6:  # pragma: no cover - the planner guarantees this
            raise RuntimeError(f"mixed plan exceeds its budget: {used / total_count:.4f} > {budget_bits} bits per weight")
