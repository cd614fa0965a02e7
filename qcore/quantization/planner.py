"""The :class:`Planner` interface: a plugin that *chooses* a scheme and options per tensor, from measured error.

A planner is not an encoding.  It never decodes anything itself: for each tensor it measures a list of
candidates (each one a scheme plus options, quantized with that scheme), picks one per tensor under a budget or
an error target, and returns the chosen candidate's :class:`qcore.QTensor`, whose ``scheme`` is the candidate's
(so a file needs only that scheme's plugin to load).  Planners register with the ``qcore_planners`` hook
(docs/plugins.md) and are used by name like schemes: ``qcore.quantize(w, "mixed", budget_bits=4)``,
``qcore.quantize_model(tensors, "mixed", budget_bits=4.5, hessians=...)``.

The contract (docs/contracts.md §3; ``qcore.testing.check_planner`` exercises all of it) — three methods:

* ``measure(x, *, hessians=None, method="rtn", sensitivity=None) -> list[dict]`` — one record per applicable
  candidate.  ``hessians`` is a :class:`qcore.ptq.HessianFolds` (the layer's input statistics, ``K x K`` for a
  ``(N, K)`` weight, in ``k >= 1`` folds) or ``None`` (no data: judge by the weight); ``method`` is ``"rtn"``
  or ``"gptq"`` (fit each candidate by :func:`qcore.gptq`, which needs ``hessians``); ``sensitivity`` a weight
  (a number, or per-element array) a planner may apply to its error.  **Held-out scoring:** with two or more
  folds, a data-aware fit (GPTQ) is made on some folds and scored on the one held out.  A record is a dict of
  JSON-serialisable values (no arrays: records travel through executors) with at least ``"spec"`` (what
  :meth:`quantize_candidate` takes), ``"label"``, ``"bits"``, ``"nbytes"`` (true storage), ``"error"`` (what
  the plan minimises: held out when it can be), ``"error_in_sample"``, ``"held_out"`` (bool) and
  ``"sqnr_db"``;
* ``plan(measurements, *, capacity_bits=None, target_sqnr=None, names=None) -> list[int]`` — the index of
  the chosen candidate of each tensor, never above ``capacity_bits`` in total when that is given; the same
  inputs give the same plan;
* ``quantize_candidate(x, spec, *, hessians=None, method="rtn") -> QTensor`` — the candidate fitted on all the
  data (``hessians.full()``); its ``nbytes`` is the measured one.

Callers (``quantize_model``, the torch adapter, the CLI) go through one driver,
:mod:`qcore.quantization.driver`, which passes ``hessians``/``method``/``sensitivity`` only when they are
given (so a planner without data-aware methods may leave them out of its signature).
:meth:`quantize` (one tensor) is built from the three methods.  Options: ``bits`` (the widest code a candidate
may use), ``kernel`` and ``observer`` (passed on to the candidate schemes), ``budget_bits`` and ``target_sqnr``
when the planner declares them in ``options``, and the planner's own.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import resolve
from ..kernels.base import Kernel
from ..tensor import QTensor
from ..validation import as_float32, check_int
from .defaults import option_defaults


class Planner:
    """Base class of planners (see the module docstring).  Subclasses set ``name`` and ``options``."""

    name: ClassVar[str] = ""
    #: option name -> default; anything else passed to the constructor is an error
    options: ClassVar[dict[str, Any]] = {}
    #: default widest code of a candidate
    default_bits: ClassVar[int] = 8
    #: option defaults per role (qcore/quantization/defaults.py), as for schemes
    role_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def defaults(cls, role: str | None = None) -> dict[str, Any]:
        """Every option's default for ``role`` (``"weight"``, ``"activation"`` or None), ``bits`` included."""
        return option_defaults(cls, role)

    def __init__(self, bits: int | None = None, observer: str | None = None, kernel=None, **options):
        self.bits = check_int(self.default_bits if bits is None else bits, "bits", 1, 8)
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(
                f"planner {self.name!r} got unknown option(s) {', '.join(sorted(unknown))}; "
                f"its options are bits, observer, kernel and: {known}"
            )
        self.config: dict[str, Any] = {**self.options, **options}
        # like Quantizer: qcore.get_quantizer passes a Kernel; a name or None is looked up (qcore/resolve.py)
        self.kernel = kernel if isinstance(kernel, Kernel) else resolve.kernel(kernel)
        self.observer_name = observer

    # -- what a planner implements ------------------------------------------------------------------------
    def measure(self, x, *, hessians=None, method: str = "rtn", sensitivity=None) -> list[dict]:
        raise NotImplementedError

    def plan(self, measurements: list[list[dict]], *, capacity_bits: float | None = None,
             target_sqnr: float | None = None, names=None) -> list[int]:
        raise NotImplementedError

    def quantize_candidate(self, x, spec: dict, *, hessians=None, method: str = "rtn") -> QTensor:
        raise NotImplementedError

    # -- one tensor ------------------------------------------------------------------------------------
    def capacity_bits(self, size: int) -> float | None:
        """The bit budget of one tensor of ``size`` elements (``budget_bits * size``; None without a budget)."""
        budget = self.config.get("budget_bits")
        return None if budget is None else float(budget) * size

    def choose(self, x) -> dict:
        """The measurement record of the candidate chosen for ``x`` alone."""
        x = as_float32(x)
        m = self.measure(x)
        if not m:
            raise ValueError(f"no candidate of planner {self.name!r} applies to an array of shape {x.shape}")
        if x.size == 0:
            return min(m, key=lambda c: c["nbytes"])
        return m[self.plan([m], capacity_bits=self.capacity_bits(x.size), target_sqnr=self.config.get("target_sqnr"))[0]]

    def quantize(self, x) -> QTensor:
        """The chosen candidate's ``QTensor`` (its ``scheme`` is the candidate's, not the planner's)."""
        x = as_float32(x)
        return self.quantize_candidate(x, self.choose(x)["spec"])

    def export_options(self) -> dict[str, Any]:
        return {"bits": self.bits, **self.config}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.export_options().items() if not isinstance(v, np.ndarray))
        return f"<qcore planner {self.name!r} {opts}>"


__all__ = ["Planner"]
