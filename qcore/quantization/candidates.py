"""Candidate specs of planners: ``"scheme:bits[:granularity[:group_size]]"`` strings or dicts, parsed in one place
(the ``mixed`` planner's ``candidates=`` option and the command line's ``--candidates``)."""
from __future__ import annotations

from typing import Any


def parse_candidate(spec) -> dict[str, Any]:
    """``"linear:4:group:64"`` / ``{"scheme": "linear", "bits": 4, ...}`` -> ``{"scheme", "bits", **options}``.

    A ``ValueError`` (``TypeError`` for something neither a string nor a dict) says what the form is."""
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
        d: dict[str, Any] = {"scheme": parts[0], "bits": int(parts[1])}
        if len(parts) >= 3:
            d["granularity"] = parts[2]
        if len(parts) == 4:
            d["group_size"] = int(parts[3])
    except ValueError:
        raise ValueError(f"candidate {spec!r}: bits and group_size must be integers") from None
    return d


def parse_candidates(value) -> list[dict[str, Any]]:
    """A comma-separated string, or a list of strings/dicts, as candidate dicts (in order)."""
    if isinstance(value, str):
        value = [c for c in value.split(",") if c.strip()]
    return [parse_candidate(c) for c in value]


def label_of(spec: dict) -> str:
    """``{"scheme": "linear", "bits": 4, "granularity": "group", "group_size": 64}`` -> ``"linear:4:group64"``."""
    s = f"{spec['scheme']}:{spec.get('bits', '?')}"
    g = spec.get("granularity")
    if g:
        s += f":{g}" + (f"{spec['group_size']}" if g == "group" and "group_size" in spec else "")
    return s


__all__ = ["parse_candidate", "parse_candidates", "label_of"]
