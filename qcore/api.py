"""The registry-facing public functions: look plugins up by name and quantize."""
from __future__ import annotations

from typing import Any

from .errors import SchemeNotFound
from .kernels.base import Kernel, kernel_instance
from .plugin.manager import PluginRecord, get_manager


def list_schemes() -> list[str]:
    return sorted(get_manager().registries()["scheme"])


def list_observers() -> list[str]:
    return sorted(get_manager().registries()["observer"])


def list_kernels() -> list[str]:
    """Names of kernels that can run here (installed and available)."""
    return sorted(n for n, cls in get_manager().registries()["kernel"].items() if cls.available())


def get_quantizer(name: str, **options):
    """An instance of the scheme ``name`` (``qcore.SchemeNotFound`` if no plugin provides it)."""
    return get_manager().get("scheme", name)(**options)


def get_observer(name: str, **options):
    return get_manager().get("observer", name)(**options)


def get_kernel(name: str | Kernel | None = None) -> Kernel:
    """A kernel: ``None`` picks the available kernel of highest priority (``cython``); ``"numpy"`` is the reference."""
    if isinstance(name, Kernel):
        return name
    kernels = get_manager().registries()["kernel"]
    if name is None:
        usable = [cls for cls in kernels.values() if cls.available()]
        if not usable:
            raise SchemeNotFound("no kernel is available; reinstall qcore")
        return kernel_instance(max(usable, key=lambda c: (c.priority, c.name)))
    cls = get_manager().get("kernel", name)
    if not cls.available():
        raise SchemeNotFound(f"kernel {name!r} is installed but cannot run here (its extension did not load)")
    return kernel_instance(cls)


def plugins(all: bool = True) -> list[PluginRecord]:
    """The registered plugins as records (distribution, version, hooks, names provided)."""
    recs = get_manager().records()
    return [r for r in recs if all or not r.builtin]


def quantize(x, scheme: str = "linear", **options: Any):
    """Shorthand for ``get_quantizer(scheme, **options).quantize(x)``."""
    return get_quantizer(scheme, **options).quantize(x)


def get_manager_records_for(kind: str, name: str) -> str:
    """``"distribution version"`` of the plugin providing ``name`` of ``kind`` (for listings)."""
    rec = get_manager().owner(kind, name)
    return f"{rec.distribution} {rec.version}" if rec else "?"
