"""The API layer: the public functions that look plugins up by name, above the base classes.

This is the only layer that turns names into plugin classes (through the registry, qcore/plugin/manager.py).
It resolves names before constructing: :func:`get_quantizer` hands the scheme a :class:`qcore.Kernel`
instance, and the base classes receive objects, not names.  For base-class objects built directly by user
code (``MyScheme(bits=4)``, a :class:`qcore.QTensor` read from a file) it installs its lookups into
qcore/resolve.py when this module is imported (``import qcore`` does).
"""
from __future__ import annotations

from typing import Any

from . import resolve
from .errors import KernelNotFound, SchemeNotFound
from .kernels.base import CAPABILITIES, SCHEME_CAPABILITIES, Kernel, kernel_instance
from .plugin.manager import PluginRecord, get_manager
from .quantization.observer import Observer
from .quantization.planner import Planner
from .quantization.quantizer import Quantizer
from .tensor import QTensor


def list_schemes() -> list[str]:
    """Names accepted as ``scheme=``: the installed schemes (encodings) and planners (``mixed``)."""
    regs = get_manager().registries()
    return sorted({*regs["scheme"], *regs["planner"]})


def list_planners() -> list[str]:
    """Names of the installed planners (``mixed``): they choose a scheme per tensor and never decode."""
    return sorted(get_manager().registries()["planner"])


def list_observers() -> list[str]:
    return sorted(get_manager().registries()["observer"])


def list_kernels() -> list[str]:
    """Names of kernels that can run here (installed and available)."""
    return sorted(n for n, cls in get_manager().registries()["kernel"].items() if cls.available())


def scheme_class(name: str) -> type[Quantizer] | type[Planner]:
    """The class behind ``scheme=name``: a scheme, else a planner (``qcore.SchemeNotFound`` if neither)."""
    regs = get_manager().registries()
    if not isinstance(name, str):
        raise TypeError(f"scheme name must be a string, got {type(name).__name__}")
    cls = regs["scheme"].get(name) or regs["planner"].get(name)
    if cls is None:
        raise SchemeNotFound(f"no scheme named {name!r} is installed; installed schemes: {', '.join(list_schemes()) or 'none'}")
    return cls


def get_quantizer(name: str, **options) -> Quantizer | Planner:
    """An instance of the scheme ``name`` — or of the planner ``name`` (``mixed``), which is used the same way
    (``quantize(x)``) — ``qcore.SchemeNotFound`` if no plugin provides it.

    ``kernel=`` (a name, a :class:`qcore.Kernel` or None) is resolved here and passed down as an instance.
    """
    cls = scheme_class(name)
    options["kernel"] = get_kernel(options.get("kernel"))
    return cls(**options)


def get_observer(name: str, **options) -> Observer:
    """An instance of the observer ``name``; ``kernel=`` is resolved here as in :func:`get_quantizer`."""
    cls = get_manager().get("observer", name)
    options["kernel"] = get_kernel(options.get("kernel"))
    return cls(**options)


def get_kernel(name: str | Kernel | None = None, *, capability: str | None = None) -> Kernel:
    """A kernel (docs/contracts.md §1).

    * ``name`` given: that kernel (``"numpy"`` is the reference of every capability); with ``capability``, it
      must declare it.
    * ``capability`` given: the available kernel of highest priority that declares it (``"affine"``,
      ``"codebook"``, ``"histogram"``, ``"kmeans_fit"``, ``"int8_gemm"``, ``"lowbit_gemm"``, ``"qconv2d"``).
    * neither: the available kernel of highest priority among those declaring what schemes and observers use
      (``affine``, ``codebook``, ``histogram``, ``kmeans_fit``): ``cython``, else ``numpy``.

    :raises qcore.KernelNotFound: an unknown name, a kernel whose extension cannot run here, a kernel without
        the capability, no available kernel with it, or an unknown capability name
    """
    if isinstance(name, Kernel):
        if capability is not None and not name.supports(_capability(capability)):
            raise KernelNotFound(f"kernel {name.name!r} does not declare the capability {capability!r} "
                                 f"(it declares {', '.join(sorted(name.capabilities)) or 'none'})")
        return name
    manager = get_manager()
    if name is None:
        return manager.memo(("kernel", capability), lambda: _default_kernel(manager, capability))
    cls = manager.get("kernel", name)
    if not cls.available():
        raise KernelNotFound(f"kernel {name!r} is installed but cannot run here (its extension did not load)")
    if capability is not None and not cls.supports(_capability(capability)):
        raise KernelNotFound(f"kernel {name!r} does not declare the capability {capability!r} "
                             f"(it declares {', '.join(sorted(cls.capabilities)) or 'none'})")
    return kernel_instance(cls)


def _capability(capability: str) -> str:
    if capability not in CAPABILITIES:
        raise KernelNotFound(f"no kernel capability is named {capability!r}; capabilities: {', '.join(sorted(CAPABILITIES))}")
    return capability


def _default_kernel(manager, capability: str | None) -> Kernel:
    kernels = manager.registries()["kernel"]
    need = SCHEME_CAPABILITIES if capability is None else {_capability(capability)}
    usable = [cls for cls in kernels.values() if cls.available() and need <= cls.capabilities]
    if not usable:
        what = "what schemes use (" + ", ".join(sorted(need)) + ")" if capability is None else f"the capability {capability!r}"
        raise KernelNotFound(f"no available kernel declares {what}; installed kernels: {', '.join(sorted(kernels)) or 'none'}")
    return kernel_instance(max(usable, key=lambda c: (c.priority, c.name)))


def plugins(all: bool = False) -> list[PluginRecord]:
    """The registered plugins as records (distribution, version, hooks, names provided): what ``qcore plugins``
    prints.  Like the command, third-party plugins only unless ``all=True`` (built-ins too)."""
    recs = get_manager().records()
    return [r for r in recs if all or not r.builtin]


def quantize(x, scheme: str = "linear", **options: Any) -> QTensor:
    """Shorthand for ``get_quantizer(scheme, **options).quantize(x)``."""
    return get_quantizer(scheme, **options).quantize(x)


def provider_of(kind: str, name: str) -> str:
    """``"distribution version"`` of the plugin providing ``name`` of ``kind`` (for listings; ``"?"`` if unknown)."""
    rec = get_manager().owner(kind, name)
    return f"{rec.distribution} {rec.version}" if rec else "?"


def _observer_class(name: str) -> type[Observer]:
    return get_manager().get("observer", name)


def _decoder(scheme: str, **options) -> Quantizer:
    """The quantizer that decodes a stored tensor: schemes only (a planner never decodes)."""
    cls = get_manager().get("scheme", scheme)
    options["kernel"] = get_kernel(options.get("kernel"))
    return cls(**options)


resolve.install(kernel=get_kernel, observer_class=_observer_class, quantizer=_decoder)
