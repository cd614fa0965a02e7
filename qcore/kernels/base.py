"""The :class:`Kernel` interface: the union of the capability interfaces (docs/contracts.md §1).

Each capability is a small class in its own module, with its numpy reference beside it (qcore/kernels/core.py
lists them).  A kernel plugin subclasses :class:`Kernel`, sets ``name`` and ``priority``, declares the
capabilities it implements in ``capabilities`` and overrides the underscore methods it accelerates; the public
methods stay the base classes' (they validate their arguments first).  A declared capability whose ``_``
methods are not overridden runs the numpy reference.  ``qcore.get_kernel(capability=...)`` finds the kernel of
highest priority that declares a capability; ``qcore.testing.check_kernel`` checks every declared capability
against the ``numpy`` kernel, which declares them all.
"""
from __future__ import annotations

from typing import ClassVar

from .affine import AffineOps
from .codebook import CodebookOps
from .conv import ConvOps
from .core import KernelBase, code_dtype, kernel_instance, packed_size
from .histogram import HistogramOps
from .int8_gemm import Int8GemmOps
from .kmeans import KMeansFit
from .lowbit import LowbitOps, lowbit_table_bytes

#: the capability interfaces, in the order of docs/contracts.md §1
CAPABILITY_CLASSES: tuple[type[KernelBase], ...] = (AffineOps, CodebookOps, HistogramOps, KMeansFit, Int8GemmOps,
                                                    LowbitOps, ConvOps)
#: every capability name a kernel may declare
CAPABILITIES: frozenset[str] = frozenset(c.capability for c in CAPABILITY_CLASSES)
#: what schemes and observers use through their kernel: ``qcore.get_kernel()`` (no name, no capability) picks
#: the kernel of highest priority among those declaring all of these
SCHEME_CAPABILITIES: frozenset[str] = frozenset({"affine", "codebook", "histogram", "kmeans_fit"})


class Kernel(AffineOps, CodebookOps, HistogramOps, KMeansFit, Int8GemmOps, LowbitOps, ConvOps):
    """Base class of compute kernels: every capability interface (see the module doc).

    ``capabilities`` defaults to what schemes and observers use (``affine``, ``codebook``, ``histogram``,
    ``kmeans_fit``: what a stage-2 kernel implemented, or ran the reference of); a kernel declares its own.
    """

    capabilities: ClassVar[frozenset[str]] = SCHEME_CAPABILITIES


__all__ = ["Kernel", "KernelBase", "CAPABILITIES", "CAPABILITY_CLASSES", "SCHEME_CAPABILITIES", "code_dtype",
           "packed_size", "kernel_instance", "lowbit_table_bytes"]
