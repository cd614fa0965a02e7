"""Instruction-set levels: one set of names, one cap (``QCORE_ISA``), one selector every kernel extension uses.

The extensions are built for baseline x86-64 and carry extra copies of their hot loops compiled for higher
levels (pyx/qcore_isa.h).  The levels, lowest first, each including the ones below it:

* ``baseline`` — x86-64 (SSE2), or any other CPU;
* ``avx2`` — AVX2, FMA, F16C;
* ``avx512`` — AVX-512 F, BW, VL, DQ;
* ``avx512vnni`` — AVX-512 VNNI.

``QCORE_ISA=<level>`` is a strict cap: no extension ever runs a copy above it, and nothing can switch above it
at run time.  Unset, the cap is the best level the CPU runs.  Any other value is a ``ValueError`` naming the
valid ones, raised at the first registry use (before any kernel loads) and by any extension imported
directly — never a kernel silently left out.  ``QCORE_GEMM_ISA`` (the GEMM's variable before, with
``portable`` for ``baseline``) is a deprecated alias read when ``QCORE_ISA`` is unset; it caps every extension.

Each extension holds one :class:`Switch` (``qcore_plugins._quant.ISA`` …) saying the level it runs at and the
copy that level selects (an extension without a copy at exactly that level runs the next one below: the
affine kernels have no VNNI copy, the int8 GEMM no plain AVX-512 one).  The level belongs to the kernel:
``kernel.isas()``, ``kernel.isa`` and ``kernel.set_isa(level)`` (qcore/kernels/core.py) switch every
extension of a kernel together.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

#: every level, lowest first (the order of the QCORE_ISA_* enum of pyx/qcore_isa.h)
ISA_NAMES = ("baseline", "avx2", "avx512", "avx512vnni")
_OLD_GEMM_NAMES = {"portable": "baseline"}


def _names() -> str:
    return ", ".join(ISA_NAMES)


def cap() -> str:
    """The highest level any extension may run: ``QCORE_ISA`` (case and spaces do not matter), else the
    deprecated ``QCORE_GEMM_ISA``, else the top level (then the CPU is the only limit)."""
    value = os.environ.get("QCORE_ISA", "").strip().lower()
    if value:
        if value not in ISA_NAMES:
            raise ValueError(f"QCORE_ISA={value!r} is not an instruction set qcore knows: use one of "
                             f"{_names()}, or leave it unset for the best this CPU supports")
        return value
    old = os.environ.get("QCORE_GEMM_ISA", "").strip().lower()
    if old:
        name = _OLD_GEMM_NAMES.get(old, old)
        if name not in ISA_NAMES:
            raise ValueError(f"QCORE_GEMM_ISA={old!r} is not an instruction set qcore knows: use QCORE_ISA with "
                             f"one of {_names()}")
        warnings.warn("QCORE_GEMM_ISA is deprecated: set QCORE_ISA instead (one cap for every kernel extension; "
                      "'portable' is now 'baseline')", DeprecationWarning, stacklevel=2)
        return name
    return ISA_NAMES[-1]


def check() -> None:
    """Raise the ``ValueError`` of a mistyped ``QCORE_ISA`` now (the registry calls it before loading kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cap()


def usable(cpu: str) -> list[str]:
    """The levels that may run on a CPU whose best level is ``cpu``: none above it or the cap, best first."""
    top = min(ISA_NAMES.index(cpu), ISA_NAMES.index(cap()))
    return list(reversed(ISA_NAMES[: top + 1]))


def require(level, allowed: Sequence[str], who: str) -> str:
    """``level`` if it is one of ``allowed`` (the levels ``who`` runs here); else the ``TypeError`` or
    ``ValueError`` saying why: not a level name, above the ``QCORE_ISA`` cap, or not run here."""
    if not isinstance(level, str):
        raise TypeError(f"an instruction-set level must be a str (one of {_names()}), got {type(level).__name__}")
    if level not in ISA_NAMES:
        raise ValueError(f"unknown instruction-set level {level!r}: use one of {_names()}")
    top = cap()
    if ISA_NAMES.index(level) > ISA_NAMES.index(top):
        raise ValueError(f"instruction-set level {level!r} is above the cap QCORE_ISA={top!r} "
                         f"({who} runs {', '.join(allowed)})")
    if level not in allowed:
        raise ValueError(f"{who} cannot run instruction-set level {level!r} here; it runs {', '.join(allowed)}")
    return level


class Switch:
    """The level one kernel extension runs at, and the copy of its hot loops that level selects.

    ``copies``: the levels the extension has copies for, lowest first, starting with ``"baseline"``;
    ``cpu_level``: the index of the best level this CPU runs (``qc_cpu_level()``); ``use_copy(i)``: makes
    the C side run the copy of level ``ISA_NAMES[i]`` and returns the index of the copy it actually runs.
    Made at import at the best usable level (the CPU's, capped by ``QCORE_ISA``).

    Not meant to be switched while kernels run in other threads (tests and benchmarks switch it).
    """

    def __init__(self, copies: Sequence[str], cpu_level: int, use_copy: Callable[[int], int]):
        copies = tuple(copies)
        if not copies or copies[0] != "baseline" or any(c not in ISA_NAMES for c in copies) \
                or list(copies) != sorted(copies, key=ISA_NAMES.index):
            raise ValueError(f"copies must be levels from {ISA_NAMES}, lowest first from 'baseline', got {copies}")
        self.copies = copies
        self.cpu = ISA_NAMES[cpu_level]
        self._use_copy = use_copy
        self.level = self.copy = "baseline"
        self.set(self.levels()[0])

    def levels(self) -> list[str]:
        """The levels this extension may run at here, best first (the CPU's and the cap's limits)."""
        return usable(self.cpu)

    def copy_for(self, level: str) -> str:
        """The copy that runs at ``level`` (validated like :meth:`set`): the best copy not above it."""
        i = ISA_NAMES.index(require(level, self.levels(), f"this CPU (best level {self.cpu!r})"))
        return max((c for c in self.copies if ISA_NAMES.index(c) <= i), key=ISA_NAMES.index)

    def set(self, level: str) -> str:
        """Run at ``level`` from now on; returns the copy in use.  ``ValueError`` above the cap or the CPU."""
        copy = self.copy_for(level)
        self.copy = ISA_NAMES[self._use_copy(ISA_NAMES.index(copy))]
        self.level = level
        return self.copy

    def __repr__(self) -> str:
        return f"<qcore.isa.Switch level={self.level!r} copy={self.copy!r} copies={self.copies} cpu={self.cpu!r}>"
