"""Deprecated: the instruction-set functions of ``qcore.ops`` before the level belonged to the kernel.

Each is an alias onto the default kernel (``qcore.get_kernel()``), whose ``isas()``, ``isa`` and
``set_isa(level)`` switch every extension together (qcore/isa.py).  ``portable`` is accepted for ``baseline``.
"""
from __future__ import annotations

import warnings


def _kernel(old: str, new: str):
    warnings.warn(f"qcore.ops.{old} is deprecated: use qcore.get_kernel().{new} (one instruction-set level for "
                  "every extension of the kernel)", DeprecationWarning, stacklevel=3)
    from ..api import get_kernel

    return get_kernel()


def _level(name):
    return "baseline" if name == "portable" else name


def available_isas() -> list[str]:
    """Deprecated alias of ``qcore.get_kernel().isas()``."""
    return _kernel("available_isas()", "isas()").isas()


def gemm_isa() -> str:
    """Deprecated alias of ``qcore.get_kernel().isa``."""
    return _kernel("gemm_isa()", "isa").isa


def set_gemm_isa(name: str) -> None:
    """Deprecated alias of ``qcore.get_kernel().set_isa(name)`` (every extension, not only the GEMM)."""
    _kernel("set_gemm_isa()", "set_isa()").set_isa(_level(name))


def lowbit_isas() -> list[str]:
    """Deprecated alias of ``qcore.get_kernel().isas()``."""
    return _kernel("lowbit_isas()", "isas()").isas()


def lowbit_isa() -> str:
    """Deprecated alias of ``qcore.get_kernel().isa``."""
    return _kernel("lowbit_isa()", "isa").isa


def set_lowbit_isa(name: str) -> None:
    """Deprecated alias of ``qcore.get_kernel().set_isa(name)`` (every extension, not only the low-bit GEMM)."""
    _kernel("set_lowbit_isa()", "set_isa()").set_isa(_level(name))
