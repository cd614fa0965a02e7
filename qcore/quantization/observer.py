"""The :class:`Observer` interface: statistics of the data a quantizer calibrates on."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import resolve
from ..errors import InputError, QcoreError
from ..kernels.base import Kernel
from ..validation import as_float32, normalize_axis


class Observer:
    """Base class of calibration observers.

    A quantizer creates its observer with ``axis`` (``None`` for one range over the whole tensor, else one
    range per index of ``axis``) and the observer's own options.  ``update`` is called any number of times
    (memory must stay bounded); ``range`` returns the clipping range the quantizer should use.

    Subclasses set ``name``, declare their options with defaults in ``options`` and implement ``_update``
    and ``_range``.  Input reaching ``_update`` is float32, C-contiguous, finite and non-empty.
    """

    name: ClassVar[str] = ""
    #: option name -> default value; anything else passed to the constructor is an error
    options: ClassVar[dict[str, Any]] = {}
    #: True when ``_update`` itself raises :class:`qcore.InputError` on NaN/Inf (inside its own pass over the
    #: data), so ``update`` skips a separate check pass (built-in observers)
    self_checking: ClassVar[bool] = False

    def __init__(self, axis: int | None = None, kernel=None, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"observer {self.name!r} got unknown option(s) {', '.join(sorted(unknown))}; known: {known}")
        self.axis = axis
        self.config = {**self.options, **options}
        # the quantizer passes its Kernel instance; a name or None is looked up (see qcore/resolve.py)
        self.kernel = kernel if isinstance(kernel, Kernel) else resolve.kernel(kernel)
        self.batches = 0
        self.channels: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything observed."""
        self.batches = 0
        self.channels = None

    @property
    def observed(self) -> bool:
        return self.batches > 0

    def update(self, x) -> None:
        """Add a batch.  Per-channel observers need the same size along ``axis`` in every batch."""
        x = as_float32(x, "batch", check_finite=not self.self_checking)
        if self.axis is not None:
            ax = normalize_axis(self.axis, x.ndim)
            channels = x.shape[ax]
        else:
            channels = 1
        if x.size == 0:
            raise InputError("cannot observe an empty batch")
        if self.channels is not None and channels != self.channels:
            raise ValueError(f"batch has {channels} channels along axis {self.axis}, earlier batches had {self.channels}")
        self._update(x)
        self.channels = channels
        self.batches += 1

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` float32 arrays of shape ``(C,)`` (``(1,)`` per tensor) with ``lo <= 0 <= hi`` not required."""
        if not self.observed:
            raise QcoreError(f"observer {self.name!r} has not observed any data yet: call observe() first")
        lo, hi = self._range(bits, symmetric)
        return np.asarray(lo, np.float32).reshape(-1), np.asarray(hi, np.float32).reshape(-1)

    def _update(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<qcore observer {self.name!r} axis={self.axis} batches={self.batches}>"
