"""The ``mixed`` planner: choose a scheme and bit width per tensor from *measured* error, under a bit budget.

A :class:`qcore.Planner` (registered with the ``qcore_planners`` hook), not a scheme: it never encodes or
decodes; it measures candidates, plans, and returns the chosen candidate's QTensor.

For every tensor it quantizes with each candidate (by default, without data, linear 2/3/4/8 bits per channel
and per group, kmeans 2/3/4 and log 4/5 when those plugins are installed; with Hessians, linear 3/4/5 bits per
group and 4/5/6/8 per channel, :data:`DEFAULT_CALIBRATED_CANDIDATES`), and records the true storage (packed codes plus
parameters, in bits) and the error.  Then:

* ``budget_bits=B``: minimise the total error subject to ``sum(storage bits) <= B * sum(weights)`` — a
  multiple-choice knapsack, solved by dynamic programming over a discretised budget (sizes rounded *up*, so
  the plan can never exceed the budget) followed by a greedy pass that spends what the rounding left on the
  upgrades of best error reduction per bit.  The budget is never exceeded; a budget below the smallest
  candidates is a ``ValueError``.
* ``target_sqnr=T`` (dB): per tensor, the smallest candidate whose SQNR reaches ``T`` (the most accurate
  one when none does).

Error: without data, the squared error ``sum (w - w')^2`` times a ``sensitivity`` weight (a number, or an
array of the tensor's shape, e.g. a Fisher diagonal); given the layer's input statistics (``hessians``, a
:class:`qcore.ptq.HessianFolds`), the output error ``trace((W - W') H (W - W')^T)``, relative to the layer's
output energy by default, **scored on held-out folds** (see :class:`MixedPlanner`).

On a single tensor (``qcore.quantize(w, "mixed", budget_bits=4)``) the budget applies to that tensor.  The
result is the :class:`qcore.QTensor` of the chosen candidate: its ``scheme`` is the scheme that decodes it
(``"linear"``, ``"kmeans"``, ...), so a saved file needs only that scheme's plugin.  ``qcore.quantize_model``
uses :meth:`MixedPlanner.measure` / :meth:`plan` / :meth:`quantize_candidate` to plan a whole model.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

import qcore
from qcore.metrics import sqnr_from_sums, sumsq
from qcore.ptq import HessianFolds, check_hessian
from qcore.quantization.candidates import label_of, parse_candidate, parse_candidates
from qcore.validation import as_float32

DEFAULT_CANDIDATES = (
    "linear:2:channel", "linear:3:channel", "linear:4:channel", "linear:8:channel",
    "linear:2:group", "linear:3:group", "linear:4:group", "linear:8:group",
    "kmeans:2", "kmeans:3", "kmeans:4",
    "log:4", "log:5",
)
#: the default candidates when the planner scores on data (Hessians), for 2-d weights whose rows split into
#: several groups of 128 (smaller tensors keep :data:`DEFAULT_CANDIDATES`): linear 3/4/5 bits per group (of 128 where
#: the rows allow) and 4/5/6/8 bits per channel — the set measured on the sentence encoder's cross-domain
#: benchmark (docs/ptq.md, "Calibration on one domain, use on another"), where the broad data-free set (per-tensor
#: k-means, 2-bit) made plans that collapsed off their calibration domain
DEFAULT_CALIBRATED_CANDIDATES = (
    "linear:3:group", "linear:4:group", "linear:5:group",
    "linear:4:channel", "linear:5:channel", "linear:6:channel", "linear:8:channel",
)
#: the default ``error_power`` for relative output errors (held-out measurement, docs/ptq.md): the plan
#: minimises the sum of each layer's noise-to-signal ratio to the 8th power, which spares the worst layers
#: (with GPTQ's float targets, 4 lost up to 0.004 of cosine to uniform GPTQ off-domain; 8 stays within 0.002)
RELATIVE_ERROR_POWER = 8.0
#: group sizes tried, largest first, when a group candidate does not name one
GROUP_SIZES = (128, 64, 32)


def knapsack(costs: list[np.ndarray], errors: list[np.ndarray], capacity: float, resolution: int | None = None) -> list[int]:
    """Pick one candidate per item minimising ``sum error`` with ``sum cost <= capacity`` (never exceeded).

    Dynamic programming over ``resolution`` budget units with costs rounded up (feasible by construction),
    then a greedy pass spends the leftover on the best error reduction per unit of cost.
    Raises ``ValueError`` when even the cheapest candidates do not fit.
    """
    T = len(costs)
    if T == 0:
        return []
    C = max(len(c) for c in costs)
    cost = np.full((T, C), np.inf)
    err = np.full((T, C), np.inf)
    for t in range(T):
        cost[t, : len(costs[t])] = costs[t]
        err[t, : len(errors[t])] = errors[t]
    cheapest = cost.min(axis=1)
    if cheapest.sum() > capacity:
        raise ValueError(f"budget too small: the cheapest candidates need {cheapest.sum():.0f} bits, the budget allows {capacity:.0f}")
    # -- dynamic programming on a discretised budget ------------------------------------------------------
    if resolution is None:
        resolution = int(min(max(4096, 64 * T), max(4096, 40_000_000 // (T * max(C, 1)))))
    B = resolution
    unit = capacity / B if capacity > 0 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(np.isfinite(cost), np.ceil(cost / unit), B + 1).astype(np.int64)
    dp = np.zeros(B + 1)
    choice = np.zeros((T, B + 1), dtype=np.int16)
    for t in range(T):
        new = np.full(B + 1, np.inf)
        ch = choice[t]
        for k in range(C):
            wk = int(w[t, k])
            if wk > B or not np.isfinite(err[t, k]):
                continue
            cand = dp[: B + 1 - wk] + err[t, k]
            seg = new[wk:]
            better = cand < seg
            seg[better] = cand[better]
            ch[wk:][better] = k
        dp = new
    if np.isfinite(dp[B]):
        pick = np.zeros(T, dtype=np.int64)
        b = B
        for t in range(T - 1, -1, -1):
            k = int(choice[t, b])
            pick[t] = k
            b -= int(w[t, k])
    else:  # rounding made the DP infeasible: start from the cheapest candidates
        pick = np.argmin(cost, axis=1)
    rows = np.arange(T)
    if cost[rows, pick].sum() > capacity:  # pragma: no cover - float rounding at the very edge
        pick = np.argmin(cost, axis=1)
    # -- greedy: spend the leftover on the best error reduction per bit ------------------------------------
    while True:
        cur_c, cur_e = cost[rows, pick], err[rows, pick]
        left = capacity - cur_c.sum()
        dc = cost - cur_c[:, None]
        de = cur_e[:, None] - err
        ok = (dc <= left) & (de > 0) & np.isfinite(cost)
        if not ok.any():
            break
        with np.errstate(invalid="ignore"):  # inf - inf where a tensor has fewer candidates (padding)
            score = np.where(ok, de / np.maximum(dc, 1.0), -np.inf)
        t, k = np.unravel_index(int(np.argmax(score)), score.shape)
        pick[t] = k
    return [int(k) for k in pick]


#: how a candidate's output error is normalised (option ``output_error``)
OUTPUT_ERRORS = ("relative", "absolute", "hawq")


def _h_axis(shape: tuple[int, ...], width: int) -> int:
    """Which axis of a 2-d weight the Hessian's inputs run along: 1 (``y = x W^T``, torch's ``(N, K)`` layout,
    preferred) or 0 (``y = x W``, scikit-learn's ``coefs_``); a clear error when neither fits."""
    if len(shape) != 2:
        raise ValueError(f"Hessians need a 2-d weight, got shape {shape}")
    if shape[1] == width:
        return 1
    if shape[0] == width:
        return 0
    raise ValueError(f"Hessians of width {width} fit neither axis of weight shape {shape}")


def _trace(d: np.ndarray, h32: np.ndarray, axis: int) -> float:
    """``trace(d H d^T)`` (inputs along axis 1) or ``trace(d^T H d)`` (axis 0): float32 products, float64 sum."""
    p = d @ h32 if axis == 1 else h32 @ d
    return float(np.einsum("ij,ij->", p, d, dtype=np.float64))


def score_candidate(x: np.ndarray, qt: qcore.QTensor, *, sensitivity=1.0, signal=None, hessian=None,
                    relative=False) -> dict:
    """How good one candidate is on ``x``: ``{"error", "sse", "sqnr_db"}``.

    Without data: the squared error ``sse`` of the weights, times ``sensitivity`` (a number, or per-element
    weights).  With the layer's input Hessian ``H = mean(x x^T)`` (``(K, K)`` for a ``(N, K)`` weight): the mean
    output error ``trace((W - W') H (W - W')^T)`` — what the layer's output feels; ``relative=True`` divides it
    by the layer's output energy ``trace(W H W^T)`` (a noise-to-signal ratio, comparable between layers whose
    outputs have different scales).  ``sqnr_db`` is the weight SQNR (``signal``: ``sum x^2`` when known).
    """
    d = qt.dequantize()
    np.subtract(x, d, out=d)
    sse = sumsq(d)
    if hessian is not None:
        axis = _h_axis(d.shape, np.shape(hessian)[0])
        h = check_hessian(hessian, d.shape[axis]).astype(np.float32)
        error = _trace(d, h, axis)
        if relative:
            energy = _trace(np.asarray(x, np.float32), h, axis)
            error = error / energy if energy > 0 else (0.0 if error == 0 else math.inf)
    else:
        error = _weighted(d, sse, sensitivity)
    return {"error": error, "sse": sse, "sqnr_db": sqnr_from_sums(sumsq(x) if signal is None else signal, sse)}


def _weighted(d: np.ndarray, sse: float, sensitivity) -> float:
    """``sse * sensitivity`` (a number) or ``sum(sensitivity * d^2)`` (per-element weights)."""
    if sensitivity is None:
        return sse
    if np.ndim(sensitivity) == 0:
        s = float(sensitivity)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"sensitivity must be a finite number >= 0, got {sensitivity!r}")
        return sse * s
    s = np.broadcast_to(np.asarray(sensitivity, dtype=np.float64), d.shape)
    if (s < 0).any() or not np.isfinite(s).all():
        raise ValueError("sensitivity weights must be finite and >= 0")
    d64 = d.astype(np.float64)
    return float(np.sum(s * d64 * d64))


class MixedPlanner(qcore.Planner):
    """Chooses scheme and bits per tensor among measured candidates, under ``budget_bits`` or ``target_sqnr``.

    Options: ``budget_bits`` (average bits per weight, parameters counted; default 4.5), ``target_sqnr`` (dB;
    overrides the budget), ``candidates`` (list of ``"scheme:bits[:granularity[:group_size]]"`` strings or
    dicts; a comma-separated string works too; default :data:`DEFAULT_CANDIDATES` without data and
    :data:`DEFAULT_CALIBRATED_CANDIDATES` with Hessians, skipping schemes that are not installed), ``axis``
    (channel axis for per-channel candidates, default 0), ``sensitivity`` (weight of the weight error without
    data), ``output_error`` (with Hessians: ``"relative"`` (default; each layer's output error over its output
    energy), ``"absolute"``, or ``"hawq"`` (HAWQ-V3's ``(Tr H / K) * ||W - W'||^2``)), ``error_power`` (the
    plan minimises ``sum error ** p``; default None: :data:`RELATIVE_ERROR_POWER` for relative output errors,
    1 otherwise), ``held_out_fits`` (how many of the folds are left out in turn; default every one),
    ``gptq_options`` (``block_size``, ``damp``, ``act_order``, ``clip_search`` for ``method="gptq"``;
    torch's ``float_targets`` is the layer-by-layer driver's, not the planner's).
    ``bits`` (default 8) is the widest code a candidate may use.  ``calibration`` (activation arrays) is a deprecated alias: pass their Hessians
    (``qcore.ptq.HessianAccumulator(folds=2).update(X).folds()``) as ``hessians=`` instead.

    **Held-out scoring.**  Given Hessians of ``k >= 2`` folds, a candidate fitted on data (``method="gptq"``)
    is fitted ``k`` times, each time on every fold but one (``hessians.rest(i)``), and scored on the fold left
    out (``hessians.fold(i)``); ``error`` is the count-weighted mean of those held-out scores and
    ``error_in_sample`` the mean of each fit's score on the folds it was fitted on.  A data-free candidate
    (``method="rtn"``) is fitted once and scored the same two ways.  With one fold both are the in-sample score
    (``held_out`` False; the driver warns).  :meth:`quantize_candidate` fits on everything (``full()``).
    """

    name = "mixed"
    options = {"budget_bits": 4.5, "target_sqnr": None, "candidates": None, "axis": 0,
               "sensitivity": None, "calibration": None, "output_error": "relative", "gptq_options": None,
               "held_out_fits": None, "error_power": None}

    def __init__(self, bits=None, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        cfg = self.config
        for key in ("budget_bits", "target_sqnr"):
            v = cfg[key]
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise TypeError(f"{key} must be a number, got {v!r}")
                if not math.isfinite(v) or (key == "budget_bits" and v <= 0):
                    raise ValueError(f"{key} must be a finite{' positive' if key == 'budget_bits' else ''} number, got {v}")
        if cfg["output_error"] not in OUTPUT_ERRORS:
            raise ValueError(f"output_error must be one of {', '.join(map(repr, OUTPUT_ERRORS))}, got {cfg['output_error']!r}")
        gopts = cfg["gptq_options"]
        if gopts is not None:
            if not isinstance(gopts, dict):
                raise TypeError(f"gptq_options must be a dict, got {type(gopts).__name__}")
            unknown = set(gopts) - {"block_size", "damp", "act_order", "clip_search"}
            if unknown:
                raise TypeError(f"unknown gptq_options {', '.join(sorted(unknown))}; they are block_size, damp, "
                                "act_order, clip_search")
        fits = cfg["held_out_fits"]
        if fits is not None and (isinstance(fits, bool) or not isinstance(fits, (int, np.integer)) or fits < 1):
            raise ValueError(f"held_out_fits must be None (every fold) or an integer >= 1, got {fits!r}")
        p = cfg["error_power"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating))
                              or not (0 < p <= 8)):
            raise ValueError(f"error_power must be None (the default) or a number in (0, 8], got {p!r}")
        if cfg["calibration"] is not None:
            warnings.warn("mixed: calibration= (activation arrays) is deprecated; pass hessians= to measure() "
                          "(or calibrate= to quantize_model)", DeprecationWarning, stacklevel=3)
        cands = cfg["candidates"]
        self._explicit = cands is not None
        self.specs = self._usable(parse_candidates(DEFAULT_CANDIDATES if cands is None else cands))
        if not self.specs:
            raise ValueError("the mixed scheme has no candidate left (all excluded by bits or not installed)")
        # scored on data (Hessians), the default set is the one measured on held-out data (docs/ptq.md)
        self.calibrated_specs = (self.specs if self._explicit
                                 else self._usable(parse_candidates(DEFAULT_CALIBRATED_CANDIDATES)) or self.specs)
        self._cache: dict[tuple, qcore.Quantizer | None] = {}

    def _usable(self, specs: list[dict]) -> list[dict]:
        """The candidates whose scheme is installed (an explicit list naming another one is an error) and whose
        code fits in ``bits``."""
        installed = set(qcore.list_schemes())
        out = []
        for s in specs:
            if s["scheme"] == self.name:
                raise ValueError("a mixed candidate cannot be 'mixed' itself")
            if s["scheme"] not in installed:
                if self._explicit:
                    raise qcore.SchemeNotFound(f"mixed candidate {label_of(s)!r}: no scheme {s['scheme']!r} is installed; "
                                               f"installed schemes: {', '.join(sorted(installed))}")
                continue
            if int(s.get("bits", 8)) <= self.bits:
                out.append(s)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}  # rebuilt on demand where it is unpickled
        return state

    # -- candidates --------------------------------------------------------------------------------------
    def _concrete(self, spec: dict, shape: tuple[int, ...]) -> dict | None:
        """The candidate's options for a tensor of ``shape`` (None if it does not apply)."""
        s = dict(spec)
        g = s.get("granularity")
        if g == "channel":
            if len(shape) < 2:
                s["granularity"] = "tensor"
            else:
                s.setdefault("axis", self.config["axis"])
        elif g == "group":
            if len(shape) < 1 or shape[-1] == 0:
                return None
            if "group_size" in s:
                if shape[-1] % int(s["group_size"]):
                    return None
            else:
                gs = next((g for g in GROUP_SIZES if shape[-1] % g == 0 and g < shape[-1]), None)
                if gs is None:
                    return None
                s["group_size"] = gs
        return s

    def _quantizer(self, spec: dict):
        key = tuple(sorted((k, repr(v)) for k, v in spec.items()))
        if key not in self._cache:
            opts = {k: v for k, v in spec.items() if k != "scheme"}
            if self.observer_name is not None:
                opts.setdefault("observer", self.observer_name)
            try:
                self._cache[key] = qcore.get_quantizer(spec["scheme"], kernel=self.kernel, **opts)
            except (TypeError, ValueError):
                self._cache[key] = None  # e.g. a scheme without granularity options: candidate skipped
        return self._cache[key]

    def _folds(self, x, hessians, method):
        """``hessians`` as :class:`HessianFolds` (or None), the axis its inputs run along, checked."""
        if method not in ("rtn", "gptq"):
            raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
        if hessians is None:
            if method == "gptq":
                raise TypeError("method='gptq' needs the layer's hessians")
            return None, 1
        folds = HessianFolds.of(hessians)
        axis = _h_axis(x.shape, folds.width)
        if method == "gptq" and axis != 1:
            raise ValueError(f"method='gptq' needs the (N, K) weight layout with Hessians (K, K); weight shape "
                             f"{x.shape}, Hessian width {folds.width}")
        return folds, axis

    def _encode(self, q, x, h, method):
        if method == "gptq":
            return qcore.gptq(x, h, q, **(self.config["gptq_options"] or {}))
        return q.quantize(x)

    def measure(self, x, *, hessians=None, method="rtn", sensitivity=None, calibration=None) -> list[dict]:
        """Quantize ``x`` with every applicable candidate: ``[{"spec", "label", "bits", "nbytes", "error",
        "error_in_sample", "held_out", "sse", "sqnr_db"}]`` (see the class docstring for the scores)."""
        x = as_float32(x)
        calibration = self.config["calibration"] if calibration is None else calibration
        if calibration is not None and hessians is None:  # deprecated: activation arrays
            from qcore.ptq import HessianAccumulator

            hessians = HessianAccumulator(folds=1).update(np.asarray(calibration, np.float32)).folds()
        folds, axis = self._folds(x, hessians, method)
        sensitivity = self.config["sensitivity"] if sensitivity is None else sensitivity
        if sensitivity is not None:  # checked once, before the candidates (whose ValueErrors mean "skip me")
            _weighted(np.zeros(x.shape, np.float32), 0.0, sensitivity)
        kind = self.config["output_error"]
        signal = sumsq(x)
        held = folds is not None and folds.k >= 2
        if folds is not None:
            idx = list(range(folds.k) if held else [0])
            fits = self.config["held_out_fits"]
            if held and fits is not None:
                idx = idx[:fits]
            weights = folds._weights(idx)
            test = [(folds.fold(i) if held else folds.full()).astype(np.float32) for i in idx]
            train = [(folds.rest(i) if held else folds.full()) for i in idx]
            train32 = [t.astype(np.float32) for t in train]
            energy_test = [_trace(x, t, axis) for t in test]
            energy_train = [_trace(x, t, axis) for t in train32]
            # mean output power per input channel (HAWQ's Tr(H)/K), of the scoring and of the fitting data
            power_test = [float(np.trace(t)) / t.shape[0] for t in test]
            power_train = [float(np.trace(t)) / t.shape[0] for t in train32]
        out = []
        # the calibrated set was measured on matrices whose rows split into groups of 128; smaller ones (where it
        # has nothing cheaper than ~5 bits) keep the data-free set
        calibrated = folds is not None and x.ndim == 2 and x.shape[1] > 128 and x.shape[1] % 128 == 0
        for spec in (self.calibrated_specs if calibrated else self.specs):
            s = self._concrete(spec, x.shape)
            if s is None:
                continue
            q = self._quantizer(s)
            if q is None:
                continue
            extra = {}
            try:
                if folds is None:
                    qt = q.quantize(x)
                    d = qt.dequantize()
                    np.subtract(x, d, out=d)
                    sse = sumsq(d)
                    err = err_in = _weighted(d, sse, sensitivity)
                else:
                    err = err_in = sse = e_abs = energy = 0.0
                    for j, wj in enumerate(weights):
                        if method == "gptq" or j == 0:
                            qt = self._encode(q, x, train[j], method)
                            d = qt.dequantize()
                            np.subtract(x, d, out=d)
                            sse_j = sumsq(d)
                        if kind == "hawq":  # (Tr H / K) * ||W - W'||^2: the data's power, not its directions
                            e_out, e_in = power_test[j] * sse_j, power_train[j] * sse_j
                        else:
                            e_out, e_in = _trace(d, test[j], axis), _trace(d, train32[j], axis)
                        e_abs += wj * e_out
                        energy += wj * energy_test[j]
                        if kind == "relative":
                            e_out, e_in = _ratio(e_out, energy_test[j]), _ratio(e_in, energy_train[j])
                        err += wj * e_out
                        err_in += wj * e_in
                        sse += wj * sse_j
                    extra = {"error_abs": float(e_abs), "energy": float(energy)}
            except ValueError:
                continue  # the candidate cannot take this tensor (e.g. a shape it does not support)
            out.append({"spec": s, "label": label_of(s), "bits": int(qt.bits), "nbytes": int(qt.nbytes),
                        "error": float(err), "error_in_sample": float(err_in), "held_out": bool(held),
                        "sse": float(sse), "sqnr_db": float(sqnr_from_sums(signal, sse)), **extra})
            del qt
        return out

    def plan(self, measurements: list[list[dict]], *, capacity_bits: float | None = None,
             target_sqnr: float | None = None, names=None) -> list[int]:
        """Index of the chosen candidate per tensor (see the module docstring)."""
        if target_sqnr is None:
            target_sqnr = self.config["target_sqnr"]
        if target_sqnr is not None:
            picks = []
            for m in measurements:
                ok = [i for i, c in enumerate(m) if c["sqnr_db"] >= target_sqnr]
                if ok:
                    picks.append(min(ok, key=lambda i: (m[i]["nbytes"], m[i]["error"])))
                else:
                    picks.append(min(range(len(m)), key=lambda i: (m[i]["error"], m[i]["nbytes"])))
            return picks
        if capacity_bits is None:
            raise ValueError("the mixed scheme needs budget_bits or target_sqnr")
        costs = [np.array([8.0 * c["nbytes"] for c in m]) for m in measurements]
        p = self.config["error_power"]  # p > 1: the sum of error^p penalises the worst layers more
        if p is None:  # relative output errors (records with an energy): RELATIVE_ERROR_POWER; else 1
            relative = self.config["output_error"] == "relative" and any("energy" in c for m in measurements for c in m)
            p = RELATIVE_ERROR_POWER if relative else 1.0
        p = float(p)
        errors = [np.array([c["error"] for c in m]) ** p for m in measurements]
        try:
            return knapsack(costs, errors, float(capacity_bits))
        except ValueError as exc:
            raise ValueError(f"mixed: {exc}; raise budget_bits or add cheaper candidates") from None

    def quantize_candidate(self, x, spec: dict, *, hessians=None, method="rtn") -> qcore.QTensor:
        """The candidate ``spec`` fitted on all the data (``hessians.full()`` for ``method="gptq"``)."""
        x = as_float32(x)
        folds, _ = self._folds(x, hessians, method)
        q = self._quantizer(spec)
        if q is None:
            raise ValueError(f"candidate {label_of(spec)!r} cannot be built")
        return self._encode(q, x, None if folds is None else folds.full(), method)

    def capacity_bits(self, size: int):
        # target_sqnr overrides the budget (plan() ignores the capacity then)
        return None if self.config["target_sqnr"] is not None else super().capacity_bits(size)


def _ratio(err: float, energy: float) -> float:
    return err / energy if energy > 0 else (0.0 if err == 0 else math.inf)


@qcore.hookimpl
def qcore_planners():
    return [MixedPlanner]
