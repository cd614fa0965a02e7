"""Error measures and report rows, written once for the model layer, the planners, the adapters and the CLI."""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Iterable

import numpy as np


def sumsq(d: np.ndarray, chunk: int = 1 << 16) -> float:
    """``sum(d**2)`` accumulated in float64 over chunks (a few hundred KB extra, whatever the size)."""
    flat = np.asarray(d).reshape(-1)
    total = 0.0
    for i in range(0, flat.size, chunk):
        c = flat[i : i + chunk].astype(np.float64)
        total += float(np.einsum("i,i->", c, c))  # not np.dot: BLAS threading on small vectors is slow
    return total


def sqnr_from_sums(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` in dB: ``inf`` when exact, ``-inf`` for a zero signal with noise."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref, approx, chunk: int = 1 << 16) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum x^2 / sum (x - x')^2)``; ``inf`` when exact.

    Sums accumulate in float64 over chunks, so the extra memory is a few MB whatever the tensor size.
    """
    return sqnr_from_sums(*signal_noise(ref, approx, chunk))


def signal_noise(ref, approx, chunk: int = 1 << 16) -> tuple[float, float]:
    """``(sum x^2, sum (x - x')^2)`` in float64, chunk by chunk (what :func:`sqnr_db` divides); sums of several
    parts of a tensor add up to the whole's."""
    ref = np.asarray(ref).reshape(-1)
    approx = np.asarray(approx).reshape(-1)
    if ref.shape != approx.shape:
        raise ValueError(f"sqnr_db: sizes differ ({ref.size} vs {approx.size})")
    noise = signal = 0.0
    for i in range(0, ref.size, chunk):
        r = ref[i : i + chunk].astype(np.float64)
        d = r - approx[i : i + chunk]
        noise += float(np.einsum("i,i->", d, d))  # not np.dot: BLAS threads on small vectors cost far more
        signal += float(np.einsum("i,i->", r, r))
    return signal, noise


def matches(name: str, patterns: Iterable[str] | str) -> bool:
    """True if ``name`` matches one of the glob ``patterns`` (case-sensitive ``fnmatch``)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def selected(name: str, include: Iterable[str] | str | None, exclude: Iterable[str] | str | None) -> bool:
    """True if ``name`` matches ``include`` (every name if None) and not ``exclude`` (glob patterns)."""
    if include is not None and not matches(name, include):
        return False
    return exclude is None or not matches(name, exclude)


def report_row(name: str, *, scheme: str | None, bits: int | None, shape, bytes_fp32: int, bytes_q: int,
               sqnr_db: float | None, options: dict[str, Any] | None = None, planned_by: str | None = None,
               **extra) -> dict[str, Any]:
    """One row of a report (:meth:`qcore.QModel.report`, ``qcore inspect``, the scikit-learn adapter): ``name,
    scheme, bits, shape, bytes_fp32, bytes_q, sqnr_db, options, planned_by`` (+ ``extra``).  A tensor kept as it
    was has ``scheme`` None."""
    return {"name": name, "scheme": scheme, "bits": bits, "shape": [int(s) for s in shape],
            "bytes_fp32": int(bytes_fp32), "bytes_q": int(bytes_q), "sqnr_db": sqnr_db,
            "options": dict(options or {}), "planned_by": planned_by, **extra}


#: what a planner recorded about a tensor's choice (``QModel.info[name]``, saved in the file, report columns):
#: the candidate's label, the method that fitted it, its held-out and in-sample output errors, whether the
#: error is held out
PLAN_KEYS = ("candidate", "method", "error", "error_in_sample", "held_out")
_PLAN_TYPES = {"candidate": str, "method": str, "error": (int, float), "error_in_sample": (int, float),
               "held_out": bool}


def plan_info(info: dict) -> dict[str, Any]:
    """The plan keys of a tensor's ``info`` that can be saved (finite numbers only)."""
    out = {}
    for key in PLAN_KEYS:
        v = info.get(key)
        if v is None:
            continue
        if key in ("error", "error_in_sample"):
            v = float(v)
            if not math.isfinite(v):
                continue
        out[key] = v
    return out


def check_plan_info(plan) -> None:
    """A saved plan object: a dict of the :data:`PLAN_KEYS` with their types (``ValueError``/``TypeError``)."""
    if not isinstance(plan, dict):
        raise TypeError(f"must be an object, got {type(plan).__name__}")
    for key, v in plan.items():
        if key not in _PLAN_TYPES:
            raise ValueError(f"unknown key {key!r}")
        want = _PLAN_TYPES[key]
        if not isinstance(v, want) or (want != bool and isinstance(v, bool)):
            raise TypeError(f"{key} has type {type(v).__name__}")
        if key in ("error", "error_in_sample") and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")


def plan_columns(info: dict) -> dict[str, Any]:
    """The report columns of a tensor's plan: ``candidate``, ``error`` (held out where ``held_out``),
    ``error_in_sample``, ``held_out`` (None where unknown)."""
    return {"candidate": info.get("candidate"), "error": info.get("error"),
            "error_in_sample": info.get("error_in_sample"), "held_out": info.get("held_out")}
