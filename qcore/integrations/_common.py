"""Helpers shared by the framework adapters (no framework imports here)."""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import numpy as np

from ..api import scheme_class as _scheme_class


def scheme_class(scheme: str):
    """The registered class of ``scheme``, a scheme or a planner (``qcore.SchemeNotFound`` if none)."""
    return _scheme_class(scheme)


#: schemes whose parameters are a codebook: one per tensor is already adaptive, so they keep their own default
CODEBOOK_SCHEMES = frozenset({"kmeans"})


def weight_options(scheme: str, bits: int, options: dict[str, Any], channel_axis: int) -> dict[str, Any]:
    """Quantizer options for a weight: the caller's ``options`` plus the adapter defaults the scheme supports.

    Defaults, only for options the scheme declares and the caller did not pass: ``granularity="channel"``
    (except for codebook schemes such as ``kmeans``), ``symmetric=True``, and ``axis=channel_axis`` (the
    output-unit axis of the framework's weight layout) whenever the granularity is ``"channel"`` or the scheme
    has an ``axis`` but no ``granularity`` (``mixed``).
    """
    cls = scheme_class(scheme)
    declared = getattr(cls, "options", {}) or {}
    out = dict(options)
    if ("granularity" in declared and "granularity" not in out and scheme not in CODEBOOK_SCHEMES
            and "channel" in getattr(cls, "granularities", ())):
        out["granularity"] = "channel"
    if "symmetric" in declared and "symmetric" not in out:
        out["symmetric"] = True
    if "axis" in declared and "axis" not in out:
        gran = out.get("granularity", declared.get("granularity"))
        if gran == "channel" or "granularity" not in declared:
            out["axis"] = channel_axis
    return {"bits": bits, **out}


def name_selected(name: str, include: Iterable[str] | str | None, exclude: Iterable[str] | str | None) -> bool:
    """True if ``name`` matches one of the ``include`` glob patterns (all names if None) and none of ``exclude``."""
    if isinstance(include, str):
        include = [include]
    if isinstance(exclude, str):
        exclude = [exclude]
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return False
    return True


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` when exact)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal > 0 else float("-inf")


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (for state dicts loadable with ``weights_only``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
