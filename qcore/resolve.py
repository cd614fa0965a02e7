"""The one injection point between the base classes and the plugin registry.

Imports flow one way (tests/test_import_graph.py): the registry (qcore/plugin/manager.py) checks every
plugin class against the base classes :class:`qcore.Quantizer`, :class:`qcore.Observer` and
:class:`qcore.Kernel`, so those base classes — and :class:`qcore.QTensor` — must not import the registry
or the API layer above it (qcore/api.py).

They still need plugins by name in three places, all of them conveniences for code that constructs them
directly rather than through ``qcore.get_quantizer``:

* a quantizer or observer built with ``kernel=None`` or ``kernel="numpy"`` needs a :class:`qcore.Kernel`;
* a quantizer needs the observer class it was told to use (``observer="histogram"``);
* a :class:`qcore.QTensor` loaded from a file or unpickled rebuilds the quantizer that decodes it from
  ``scheme`` and ``options``.

The API layer resolves names itself wherever it can and passes objects down (``qcore.get_quantizer``
hands the scheme a :class:`qcore.Kernel` instance and the observer class, never a name).  For the rest it
installs its lookup functions here with :func:`install` when qcore/api.py is imported, which ``import
qcore`` always does before any base class can be used.  Nothing here looks anything up by itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .kernels.base import Kernel
    from .quantization.observer import Observer
    from .quantization.quantizer import Quantizer

_kernel: Callable[[Any], "Kernel"] | None = None
_observer_class: Callable[[str], type["Observer"]] | None = None
_quantizer: Callable[..., "Quantizer"] | None = None


def install(*, kernel: Callable[[Any], "Kernel"], observer_class: Callable[[str], type["Observer"]],
            quantizer: Callable[..., "Quantizer"]) -> None:
    """Called once by the API layer: the functions that turn names into kernels, observer classes, quantizers."""
    global _kernel, _observer_class, _quantizer
    _kernel, _observer_class, _quantizer = kernel, observer_class, quantizer


def _need(fn):
    if fn is None:  # pragma: no cover - qcore/__init__ imports qcore.api, which installs the functions
        raise RuntimeError("qcore's API layer is not loaded: import qcore first")
    return fn


def kernel(spec=None) -> "Kernel":
    """A :class:`qcore.Kernel` for ``spec``: a Kernel instance is returned as is, a name or None is looked up."""
    return _need(_kernel)(spec)


def observer_class(name: str) -> type["Observer"]:
    """The observer class registered under ``name`` (``qcore.ObserverNotFound`` if none)."""
    return _need(_observer_class)(name)


def quantizer(scheme: str, **options) -> "Quantizer":
    """A quantizer of ``scheme`` built with ``options`` (used to decode a stored tensor)."""
    return _need(_quantizer)(scheme, **options)
