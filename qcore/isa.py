"""The instruction-set choice of every kernel extension, from one variable: ``QCORE_ISA``.

The extensions are built for baseline x86-64 and carry extra copies of their hot loops compiled for newer
instruction sets (pyx/qcore_isa.h), one of which each picks when it is imported:

* ``QCORE_ISA`` unset: the best copy this CPU runs;
* ``QCORE_ISA=baseline|avx2|avx512|avx512vnni``: the best copy not above that level (and that the CPU runs) —
  an extension without a copy at exactly that level takes the next one below (the affine kernels have no
  VNNI copy, the int8 GEMM no plain AVX-512 one);
* any other value is a ``ValueError`` naming the valid ones, raised at the first registry use (before any
  kernel loads) and by any extension imported directly — never a kernel silently left out.

``QCORE_GEMM_ISA`` (``avx512vnni|avx2|portable``, the GEMM's own variable before) is still read by the GEMM
when ``QCORE_ISA`` is unset, with a ``DeprecationWarning``; ``portable`` means ``baseline``.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

#: every level, lowest first
ISA_NAMES = ("baseline", "avx2", "avx512", "avx512vnni")
_OLD_GEMM_NAMES = {"portable": "baseline", "avx2": "avx2", "avx512vnni": "avx512vnni"}


def requested(gemm: bool = False) -> str | None:
    """The level ``QCORE_ISA`` asks for (for the GEMM, ``gemm=True``, also the deprecated ``QCORE_GEMM_ISA``);
    None: the best the CPU has."""
    value = os.environ.get("QCORE_ISA", "").strip().lower()
    if value:
        if value not in ISA_NAMES:
            raise ValueError(f"QCORE_ISA={value!r} is not an instruction set qcore knows: use one of "
                             f"{', '.join(ISA_NAMES)}, or leave it unset for the best this CPU supports")
        return value
    old = os.environ.get("QCORE_GEMM_ISA", "").strip().lower() if gemm else ""
    if old:
        warnings.warn("QCORE_GEMM_ISA is deprecated: set QCORE_ISA instead (one variable for every kernel; "
                      "'portable' is now 'baseline')", DeprecationWarning, stacklevel=2)
        name = _OLD_GEMM_NAMES.get(old, old if old in ISA_NAMES else None)
        if name is None:
            raise ValueError(f"QCORE_GEMM_ISA={old!r} is not an instruction set qcore knows: use QCORE_ISA with one of "
                             f"{', '.join(ISA_NAMES)}")
        return name
    return None


def choose(variants: Sequence[str], supported: Sequence[bool], gemm: bool = False) -> int:
    """Index of the copy an extension runs: ``variants`` are its copies' levels (names from :data:`ISA_NAMES`,
    lowest first, the first one always runnable), ``supported`` whether this CPU runs each."""
    want = requested(gemm)
    top = len(ISA_NAMES) - 1 if want is None else ISA_NAMES.index(want)
    best = 0
    for i, (name, ok) in enumerate(zip(variants, supported)):
        if ok and ISA_NAMES.index(name) <= top:
            best = i
    return best


def check() -> None:
    """Raise the ``ValueError`` of a mistyped ``QCORE_ISA`` now (the registry calls it before loading kernels)."""
    requested()
    if os.environ.get("QCORE_GEMM_ISA", "").strip() and not os.environ.get("QCORE_ISA", "").strip():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            requested(gemm=True)
