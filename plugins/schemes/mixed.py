"""The ``mixed`` planner: choose a scheme and bit width per tensor from *measured* error, under a bit budget.

A :class:`qcore.Planner` (registered with the ``qcore_planners`` hook), not a scheme: it never encodes or
decodes; it measures candidates, plans, and returns the chosen candidate's QTensor.

For every tensor it quantizes with each candidate (by default linear 2/3/4/8 bits per channel and per group,
kmeans 2/3/4 and log 4/5 when those plugins are installed), and records the true storage (packed codes plus
parameters, in bits) and the error.  Then:

* ``budget_bits=B``: minimise the total error subject to ``sum(storage bits) <= B * sum(weights)`` — a
  multiple-choice knapsack, solved by dynamic programming over a discretised budget (sizes rounded *up*, so
  the plan can never exceed the budget) followed by a greedy pass that spends what the rounding left on the
  upgrades of best error reduction per bit.  The budget is never exceeded; a budget below the smallest
  candidates is a ``ValueError``.
* ``target_sqnr=T`` (dB): per tensor, the smallest candidate whose SQNR reaches ``T`` (the most accurate
  one when none does).

Error (:func:`score_candidate`, the one function that scores a candidate): squared error ``sum (w - w')^2``,
times a ``sensitivity`` weight (a number, or an array of the tensor's shape, e.g. a Fisher diagonal), or, given
``calibration`` inputs ``X``, the output error ``||X (W - W')||^2``.

On a single tensor (``qcore.quantize(w, "mixed", budget_bits=4)``) the budget applies to that tensor.  The
result is the :class:`qcore.QTensor` of the chosen candidate: its ``scheme`` is the scheme that decodes it
(``"linear"``, ``"kmeans"``, ...), so a saved file needs only that scheme's plugin.  ``qcore.quantize_model``
uses :meth:`MixedPlanner.measure` / :meth:`plan` / :meth:`quantize_candidate` to plan a whole model.
"""
from __future__ import annotations

import math

import numpy as np

import qcore
from qcore.metrics import sqnr_from_sums, sumsq
from qcore.validation import as_float32

DEFAULT_CANDIDATES = (
    "linear:2:channel", "linear:3:channel", "linear:4:channel", "linear:8:channel",
    "linear:2:group", "linear:3:group", "linear:4:group", "linear:8:group",
    "kmeans:2", "kmeans:3", "kmeans:4",
    "log:4", "log:5",
)
#: group sizes tried, largest first, when a group candidate does not name one
GROUP_SIZES = (128, 64, 32)


def parse_candidate(spec) -> dict:
    """``"linear:4:group:64"`` / ``{"scheme": "linear", "bits": 4, ...}`` -> ``{"scheme", "bits", **options}``."""
    if isinstance(spec, dict):
        d = dict(spec)
        if not isinstance(d.get("scheme"), str):
            raise ValueError(f"a candidate needs a 'scheme' name, got {spec!r}")
        return d
    if not isinstance(spec, str):
        raise TypeError(f"a candidate is a 'scheme:bits[:granularity[:group_size]]' string or a dict, got {spec!r}")
    parts = spec.strip().split(":")
    if not 2 <= len(parts) <= 4 or not parts[0]:
        raise ValueError(f"candidate {spec!r}: expected 'scheme:bits[:granularity[:group_size]]', e.g. 'linear:4:channel'")
    try:
        d = {"scheme": parts[0], "bits": int(parts[1])}
        if len(parts) >= 3:
            d["granularity"] = parts[2]
        if len(parts) == 4:
            d["group_size"] = int(parts[3])
    except ValueError:
        raise ValueError(f"candidate {spec!r}: bits and group_size must be integers") from None
    return d


def label_of(spec: dict) -> str:
    s = f"{spec['scheme']}:{spec.get('bits', '?')}"
    g = spec.get("granularity")
    if g:
        s += f":{g}" + (f"{spec['group_size']}" if g == "group" and "group_size" in spec else "")
    return s


def output_error(x: np.ndarray, d: np.ndarray, sensitivity=1.0, calibration=None) -> float:
    """The error measure: weighted squared error, or ``||X d||^2`` with calibration inputs ``X``."""
    if calibration is not None:
        X = np.asarray(calibration, dtype=np.float32)
        if d.ndim != 2:
            raise ValueError(f"calibration inputs need a 2-d weight, got shape {d.shape}")
        X = X.reshape(1, -1) if X.ndim == 1 else X.reshape(-1, X.shape[-1])
        if X.shape[1] == d.shape[0]:  # y = X @ W  (scikit-learn coefs_: (in, out))
            e = X @ d
        elif X.shape[1] == d.shape[1]:  # y = X @ W.T  (torch Linear.weight: (out, in))
            e = X @ d.T
        else:
            raise ValueError(f"calibration inputs of width {X.shape[1]} fit neither axis of weight shape {d.shape}")
        err = sumsq(e)
    else:
        if np.ndim(sensitivity) == 0:
            err = sumsq(d)
        else:
            s = np.broadcast_to(np.asarray(sensitivity, dtype=np.float64), d.shape)
            if (s < 0).any() or not np.isfinite(s).all():
                raise ValueError("sensitivity weights must be finite and >= 0")
            d64 = d.astype(np.float64)
            return float(np.sum(s * d64 * d64))
    s = float(sensitivity) if np.ndim(sensitivity) == 0 and sensitivity is not None else 1.0
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"sensitivity must be a finite number >= 0, got {sensitivity!r}")
    return s * err


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


def score_candidate(x: np.ndarray, qt: qcore.QTensor, *, sensitivity=1.0, calibration=None, signal=None,
                    hessian=None, relative=False) -> dict:
    """How good one candidate is on ``x``: ``{"error", "sse", "sqnr_db"}``.

    The one place the planner measures error (the plan minimises ``error``): the squared error ``sse`` of the
    weights, times ``sensitivity`` (a number, or per-element weights), or with ``calibration`` inputs ``X``
    the output error ``||X (W - W')||^2`` (:func:`output_error`), or with the layer's input Hessian
    ``H = mean(x x^T)`` (``(K, K)`` for a ``(N, K)`` weight) the mean output error
    ``trace((W - W') H (W - W')^T)`` — what the model's output feels, not the weight error; ``relative=True``
    divides it by the layer's output energy ``trace(W H W^T)`` (a noise-to-signal ratio, comparable between
    layers whose outputs have different scales).  ``sqnr_db`` is the weight SQNR (``signal``: ``sum x^2`` when
    the caller has it already).
    """
    d = qt.dequantize()
    np.subtract(x, d, out=d)
    sse = sumsq(d)
    if hessian is not None:
        from qcore.ptq import check_hessian

        if d.ndim != 2:
            raise ValueError(f"a Hessian needs a 2-d weight, got shape {d.shape}")
        h = check_hessian(hessian, d.shape[1])
        d64 = d.astype(np.float64)
        error = float(np.einsum("nk,nk->", d64 @ h, d64))
        if relative:
            x64 = np.asarray(x, np.float64)
            energy = float(np.einsum("nk,nk->", x64 @ h, x64))
            error = error / energy if energy > 0 else (0.0 if error == 0 else math.inf)
    elif np.ndim(sensitivity) == 0 and calibration is None:
        if not (math.isfinite(float(sensitivity)) and float(sensitivity) >= 0):
            raise ValueError(f"sensitivity must be a finite number >= 0, got {sensitivity!r}")
        error = sse * float(sensitivity)
    else:
        error = output_error(x, d, sensitivity, calibration)
    return {"error": error, "sse": sse, "sqnr_db": sqnr_from_sums(sumsq(x) if signal is None else signal, sse)}


class MixedPlanner(qcore.Planner):
    """Chooses scheme and bits per tensor among measured candidates, under ``budget_bits`` or ``target_sqnr``.

    Options: ``budget_bits`` (average bits per weight, parameters counted; default 4.5), ``target_sqnr`` (dB;
    overrides the budget), ``candidates`` (list of ``"scheme:bits[:granularity[:group_size]]"`` strings or
    dicts; a comma-separated string works too; default :data:`DEFAULT_CANDIDATES`, skipping schemes that are
    not installed), ``axis`` (channel axis for per-channel candidates, default 0), ``sensitivity`` and
    ``calibration`` (the error measure, see :func:`score_candidate`), ``output_error`` (with Hessians:
    ``"relative"`` (default; each layer's output error over its output energy) or ``"absolute"``).  ``bits`` (default 8) is the widest code
    a candidate may use.
    """

    name = "mixed"
    options = {"budget_bits": 4.5, "target_sqnr": None, "candidates": None, "axis": 0,
               "sensitivity": None, "calibration": None, "output_error": "relative"}

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
        if cfg["output_error"] not in ("absolute", "relative"):
            raise ValueError(f"output_error must be 'absolute' or 'relative', got {cfg['output_error']!r}")
        cands = cfg["candidates"]
        explicit = cands is not None
        if cands is None:
            cands = DEFAULT_CANDIDATES
        elif isinstance(cands, str):
            cands = [c for c in cands.split(",") if c.strip()]
        specs = [parse_candidate(c) for c in cands]
        installed = set(qcore.list_schemes())
        self.specs = []
        for s in specs:
            if s["scheme"] == self.name:
                raise ValueError("a mixed candidate cannot be 'mixed' itself")
            if s["scheme"] not in installed:
                if explicit:
                    raise qcore.SchemeNotFound(f"mixed candidate {label_of(s)!r}: no scheme {s['scheme']!r} is installed; "
                                               f"installed schemes: {', '.join(sorted(installed))}")
                continue
            if int(s.get("bits", 8)) > self.bits:
                continue
            self.specs.append(s)
        if not self.specs:
            raise ValueError("the mixed scheme has no candidate left (all excluded by bits or not installed)")
        self._cache: dict[tuple, qcore.Quantizer | None] = {}

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

    def measure(self, x, *, sensitivity=None, calibration=None, hessian=None, method="rtn") -> list[dict]:
        """Quantize ``x`` with every applicable candidate: ``[{"spec", "label", "bits", "nbytes", "error", "sse", "sqnr_db"}]``.

        ``hessian`` (the layer's ``mean(x x^T)``): errors are output errors (:func:`score_candidate`);
        ``method="gptq"`` (with ``hessian``): each candidate is quantized by :func:`qcore.gptq`.
        """
        x = as_float32(x)
        sensitivity = self.config["sensitivity"] if sensitivity is None else sensitivity
        calibration = self.config["calibration"] if calibration is None else calibration
        if sensitivity is None:
            sensitivity = 1.0
        signal = sumsq(x)
        out = []
        for spec in self.specs:
            s = self._concrete(spec, x.shape)
            if s is None:
                continue
            q = self._quantizer(s)
            if q is None:
                continue
            try:
                qt = self._encode(q, x, hessian, method)
            except ValueError:
                continue  # the candidate cannot take this tensor (e.g. a shape it does not support)
            score = score_candidate(x, qt, sensitivity=sensitivity, calibration=calibration, signal=signal,
                                    hessian=hessian, relative=self.config["output_error"] == "relative")
            out.append({"spec": s, "label": label_of(s), "bits": qt.bits, "nbytes": int(qt.nbytes), **score})
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
        errors = [np.array([c["error"] for c in m]) for m in measurements]
        try:
            return knapsack(costs, errors, float(capacity_bits))
        except ValueError as exc:
            raise ValueError(f"mixed: {exc}; raise budget_bits or add cheaper candidates") from None

    @staticmethod
    def _encode(q, x, hessian, method):
        if method not in ("rtn", "gptq"):
            raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
        if method == "gptq":
            if hessian is None:
                raise TypeError("method='gptq' needs the layer's hessian")
            return qcore.gptq(x, hessian, q)
        return q.quantize(x)

    def quantize_candidate(self, x, spec: dict, *, hessian=None, method="rtn") -> qcore.QTensor:
        q = self._quantizer(spec)
        if q is None:  # pragma: no cover - measure() only returns candidates that built
            raise ValueError(f"candidate {label_of(spec)!r} cannot be built")
        return self._encode(q, as_float32(x), hessian, method)

    def capacity_bits(self, size: int):
        # target_sqnr overrides the budget (plan() ignores the capacity then)
        return None if self.config["target_sqnr"] is not None else super().capacity_bits(size)


@qcore.hookimpl
def qcore_planners():
    return [MixedPlanner]
