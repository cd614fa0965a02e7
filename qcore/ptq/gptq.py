"""GPTQ (Frantar et al., 2022) for any installed scheme, through the Quantizer contract.

The problem, for one linear layer ``y = x @ W.T`` with ``W`` of shape ``(N, K)`` (torch ``Linear`` layout) and
``H = mean(x x^T)`` over calibration inputs (``K x K``)::

    minimise  trace((W - W') H (W - W')^T)  =  mean ||x (W - W')^T||^2     over quantized W'

GPTQ quantizes the columns of ``W`` one at a time; after column ``j`` is rounded, its error is spread onto the
columns not yet quantized, in proportion to the rows of the upper Cholesky factor ``U`` of ``H^-1`` (the
optimal-brain-surgeon update restricted to the remaining columns).  The updates are applied lazily: inside a
block of ``block_size`` columns immediately, to the rest of the matrix once per block as one matrix product
(BLAS).

**Any scheme.**  The scheme is used only through ``fit`` / ``encode`` / ``decode``.  Its parameters are fitted
on the columns of one *parameter unit* when the sweep reaches the unit, with the error updates of the columns
before it already applied:

* ``granularity="tensor"``, or ``"channel"`` along the output axis (``axis=0``, one parameter set per row):
  one unit, the whole matrix, fitted before the sweep (the reference implementation's choice);
* ``granularity="group"``: each block of ``group_size`` consecutive input columns is a unit, fitted on the
  ``(N, group_size)`` block when the sweep reaches it; a column is then encoded with those parameters through a
  quantizer of the same scheme and options with ``group_size=1`` (the same parameters, one column wide);
* ``granularity="channel"`` with ``axis=1`` (one parameter set per input column): each column is a unit.

Sweep blocks are aligned to units, so a unit is fitted on values that carry every update so far.

**Act-order** (``act_order=True``): columns with the largest ``H`` diagonal (the most active inputs) are
quantized first, while most columns are still free to absorb their error.  With groups, the order respects the
groups: groups are taken by decreasing total diagonal, columns within a group by decreasing diagonal, so a
group's parameters are still one set per stored group (no reordering index needs to be stored).

**Defaults for data the calibration did not cover.**  ``damp=0.4`` and ``clip_search=True`` (the paper's
reference is ``damp=0.01`` without clipping).  GPTQ spreads each column's rounding error onto directions the
calibration inputs hardly excite; inputs of another domain excite them.  On a real sentence encoder calibrated
on one text domain and used on others (docs/ptq.md, "Calibration on one domain, use on another"), these two
defaults gave the best worst case over every (calibration, evaluation) pair (damp 0.05, 0.1, 0.2, 0.4, 0.8
measured); in-domain they give up 0.001-0.003 of cosine against ``damp=0.1``, which is the better choice
when the deployment data is like the calibration data.

**Damping and singular Hessians.**  ``H`` gets ``damp * mean(diag H)`` added to its diagonal.  A column whose input is always zero (``H[i, i] == 0``, a *dead* column) gets a
diagonal entry (the mean of the others) and zeros elsewhere: it is rounded to nearest and no error is spread onto it or from it, since it never
contributes to the output.  If the damped matrix is still not positive definite (rounding in a nearly singular
``H``), the damping is multiplied by 10, up to four times, before a ``numpy.linalg.LinAlgError`` is raised.
An all-zero ``H`` (no information) gives round to nearest.

The sweep runs in float32 (the lazy block update as one ``matmul``), the Cholesky factorisation in float64.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import InputError
from ..tensor import QTensor
from ..validation import check_int


def _float_matrix(a, name: str, dims: str) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array {dims}, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array {dims}, got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name} contains {bad} NaN or Inf value(s)")
    return arr


def encoding_quantizer(scheme, options: dict, method: str, hint: str = ""):
    """The one encoding Quantizer that ``method`` (gptq, awq) runs: an instance as given, or a scheme name built
    with ``options``; planners (which choose among schemes) are refused, ``hint`` saying what to use instead."""
    from ..api import get_quantizer  # the registry: imported when called (the API layer imports this module)
    from ..quantization.planner import Planner
    from ..quantization.quantizer import Quantizer

    if isinstance(scheme, (Quantizer, Planner)):
        if options:
            raise TypeError("pass options either to the quantizer instance or with a scheme name, not both")
        q = scheme
    elif isinstance(scheme, str):
        q = get_quantizer(scheme, **options)
    else:
        raise TypeError(f"scheme must be a scheme name or a qcore.Quantizer, got {type(scheme).__name__}")
    if isinstance(q, Planner) or not isinstance(q, Quantizer):
        raise TypeError(f"scheme {q.name!r} chooses among schemes (a planner); {method} needs one encoding scheme{hint}")
    return q


def check_hessian(hessian, k: int, name: str = "hessian") -> np.ndarray:
    """``hessian`` as a symmetric float64 ``(k, k)`` array, or a clear error."""
    h = _float_matrix(hessian, name, f"of shape ({k}, {k})")
    if h.shape != (k, k):
        raise ValueError(f"{name} must have shape ({k}, {k}) for a weight with {k} input columns, got {h.shape}")
    h = h.astype(np.float64)
    d = np.diag(h)
    if (d < 0).any():
        raise ValueError(f"{name} has negative diagonal entries: it must be a mean of x x^T (positive semi-definite)")
    scale = max(float(np.abs(h).max()), 1e-300)
    if float(np.abs(h - h.T).max()) > 1e-3 * scale:
        raise ValueError(f"{name} must be symmetric (a mean of x x^T over calibration inputs)")
    return (h + h.T) * 0.5


def output_error(w, w_hat, hessian) -> float:
    """``trace((W - W') H (W - W')^T)``: the mean squared output error of ``W'`` on the calibration inputs."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    h = np.asarray(hessian, np.float64)
    return float(np.einsum("nk,nk->", d @ h, d))


_CONTROLLER = []


def _blas_controller():
    """One ``threadpoolctl.ThreadpoolController`` per process (finding the BLAS libraries reads the process's
    memory maps: tens of milliseconds, too much to repeat for every layer)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + damping)^-1`` (``U^T U = H^-1``), float64."""
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h))) if k else 0.0
    if mean_diag <= 0:
        return np.eye(k)
    from scipy.linalg import lapack

    lam = damp * mean_diag
    idx = np.arange(k)
    # LAPACK on one thread: for K of a few thousand, OpenBLAS's threaded potrf is slower than serial
    # (much slower on a busy machine); the O(N K^2) sweep products keep every BLAS thread
    with _blas_controller().limit(limits=1, user_api="blas"):
        # U = J inv(L) J with L L^T = J H J (J reverses the order) satisfies U^T U = H^-1, U upper:
        # one factorisation and one triangular inverse
        rev = idx[::-1]
        for _ in range(5):
            a = h[np.ix_(rev, rev)]
            a[idx, idx] += lam
            c, info = lapack.dpotrf(a, lower=1, clean=1)
            if info == 0:
                linv, info = lapack.dtrtri(c, lower=1)
                if info == 0:
                    return np.ascontiguousarray(linv[np.ix_(rev, rev)])
            lam = max(lam * 10, 1e-8 * mean_diag)
    raise np.linalg.LinAlgError("the Hessian is not positive definite even after damping it 10^4 times more; "
                                "check it (a mean of x x^T) or raise damp")


#: the last few factors (key: the Hessian's and the order's bytes, the damping): a planner measuring several
#: candidates of one layer on one Hessian factors it once per column order
_FACTORS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_FACTORS_KEPT = 4
_FACTORS_LOCK = threading.Lock()


def _factor(h: np.ndarray, perm: np.ndarray, damp: float) -> np.ndarray:
    """float32 ``U`` of ``(H[perm][:, perm] + damping)^-1`` (:func:`_inverse_cholesky`), from a small cache."""
    key = (hashlib.blake2b(h.tobytes(), digest_size=16).digest(), hashlib.blake2b(perm.tobytes(), digest_size=16).digest(),
           h.shape, float(damp))
    with _FACTORS_LOCK:
        u = _FACTORS.get(key)
        if u is not None:
            _FACTORS.move_to_end(key)
            return u
    u = _inverse_cholesky(h[np.ix_(perm, perm)], damp).astype(np.float32)
    u.setflags(write=False)
    with _FACTORS_LOCK:
        _FACTORS[key] = u
        while len(_FACTORS) > _FACTORS_KEPT:
            _FACTORS.popitem(last=False)
    return u


#: range shrink factors tried by ``clip_search``
CLIP_GRID = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


class _Units:
    """How the scheme's parameter sets map onto the input columns of W (see the module docstring)."""

    def __init__(self, q, n: int, k: int, clip: bool = False):
        self.q = q
        self.clip = clip
        g = q.granularity if "granularity" in q.config else "tensor"
        axis = q.config.get("axis", 0)
        if g == "channel":
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -2 <= int(axis) < 2:
                raise ValueError(f"axis={axis!r} is out of range for a 2-d weight")
            axis = int(axis) % 2
        self.kind = {"tensor": "whole", "channel": "whole" if axis == 0 else "column", "group": "group"}[g]
        if self.kind == "group":
            gs = int(q.config["group_size"])
            if k % gs:
                raise ValueError(f"group_size={gs} does not divide the {k} input columns of the weight")
            self.size = gs
            opts = {**q.config, "group_size": 1}
            self.col_q = type(q)(bits=q.bits, observer=q.observer_name, kernel=q.kernel, **opts)
        elif self.kind == "column":
            self.size = 1
            self.col_q = q
        else:
            self.size = k
            self.col_q = q
        self.n, self.k = n, k
        self.count = k // self.size if k else 0

    def fit(self, block: np.ndarray, hdiag: np.ndarray | None = None) -> dict[str, np.ndarray]:
        params = self._fit(block)
        if self.clip and hdiag is not None:
            params = self._clip_search(block, hdiag, params)
        return params

    def _clip_search(self, block, hdiag, params):
        """Per row (or for the tensor), the range shrink ``a`` whose parameters ``fit(a * block)`` give the least
        ``sum_j H_jj (w - w')^2`` on the block itself (MSE-optimal clipping, weighted by input activity)."""
        q = self.q
        block = np.ascontiguousarray(block, np.float32)
        wgt = np.asarray(hdiag, np.float64)[None, :]

        def err(p):
            d = block - np.asarray(q.decode(q.encode(block, p), p), np.float32)
            return ((d.astype(np.float64) ** 2) * wgt).sum(axis=1)

        best, best_err = params, err(params)
        per_row = self.kind != "whole" or q.granularity == "channel"
        for a in CLIP_GRID:
            cand = self._fit(block * np.float32(a))
            e = err(cand)
            if per_row:
                better = e < best_err
                if better.any():
                    best = {k: np.where(better.reshape((-1,) + (1,) * (v.ndim - 1)), cand[k], v)
                            for k, v in best.items()}
                    best_err = np.where(better, e, best_err)
            elif e.sum() < best_err.sum():
                best, best_err = cand, e
        return best

    def _fit(self, block: np.ndarray) -> dict[str, np.ndarray]:
        params = {name: np.asarray(v) for name, v in self.q.fit(np.ascontiguousarray(block, np.float32)).items()}
        lead = {"whole": None, "group": (self.n, 1), "column": (1,)}[self.kind]
        if lead is not None:
            for name, v in params.items():
                if v.shape[: len(lead)] != lead:
                    raise ValueError(f"scheme {self.q.name!r}: parameter {name!r} of shape {v.shape} is not one "
                                     f"set per {'group' if self.kind == 'group' else 'column'}; GPTQ cannot "
                                     "assemble it")
        return params

    def assemble(self, per_unit: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if self.kind == "whole":
            return per_unit[0]
        axis = 1 if self.kind == "group" else 0
        return {name: np.concatenate([p[name] for p in per_unit], axis=axis) for name in per_unit[0]}


def _order(diag: np.ndarray, units: _Units, act_order: bool) -> np.ndarray:
    k = diag.size
    if not act_order:
        return np.arange(k)
    if units.kind == "group":
        gs = units.size
        d = diag.reshape(-1, gs)
        groups = np.argsort(-d.sum(axis=1), kind="stable")
        within = np.argsort(-d, axis=1, kind="stable")
        return (groups[:, None] * gs + within[groups]).reshape(-1)
    return np.argsort(-diag, kind="stable")


#: the decode-table fast path is used up to this many codes (4-5 bits); wider codes take the exact path only
_TABLE_MAX_CODES = 32


def _code_table(units: _Units, params, n: int):
    """``(rows, L)`` float32 values of every code under ``params`` (rows ``n``, or 1 when shared), or None."""
    q, col_q = units.q, units.col_q
    lo, hi = int(q.qmin), int(q.qmax)
    count = hi - lo + 1
    if count > _TABLE_MAX_CODES or units.kind == "column":
        return None
    dtype = np.int8 if q.signed else np.uint8
    try:
        cols = [np.asarray(col_q.decode(np.full((n, 1), c, dtype), params), np.float32).reshape(n)
                for c in range(lo, hi + 1)]
    except Exception:  # noqa: BLE001 - a scheme whose decode refuses some code values: exact path
        return None
    table = np.stack(cols, axis=1)
    if not np.isfinite(table).all():
        return None
    return np.ascontiguousarray(table), lo


def _gptq_core(w: np.ndarray, h: np.ndarray, q, block_size: int, damp: float, act_order: bool, clip: bool = False):
    """The sweep. Returns ``(codes, params, w_hat)`` in the original column order.

    Speed: rounding one column through ``encode``/``decode`` costs a few Python-level calls per column.  When
    a scheme has at most 32 codes, the sweep instead rounds each column to the nearest value of a table made
    by ``decode`` of every code under the unit's parameters; at the end of each sweep block the scheme's own
    ``encode`` (one call per unit) runs on the values the sweep rounded, and its ``decode`` must give exactly
    the values the sweep used.  Where it does not (a scheme whose encode is not round-to-nearest, or an exact
    tie), the block is swept again column by column through ``encode``/``decode``, from the same state — so
    the result is always that of the scheme's own encode.
    """
    n, k = w.shape
    units = _Units(q, n, k, clip)
    W = np.array(w, dtype=np.float32, order="C")
    h = h.copy()
    diag = np.diag(h).copy()
    dead = diag == 0
    if dead.any():
        h[dead, :] = 0.0
        h[:, dead] = 0.0
        h[dead, dead] = float(diag[~dead].mean()) if (~dead).any() else 1.0
    perm = _order(diag, units, act_order)
    inv = np.argsort(perm)
    U = _factor(h, perm, damp)
    unit_params = [units.fit(W, diag)] if units.kind == "whole" else [None] * units.count
    W = np.ascontiguousarray(W[:, perm])
    code_dt = np.int8 if q.signed else np.uint8
    codes = np.zeros((n, k), code_dt)
    Q = np.empty_like(W)
    usz = units.size
    bs = max(block_size, 1)
    if units.kind != "whole":  # align sweep blocks to parameter units
        bs = max(bs // usz, 1) * usz
    col_q = units.col_q
    # sub-blocks of 16 columns inside a sweep block (two-level lazy updates); unit starts are sub-block starts
    sub = 16 if (units.kind == "whole" or usz % 16 == 0) else (usz if usz < 16 else 1)
    whole_table = _code_table(units, unit_params[0], n) if units.kind == "whole" else None
    rows = np.arange(n)

    def sweep(i1, i2, fast):
        """One block; returns (E1, pre-rounding values P1, table-rounded Q1, codes or None) — or None when the
        fast path could not build a table."""
        W1 = W[:, i1:i2].copy()
        E1 = np.empty_like(W1)
        P1 = np.empty_like(W1)
        Q1 = np.empty_like(W1)
        C1 = None if fast else np.empty(W1.shape, code_dt)
        U1 = U[i1:i2, i1:i2]
        params, table = unit_params[0], whole_table
        for j in range(i2 - i1):
            col = i1 + j
            if units.kind != "whole" and col % usz == 0:
                orig = perm[col:col + usz]
                back = np.argsort(orig)  # the unit's columns in their stored order
                params = units.fit(W1[:, j:j + usz][:, back], diag[orig[back]])
                unit_params[orig[0] // usz if units.kind == "group" else orig[0]] = params
                if fast:
                    t = _code_table(units, params, n)
                    if t is None:
                        return None
                    table = t
            wcol = W1[:, j]
            P1[:, j] = wcol
            if fast:
                vals = table[0]
                idx = np.abs(vals - wcol[:, None]).argmin(axis=1)
                qcol = vals[rows, idx]
            else:
                c = np.asarray(col_q.encode(np.ascontiguousarray(W1[:, j:j + 1]), params))
                qcol = np.asarray(col_q.decode(c, params), dtype=np.float32).reshape(n)
                C1[:, j] = c.reshape(n)
            Q1[:, j] = qcol
            err = (wcol - qcol) / U1[j, j]
            E1[:, j] = err
            s_end = min((j // sub + 1) * sub, i2 - i1)  # rank-1 updates inside the sub-block only
            if j + 1 < s_end:
                W1[:, j + 1:s_end] -= err[:, None] * U1[j, j + 1:s_end][None, :]
            if j + 1 == s_end and s_end < i2 - i1:  # the sub-block's errors onto the rest of the block: BLAS
                s0 = s_end - sub if s_end % sub == 0 else (s_end // sub) * sub
                W1[:, s_end:] -= E1[:, s0:s_end] @ U1[s0:s_end, s_end:]
        return E1, P1, Q1, C1

    def verify(i1, i2, P1, Q1):
        """The scheme's own codes for the block's pre-rounding values, or None if they decode differently."""
        C1 = np.empty(P1.shape, code_dt)
        if units.kind == "whole":
            spans = [(0, i2 - i1, unit_params[0], q)]
        else:
            spans = [(a - i1, a - i1 + usz, unit_params[perm[a] // usz], q) for a in range(i1, i2, usz)]
        for a, b, params, qq in spans:
            blk = P1[:, a:b]
            back = np.argsort(perm[i1 + a:i1 + b])
            c = np.asarray(qq.encode(np.ascontiguousarray(blk[:, back]), params))
            d = np.asarray(qq.decode(c, params), dtype=np.float32)
            fwd = np.argsort(back)
            c, d = c[:, fwd], d[:, fwd]
            if not np.array_equal(d, Q1[:, a:b]):
                return None
            C1[:, a:b] = c
        return C1

    use_fast = units.kind != "column" and (units.kind != "whole" or whole_table is not None)
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        res = sweep(i1, i2, True) if use_fast else None
        C1 = None
        if res is not None:
            E1, P1, Q1, _ = res
            C1 = verify(i1, i2, P1, Q1)
        if C1 is None:
            E1, P1, Q1, C1 = sweep(i1, i2, False)
        Q[:, i1:i2] = Q1
        codes[:, i1:i2] = C1
        if i2 < k:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    codes = np.ascontiguousarray(codes[:, inv])
    Q = np.ascontiguousarray(Q[:, inv])
    params = units.assemble(unit_params) if k else q.fit(np.zeros((n, 0), np.float32))
    return codes, params, Q


#: the defaults of :func:`gptq` (module docstring: chosen by the worst cross-domain case on a real encoder)
DEFAULT_DAMP = 0.4
DEFAULT_CLIP_SEARCH = True


def correct_for_input_shift(w, shift, hessian, damp: float = DEFAULT_DAMP) -> np.ndarray:
    """The weight that makes a layer fed *quantized-model* inputs reproduce the *float model's* outputs.

    In a model quantized layer by layer, a layer's inputs ``x_q`` (from the partly quantized model) differ from
    the float model's ``x_f``.  GPTQ fitted on ``H = mean(x_q x_q^T)`` reproduces ``W x_q``; the float model
    computes ``W x_f``.  The least-squares weight for that target is ``W mean(x_f x_q^T) H^-1
    = W + W E H^-1`` with the *input shift* ``E = mean((x_f - x_q) x_q^T)``; damped like GPTQ's own
    inverse (``lam = damp * mean(diag H)``, so directions the calibration hardly excites are left alone)::

        W' = W + W E (H + lam I)^-1

    GPTQ then quantizes ``W'`` on ``H`` (the "asymmetric calibration" of GPTAQ, Li et al. 2025, done as one
    correction before the sweep).  ``E = 0`` (unchanged inputs) gives ``W`` back exactly.

    :param w: ``(N, K)`` float weight
    :param shift: ``(K, K)`` ``mean((x_f - x_q) x_q^T)`` over the calibration rows
    :param hessian: ``(K, K)`` ``mean(x_q x_q^T)`` over the same rows
    :returns: float32 ``(N, K)``
    """
    wa = _float_matrix(w, "w", "(N, K)")
    e = _float_matrix(shift, "shift", "(K, K)")
    h = check_hessian(hessian, wa.shape[1])
    if e.shape != h.shape:
        raise ValueError(f"shift must be ({h.shape[0]}, {h.shape[0]}) like the Hessian, got {e.shape}")
    if not isinstance(damp, (int, float, np.floating)) or isinstance(damp, bool) or not damp > 0 \
            or not math.isfinite(damp):
        raise ValueError(f"damp must be a finite number > 0, got {damp!r}")
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h))) if k else 0.0
    if mean_diag <= 0 or not np.any(e):
        return np.array(wa, np.float32)
    from scipy.linalg import cho_factor, cho_solve

    a = np.array(h, np.float64)
    a[np.arange(k), np.arange(k)] += float(damp) * mean_diag
    r_t = cho_solve(cho_factor(a, lower=True), np.asarray(e, np.float64).T)  # (H + lam)^-1 E^T = R^T
    w64 = np.asarray(wa, np.float64)
    return (w64 + w64 @ r_t.T).astype(np.float32)


def gptq(w, hessian, scheme="linear", *, block_size: int = 128, damp: float = DEFAULT_DAMP, act_order: bool = True,
         clip_search: bool = DEFAULT_CLIP_SEARCH, **options: Any) -> QTensor:
    """Quantize the weight ``w`` (``(N, K)``, torch ``Linear`` layout) minimising the output error on the
    calibration inputs summarised by ``hessian`` (``(K, K)``, the mean of ``x x^T``).

    :param scheme: any installed scheme name (``options`` go to it, as for :func:`qcore.quantize`), or a
        :class:`qcore.Quantizer` instance
    :param block_size: columns per lazy batch update (128 as in the paper; only speed depends on it, up to
        float rounding)
    :param damp: fraction of the mean Hessian diagonal added to the diagonal (default 0.4; see the module
        docstring; 0.01 is the paper's)
    :param act_order: quantize the most active input columns first (respecting groups)
    :param clip_search: fit each unit's parameters on the unit shrunk by the factor of :data:`CLIP_GRID` (or 1)
        that gives the least activity-weighted error ``sum_j H_jj (w - w')^2`` — MSE-optimal clipping through
        ``fit``, per row where the parameters are per row (default True; False is the paper's GPTQ)
    :returns: a :class:`qcore.QTensor` of the scheme, decodable like any other (its parameters are one set per
        row, group or column as the scheme's granularity says)

    Bad input: a non-float or non-2-d ``w`` or ``hessian``, NaN/Inf, a Hessian of the wrong shape, negative
    diagonal or not symmetric: ``TypeError`` / ``ValueError`` (``qcore.InputError`` for NaN/Inf).
    """

    wa = _float_matrix(w, "w", "of shape (N, K)")
    orig_dtype = str(wa.dtype)
    if np.abs(wa).max(initial=0.0) > np.finfo(np.float32).max:
        raise InputError("w holds values beyond float32's range")
    n, k = wa.shape
    h = check_hessian(hessian, k)
    block_size = check_int(block_size, "block_size", 1, 1 << 20)
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.floating, np.integer)) or not (
            math.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    if not isinstance(act_order, (bool, np.bool_)):
        raise TypeError(f"act_order must be True or False, got {act_order!r}")
    q = encoding_quantizer(scheme, options, "gptq",
                           " — use quantize_model(..., method='gptq', hessians=...) to plan with GPTQ")
    if not isinstance(clip_search, (bool, np.bool_)):
        raise TypeError(f"clip_search must be True or False, got {clip_search!r}")
    codes, params, _ = _gptq_core(wa.astype(np.float32), h, q, block_size, float(damp), bool(act_order),
                                  bool(clip_search))
    codes = q._checked_codes(np.asarray(codes), wa.shape)
    return QTensor(codes, q.name, q.bits, params, q.export_options(), signed=q.signed, dtype=orig_dtype, quantizer=q)


__all__ = ["gptq", "output_error", "check_hessian"]
