"""Entry-point loading and the registries of schemes, observers and kernels.

Loading is lazy (on first registry use, never at ``import qcore``), happens once, and goes through
``importlib.metadata`` with our own loop rather than ``pluggy.load_setuptools_entrypoints`` so that:

* a plugin that fails to import, has a misspelled ``qcore_*`` hook, or whose hook raises is skipped whole
  with a one-line warning naming its distribution, version and the error (``QCORE_STRICT_PLUGINS=1`` turns
  that into :class:`PluginError`); a hook's item that is not a subclass of the right base class is skipped;
* each hook implementation is called on its own, so one broken plugin never takes down the others;
* two plugins that provide the same name raise :class:`PluginError` naming both distributions;
* ``QCORE_LOAD_PLUGINS`` (allow-list of distribution names; empty string: built-ins only) and
  ``QCORE_DISABLE_PLUGINS`` (deny-list of distribution names) choose which third-party distributions load.
  The built-in plugins (distribution ``qcore``) always load.  ``PluginManager(third_party=False)`` loads the
  built-ins only (the isolated registry of ``qcore.testing``).

The plugin author's guide, docs/plugins.md, documents these rules.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata as metadata
import os
import re
import threading
import warnings
from typing import Any

import pluggy

from ..errors import KernelNotFound, PluginError, SchemeNotFound
from ..kernels.base import Kernel
from ..quantization.observer import Observer
from ..quantization.quantizer import Quantizer
from . import hookspecs

ENTRY_POINT_GROUP = "qcore"
BUILTIN_DISTRIBUTION = "qcore"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of plugin class: its registry name, the hook that returns it, its base class, its not-found error."""

    name: str  # "scheme": what listings and errors call it
    hook: str  # the hook spec in qcore/plugin/hookspecs.py
    base: type  # every class the hook returns must subclass it
    not_found: type  # raised by PluginManager.get for an unknown name

    @property
    def plural(self) -> str:
        """The :class:`PluginRecord` field listing a plugin's names of this kind (``"schemes"``)."""
        return self.name + "s"


#: the kind <-> hook table, written once (listings, the conformance kit and qcore.testing use it too)
KINDS: tuple[Kind, ...] = (
    Kind("scheme", "qcore_quantizers", Quantizer, SchemeNotFound),
    Kind("observer", "qcore_observers", Observer, SchemeNotFound),
    Kind("kernel", "qcore_kernels", Kernel, KernelNotFound),
)
KIND = {k.name: k for k in KINDS}
KIND_OF_HOOK = {k.hook: k for k in KINDS}


class PluginWarning(UserWarning):
    """A plugin was skipped because it failed to import or its hook raised."""


def _normalize(name: str) -> str:
    """PEP 503 normalisation, so ``QCore_Foo`` and ``qcore-foo`` name the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {_normalize(v.strip()) for v in value.split(",") if v.strip()}


def _strict() -> bool:
    return os.environ.get("QCORE_STRICT_PLUGINS", "").strip().lower() not in ("", "0", "false", "no")


@dataclasses.dataclass
class PluginRecord:
    """One registered plugin: what ``qcore plugins`` prints."""

    name: str  # entry-point name (or the name given to register())
    distribution: str
    version: str
    builtin: bool
    hooks: list[str] = dataclasses.field(default_factory=list)
    schemes: list[str] = dataclasses.field(default_factory=list)
    observers: list[str] = dataclasses.field(default_factory=list)
    kernels: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PluginManager:
    """Wraps a ``pluggy.PluginManager`` with qcore's loading rules and its three registries."""

    def __init__(self, autoload: bool = True, entry_points=None, third_party: bool = True):
        """
        :param autoload: load the ``qcore`` entry points (on first registry use); False: nothing is loaded
            automatically, only what :meth:`register` adds.
        :param entry_points: a callable returning entry points (tests pass fakes); default: the ``qcore``
            group of :mod:`importlib.metadata`.
        :param third_party: False loads only the built-in plugins (distribution ``qcore``), whatever is
            installed and whatever ``QCORE_LOAD_PLUGINS`` says: the isolated manager of plugin tests.
        """
        self.autoload = autoload
        self.third_party = third_party
        self._entry_points = entry_points or (lambda: metadata.entry_points(group=ENTRY_POINT_GROUP))
        #: one line per plugin skipped (failed import, raising hook, bad class), in the order they happened
        self.failures: list[str] = []
        self._lock = threading.RLock()
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}  # plugin name -> record
        self._loaded = False
        self._registries: dict[str, dict[str, type]] | None = None
        self._owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
        self._skipped: set[str] = set()  # plugins one of whose hooks raised

    # -- loading -----------------------------------------------------------------------------------
    def _fail(self, what: str) -> None:
        if what not in self.failures:
            self.failures.append(what)
        if _strict():
            raise PluginError(what)
        warnings.warn(what + " (skipped; set QCORE_STRICT_PLUGINS=1 to make this an error)", PluginWarning, stacklevel=4)

    def load(self) -> None:
        """Load entry points once (a no-op after the first call or with autoload off)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self.autoload:
                self._load_entry_points()
            self._loaded = True
            self._registries = None

    def _load_entry_points(self) -> None:
        allow = _env_list("QCORE_LOAD_PLUGINS")
        deny = _env_list("QCORE_DISABLE_PLUGINS") or set()
        seen_dists: set[tuple[str, str]] = set()
        for ep in self._entry_points():
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
            version = dist.version if dist is not None else "?"
            builtin = _normalize(dist_name) == BUILTIN_DISTRIBUTION
            if not builtin:
                if not self.third_party:
                    continue
                if allow is not None and _normalize(dist_name) not in allow:
                    continue
                if _normalize(dist_name) in deny:
                    continue
            key = (dist_name, ep.name)
            if key in seen_dists:  # the same distribution found twice on sys.path
                continue
            seen_dists.add(key)
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure skips the plugin
                self._fail(f"qcore plugin {ep.name!r} from {dist_name} {version} failed to import: {type(exc).__name__}: {exc}")
                continue
            try:
                self._register(plugin, ep.name, dist_name, version, builtin)
            except PluginError as exc:  # e.g. a misspelled hook (check_pending): this plugin only is skipped
                self._fail(str(exc))

    def _register(self, plugin: object, name: str, distribution: str, version: str, builtin: bool) -> None:
        if name in self._records:
            prev = self._records[name]
            if self._pm.get_plugin(name) is plugin:
                return
            name = f"{distribution}:{name}"
        if self._pm.is_registered(plugin):
            # One module behind several entry points: register once, remember every name.
            return
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            raise PluginError(f"qcore plugin {name!r} from {distribution} {version} is invalid: {exc}") from exc
        hooks = [impl.name for impl in self._pm.get_hookcallers(plugin) or []]
        self._records[name] = PluginRecord(name, distribution, version, builtin, hooks=sorted(hooks))
        self._registries = None

    # -- in-process plugins (tests, notebooks) ------------------------------------------------------
    def register(self, plugin: object, name: str | None = None, distribution: str = "<in-process>", version: str = "0") -> str:
        """Register a plugin object directly (no entry point).  Returns the name it is registered under."""
        with self._lock:
            self.load()
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin):x}"
            if self._pm.is_registered(plugin):
                raise PluginError(
                    f"this plugin object is already registered as {self._pm.get_name(plugin)!r} "
                    f"(an installed plugin? test it with entry-point loading off: qcore.testing.isolated_plugins)"
                )
            if name in self._records:
                raise PluginError(f"a plugin named {name!r} is already registered")
            self._register(plugin, name, distribution, version, builtin=False)
            try:
                self.registries()
            except Exception:
                self.unregister(name)
                raise
            return name

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self._pm.get_plugin(name)
            if plugin is not None:
                self._pm.unregister(plugin)
            self._records.pop(name, None)
            self._registries = None

    # -- registries --------------------------------------------------------------------------------
    def registries(self) -> dict[str, dict[str, type]]:
        """``{"scheme": {...}, "observer": {...}, "kernel": {...}}`` built by calling each hook impl alone.

        A plugin any of whose hooks raises is skipped whole (none of its names are registered, and it is not
        listed by :meth:`records`), so a half-working plugin never provides half of its names.
        """
        self.load()
        regs = self._registries
        if regs is not None:
            return regs
        with self._lock:
            if self._registries is not None:
                return self._registries
            regs = {kind.name: {} for kind in KINDS}
            owners: dict[tuple[str, str], str] = {}
            for record in self._records.values():
                record.schemes, record.observers, record.kernels = [], [], []
            # 1. call every implementation on its own (registration order, oldest first: built-ins first)
            returned: list[tuple[str, str, str, list]] = []
            skipped: set[str] = set()
            for kind in KINDS:
                hook_name = kind.hook
                caller = getattr(self._pm.hook, hook_name)
                for impl in caller.get_hookimpls():
                    record = self._records.get(impl.plugin_name)
                    dist = record.distribution if record else impl.plugin_name
                    try:
                        classes = list(impl.function() or ())
                    except Exception as exc:  # noqa: BLE001
                        skipped.add(impl.plugin_name)
                        self._fail(
                            f"qcore plugin {impl.plugin_name!r} from {dist} {record.version if record else '?'}: "
                            f"hook {hook_name} raised {type(exc).__name__}: {exc}"
                        )
                        continue
                    returned.append((impl.plugin_name, hook_name, kind.name, classes))
            # 2. register the names of the plugins that did not fail, refusing collisions
            for plugin_name, hook_name, kind, classes in returned:
                if plugin_name in skipped:
                    continue
                record = self._records.get(plugin_name)
                dist = record.distribution if record else plugin_name
                base = KIND[kind].base
                for cls in classes:
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        self._fail(
                            f"qcore plugin {plugin_name!r} from {dist}: {hook_name} returned {cls!r}, "
                            f"which is not a subclass of qcore.{base.__name__}"
                        )
                        continue
                    cname = getattr(cls, "name", None)
                    if not isinstance(cname, str) or not cname:
                        self._fail(f"qcore plugin {plugin_name!r} from {dist}: {hook_name} returned {cls!r} without a string `name`")
                        continue
                    if cname in regs[kind] and regs[kind][cname] is not cls:
                        other = self._records.get(owners[(kind, cname)])
                        other_dist = other.distribution if other else owners[(kind, cname)]
                        raise PluginError(
                            f"two plugins provide the {kind} {cname!r}: {other_dist} "
                            f"(plugin {owners[(kind, cname)]!r}) and {dist} (plugin {plugin_name!r}); "
                            f"uninstall one or exclude it with QCORE_DISABLE_PLUGINS"
                        )
                    regs[kind][cname] = cls
                    owners[(kind, cname)] = plugin_name
                    if record is not None:
                        getattr(record, kind + "s").append(cname)
            self._skipped = skipped
            self._owners = owners
            self._registries = regs
            return regs

    def get(self, kind: str, name: str) -> type:
        regs = self.registries()[kind]
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
        try:
            return regs[name]
        except KeyError:
            installed = ", ".join(sorted(regs)) or "none"
            raise KIND[kind].not_found(f"no {kind} named {name!r} is installed; installed {kind}s: {installed}") from None

    def owner(self, kind: str, name: str) -> PluginRecord | None:
        self.registries()
        plugin = self._owners.get((kind, name))
        return self._records.get(plugin) if plugin else None

    def records(self) -> list[PluginRecord]:
        """The registered plugins, in registration order, less those skipped because a hook raised."""
        self.registries()
        return [r for name, r in self._records.items() if name not in self._skipped]

    @property
    def pluggy_manager(self) -> pluggy.PluginManager:
        return self._pm


_MANAGER: PluginManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use; entry points load on first registry use)."""
    global _MANAGER
    if _MANAGER is None:
        with _MANAGER_LOCK:
            if _MANAGER is None:
                _MANAGER = PluginManager()
    return _MANAGER


def reset_manager(autoload: bool = True, entry_points=None, third_party: bool = True) -> PluginManager:
    """Replace the process-wide manager (tests; after changing the QCORE_* environment variables)."""
    global _MANAGER
    with _MANAGER_LOCK:
        _MANAGER = PluginManager(autoload=autoload, entry_points=entry_points, third_party=third_party)
    return _MANAGER


def set_manager(manager: PluginManager | None) -> PluginManager | None:
    """Install ``manager`` as the process-wide one; returns the previous (to restore it after a test)."""
    global _MANAGER
    with _MANAGER_LOCK:
        previous, _MANAGER = _MANAGER, manager
    return previous

