"""Helpers shared by the framework adapters (no framework imports here)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..api import scheme_class as _scheme_class
from ..metrics import selected as name_selected  # noqa: F401 - the adapters use it under this name


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


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (for state dicts loadable with ``weights_only``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
