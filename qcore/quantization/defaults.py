"""One default per option, owned by the scheme (docs/contracts.md §2, "Defaults"; the table in docs/usage.md).

A scheme (or planner) class declares its options' defaults in ``options`` and ``default_bits``, and may declare
per-*role* defaults in ``role_defaults``: what a model's **weight** or **activation** gets when the caller does
not say (the built-in ``linear`` quantizes weights per output channel, symmetrically; activations per tensor,
affine).  Entry points that know the role of what they quantize — the torch and scikit-learn adapters, the
``qcore quantize`` command — pass only the role and what their framework's layout needs, the channel axis;
entry points for plain tensors (``qcore.quantize``, ``get_quantizer``, ``quantize_model``, ``gptq``) use the
scheme's own ``options``.
"""
from __future__ import annotations

from typing import Any

#: the roles a scheme may declare defaults for
ROLES = ("weight", "activation")


def _role(cls, role):
    if role is None:
        return {}
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    return dict((getattr(cls, "role_defaults", None) or {}).get(role, {}))


def option_defaults(cls, role: str | None = None) -> dict[str, Any]:
    """Every option's default for ``role`` (None: a plain tensor): ``bits`` (``default_bits`` clipped into
    ``bits_range``), then the class's ``options``, overridden by its ``role_defaults[role]``."""
    lo, hi = getattr(cls, "bits_range", (1, 8))
    return {"bits": min(max(int(cls.default_bits), lo), hi), **cls.options, **_role(cls, role)}


def role_options(cls, role: str, options: dict[str, Any], channel_axis: int | None = None) -> dict[str, Any]:
    """The keyword arguments an adapter builds ``cls`` with: the caller's ``options`` over the class's defaults
    for ``role``, and ``axis=channel_axis`` (the output-unit axis of the framework's layout) when the caller gave
    none and the resulting layout is per channel (or the class has an ``axis`` but no ``granularity``, as the
    ``mixed`` planner).  Options the caller left out and no role default names keep the class's own default."""
    out = {**_role(cls, role), **options}
    declared = cls.options
    if channel_axis is not None and "axis" in declared and "axis" not in options:
        gran = out.get("granularity", declared.get("granularity"))
        if gran == "channel" or "granularity" not in declared:
            out["axis"] = channel_axis
    return out


__all__ = ["ROLES", "option_defaults", "role_options"]
