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
from ..metrics import matches
from ..ptq.hessian import (DEFAULT_FOLDS, HessianAccumulator, HessianFile, HessianFolds, MixedHessians, hessian_for,
                           hessian_key, load_hessians)
from ..kernels.base import packed_size
from ..quantization.driver import PlanItem, choose, measure_items, named_error
from ..quantization.planner import Planner
from .execution import QuantizeTask, executor_map, ordered_map, run_task
from .formats import ModelWriter
from .qmodel import QModel
from .shards import check_fits, parse_size
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
                   calibrate=None, executor=None, output=None, format: str = "qcore", max_shard_size=None,
                   source=None, **options: Any):
    """Quantize a model's named tensors into a :class:`qcore.QModel` (or, with ``output=``, straight into files).

    :param tensors: ``{name: array}`` (a dict, ``qcore.load_tensors(...)``'s lazy mapping), or a path to a
        ``.safetensors``/``.npz`` file or a Hugging Face model folder (shards too), read tensor by tensor
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
    :param executor: any ``concurrent.futures.Executor`` (a Dask ``Client.get_executor()``, Ray's, a
        ``ProcessPoolExecutor``): each tensor's work — measuring the mixed candidates, quantizing — runs there
        as a task that reads its own tensor from the input path (``tensors`` must then be a path or a
        ``load_tensors`` mapping, never arrays), while this process plans and writes in model order.  The
        result is the same bytes as without one (docs/models.md, "Many machines").
    :param output: write the model to this path as tensors are quantized, in ``format`` (``"qcore"``,
        ``"compressed-tensors"``, ...), and return a :class:`qcore.model.WrittenModel` (paths, report) instead of
        a QModel: memory stays at about the largest tensor, whatever the model's size
    :param max_shard_size: with ``output``: shards of at most this many bytes (``"5GB"``, ``"500MB"``, an int)
        plus ``model.safetensors.index.json``, written last; a tensor larger than that is an error before any
        work
    :param source: with ``output``: the Hugging Face folder whose other files (config, tokenizer) go along
        (``QModel.save``'s ``source=``); default: ``tensors`` when it is a folder and the format takes one
    :param options: scheme options (``bits``, ``granularity``, ...).  For ``mixed``: ``candidates``,
        ``target_sqnr``, ``output_error``, ``gptq_options`` and ``sensitivity`` (a number, or
        ``{name or pattern: weight or per-element array}``, weighting the weight error of tensors without data)

    Memory: tensors are read, quantized and dropped one at a time, so a lazily loaded file needs about its
    largest tensor plus the output (without ``output=``: the quantized model).  ``mixed`` makes two passes
    (measure every candidate, then quantize the chosen one) to keep that bound; its measure -> plan loop is
    :func:`qcore.quantization.driver.run_plan`.
    """
    if "calibration" in options:
        warnings.warn("quantize_model(calibration=...) is deprecated; use calibrate= (activation arrays) or "
                      "hessians= (Hessians)", DeprecationWarning, stacklevel=2)
        if calibrate is not None:
            raise TypeError("pass calibrate= or its deprecated spelling calibration=, not both")
        calibrate = options.pop("calibration")
    input_path = os.fspath(tensors) if isinstance(tensors, (str, os.PathLike)) else None
    own_file = None
    if input_path is not None:
        tensors = own_file = load_tensors(input_path)
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
    if executor is not None:
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be a concurrent.futures.Executor (with submit), got {type(executor).__name__}")
        if not isinstance(tensors, TensorFile):
            raise TypeError("executor= needs the model as a path (or a qcore.load_tensors mapping): each task reads "
                            "its own tensor from the input file, so no array travels to the workers")
    if output is None and (max_shard_size is not None or source is not None):
        raise TypeError("max_shard_size= and source= are options of output= (or of QModel.save)")
    sensitivity = options.pop("sensitivity", None)
    plan = plan_tensors(tensors, scheme, include, exclude, rules, options)
    writer_args = _writer_args(plan, tensors, input_path, output, format, max_shard_size, source, options)
    hess, own_hess = _hessian_source(hessians)

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
    if writer_args is not None:
        _check_shard_size(plan, tensors, counts, quantizers, quantizer_for, writer_args)
    bar = progress_bar(sum(counts[n] for n, _, _ in fixed), progress, "quantizing")
    tasks: dict[str, QuantizeTask] = {}
    for name, q, rule in fixed:
        gptq_h = hess if method == "gptq" else None
        tasks[name] = QuantizeTask(name, _plan_item(tensors, name, gptq_h, None, None).load, q, method=method,
                                   dtype=_source_dtype(tensors, name), info={"rule": rule} if rule else {})
    writer = stream = None
    try:
        if planned:
            _plan_tasks(tensors, planned, fixed, tasks, budget_bits, sensitivity, bar, counts, hess, method, executor)
        # quantize in model order (tasks run ahead on the executor); write or collect each result as it comes
        bar.reset(total=total_weights)
        bar.set_description_str("quantizing")
        order = [n for n, s, _ in plan if s is not None]
        stream = ordered_map(executor, run_task, [tasks[n] for n in order], names=order)
        if writer_args is not None:
            fmt, path, save_options = writer_args
            writer = fmt.open_writer(path, metadata={}, **save_options) or _CollectingWriter(fmt, path, save_options)
            sink = WrittenModel(path, fmt.name)
        else:
            sink = QModel()
        for name, s, opts in plan:
            if s is not None:
                r = next(stream)
                bar.set_postfix_str(name[-40:])
                value, info = r.qtensor, {"sqnr_db": r.sqnr_db, **r.info}
                bar.update(counts[name])
            else:
                src = _source_dtype(tensors, name)
                arr = tensors.raw(name) if src == "bfloat16" else tensors[name]
                value = np.array(arr, copy=True) if isinstance(tensors, TensorFile) and not arr.flags.writeable else arr
                info = {"dtype": "bfloat16"} if src == "bfloat16" else {}
                if opts.get("rule"):
                    info["rule"] = opts["rule"]
            if writer is not None:
                writer.add(name, value, info, info.get("dtype"))
                sink.add_row(name, value, info)
            else:
                sink[name] = value
                if info:
                    sink.info[name] = info
            del value
        if budget_bits is not None:
            used = sum(8 * r for r in _quantized_bytes(sink))
            if used > budget_bits * total_weights + 1e-6:  # pragma: no cover - the planner guarantees this
                raise RuntimeError(f"mixed plan exceeds its budget: {used / total_weights:.4f} > {budget_bits} bits per weight")
        if writer is not None:
            sink.nbytes_written = writer.close()
            sink.files = list(getattr(getattr(writer, "shards", None), "files", []) or [path])
        return sink
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if stream is not None:
            stream.close()  # cancels the tasks not started yet
        bar.close()
        for f in (own_file, own_hess):
            if f is not None and hasattr(f, "close"):
                f.close()


def _quantized_bytes(sink) -> list[int]:
    if isinstance(sink, QModel):
        return [int(sink[n].nbytes) for n in sink.quantized]
    return [int(r["bytes_q"]) for r in sink.report() if r["scheme"] is not None]


def _writer_args(plan, tensors, input_path, output, format, max_shard_size, source, options):
    """``(format, path, save options)`` of ``output=``, checked before any work (None without output)."""
    if output is None:
        return None
    from .formats import get_format

    fmt = get_format(format)
    path = os.fspath(output)
    save_options: dict[str, Any] = {}
    if source is None and fmt.uses_source and input_path is not None and os.path.isdir(input_path):
        source = input_path
    if source is not None:
        save_options["source"] = source
    if max_shard_size is not None:
        save_options["max_shard_size"] = max_shard_size
    fmt.check_save_options(save_options)
    fmt.check_plan([(n, s, o) for n, s, o in plan], save_options)
    return fmt, path, save_options


def _check_shard_size(plan, tensors, counts, quantizers, quantizer_for, writer_args) -> None:
    """A tensor that cannot fit one shard is an error before any work: kept tensors take their bytes, quantized
    ones at least their packed codes (the narrowest candidate's for a planner)."""
    limit = writer_args[2].get("max_shard_size")
    if limit is None:
        return
    sizes = {}
    for name, s, opts in plan:
        if s is None:
            src = _source_dtype(tensors, name)
            shape, dtype = shape_and_dtype(tensors, name)
            sizes[name] = int(np.prod(shape, dtype=np.int64)) * (2 if src == "bfloat16" else dtype.itemsize)
            continue
        q = quantizer_for(s, {k: v for k, v in opts.items() if k != "__rule__"})
        specs = getattr(q, "specs", None) or []
        bits = [int(sp["bits"]) for sp in specs if isinstance(sp, dict) and "bits" in sp] or [int(getattr(q, "bits", 1))]
        sizes[name] = packed_size(counts[name], min(bits))
    check_fits(sizes, parse_size(limit))


class _CollectingWriter(ModelWriter):
    """For a format without a writer of its own: the model collected in memory, saved at :meth:`close`."""

    def __init__(self, fmt, path: str, options: dict):
        self.fmt, self.path, self.options = fmt, path, options
        self.model = QModel()

    def add(self, name, tensor, info=None, dtype=None):
        self.model[name] = tensor
        if info:
            self.model.info[name] = dict(info)

    def close(self) -> int:
        return self.fmt.save(self.model, self.path, **self.options)


class WrittenModel:
    """What ``quantize_model(..., output=path)`` returns: the model is in the files, not in memory.

    :ivar path: the output path; :ivar format: its format's name; :ivar files: the files written (shards, index);
    :ivar nbytes_written: their bytes.  :meth:`report` gives the rows ``QModel.report()`` would; :meth:`load`
    reads the model back (``qcore.load_quantized``)."""

    def __init__(self, path: str, format: str):
        self.path, self.format = path, format
        self.files: list[str] = []
        self.nbytes_written = 0
        self._rows: list[dict] = []

    def add_row(self, name: str, value, info: dict) -> None:
        row = QModel({name: value}, info={name: info}).report()[0]
        self._rows.append(row)

    def report(self) -> list[dict]:
        """One row per tensor, as :meth:`qcore.QModel.report` (SQNR as measured while quantizing)."""
        return [dict(r) for r in self._rows]

    @property
    def nbytes(self) -> int:
        """Storage of the tensors (as ``QModel.nbytes``)."""
        return sum(int(r["bytes_q"]) for r in self._rows)

    @property
    def average_bits(self) -> float:
        q = [r for r in self._rows if r["scheme"] is not None]
        count = sum(math.prod(r["shape"]) for r in q)
        return 8.0 * sum(r["bytes_q"] for r in q) / count if count else math.nan

    def load(self, *, verify: bool = True) -> QModel:
        from .formats import load_quantized

        return load_quantized(self.path, verify=verify)

    def __repr__(self) -> str:
        return (f"WrittenModel({self.path!r}, format={self.format!r}, {len(self._rows)} tensors, "
                f"{len(self.files)} files, {self.nbytes_written} bytes)")


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


def _plan_tasks(tensors, planned, fixed, tasks, budget_bits, sensitivity, bar, counts, hess, method, executor):
    """Measure every candidate of every planned tensor (tasks on ``executor``), plan centrally, and add each
    planned tensor's quantizing task (its chosen candidate) to ``tasks``."""
    bar.reset(total=sum(counts[n] for n, _, _ in planned))
    bar.set_description_str("measuring")
    groups: dict[int, list[int]] = {}  # one planner decides for all tensors that share it (normally one)
    for i, (_, q, _) in enumerate(planned):
        groups.setdefault(id(q), []).append(i)
    items = [_plan_item(tensors, name, hess, counts[name], sensitivity) for name, _, _ in planned]
    measured: list = [None] * len(planned)
    for idxs in groups.values():
        q = planned[idxs[0]][1]
        sub = [items[i] for i in idxs]
        mmap = map if executor is None else executor_map(executor, [it.name for it in sub])
        for i, m in zip(idxs, measure_items(q, sub, method=method, progress=bar, measure_map=mmap)):
            measured[i] = m
    # the budget left by fixed-scheme tensors: their sizes, from quantizing them (again when they are written)
    fixed_bits = 0
    if budget_bits is not None and fixed:
        for r in ordered_map(executor, run_task, [tasks[n] for n, _, _ in fixed], names=[n for n, _, _ in fixed]):
            fixed_bits += 8 * r.qtensor.nbytes
    # plan; other planner groups (rare) keep their own minimum
    total_count = sum(counts[n] for n, _, _ in planned + fixed)
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
        for i, cand in zip(idxs, picks):
            name, _, rule = planned[i]
            info = {"planned_by": q.name, "candidate": cand["label"]}
            if rule:
                info["rule"] = rule
            tasks[name] = QuantizeTask(name, items[i].load, q, spec=cand["spec"], method=method,
                                       dtype=_source_dtype(tensors, name), info=info,
                                       plan={k: cand[k] for k in ("error", "error_in_sample", "held_out") if k in cand})
