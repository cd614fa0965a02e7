"""The kernel layer: the :class:`Kernel` interface.  Implementations are plugins (``cython``, ``numpy``)."""
from .base import Kernel, code_dtype, packed_size

__all__ = ["Kernel", "code_dtype", "packed_size"]
