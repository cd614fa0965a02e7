"""Helpers shared by the framework adapters (no framework imports here)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..api import scheme_class as _scheme_class
from ..quantization.defaults import role_options
from ..metrics import selected as name_selected  # noqa: F401 - the adapters use it under this name


def scheme_class(scheme: str):
    """The registered class of ``scheme``, a scheme or a planner (``qcore.SchemeNotFound`` if none)."""
    return _scheme_class(scheme)


def weight_options(scheme: str, bits: int | None, options: dict[str, Any], channel_axis: int) -> dict[str, Any]:
    """Quantizer options for a weight: the caller's ``options`` (and ``bits``, None: the scheme's default) over the
    scheme's own weight defaults (``role_defaults["weight"]``, qcore/quantization/defaults.py), with
    ``axis=channel_axis`` (the output-unit axis of the framework's weight layout) where the layout is per
    channel — the only thing the adapter decides."""
    opts = dict(options) if bits is None else {**options, "bits": bits}
    return role_options(scheme_class(scheme), "weight", opts, channel_axis)


def activation_options(scheme: str, bits: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """Quantizer options for an activation: the caller's over the scheme's ``role_defaults["activation"]``."""
    opts = dict(options) if bits is None else {**options, "bits": bits}
    return role_options(scheme_class(scheme), "activation", opts)


def bits_alias(bits, explicit, old: str, new: str, warn: bool, stacklevel: int = 3):
    """The value of ``new`` (``weight_bits``/``activation_bits``) given either spelling; ``old`` (``bits``) is the
    deprecated alias (a ``DeprecationWarning`` when ``warn``); both at once is a ``TypeError``."""
    if bits is not None and explicit is not None:
        raise TypeError(f"give {new}= or its deprecated alias {old}=, not both")
    if bits is not None and warn:
        warnings.warn(f"{old}= is deprecated here: use {new}=", DeprecationWarning, stacklevel=stacklevel)
    return explicit if explicit is not None else bits


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (for state dicts loadable with ``weights_only``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
