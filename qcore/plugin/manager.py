"""Entry-point loading and the registries of schemes, observers, kernels and planners.

Loading is lazy (on first registry use, never at ``import qcore``), happens once, and goes through
``importlib.metadata`` with our own loop rather than ``pluggy.load_setuptools_entrypoints`` so that:

* a plugin that fails to import, has a misspelled ``qcore_*`` hook, or whose hook raises is skipped whole
  with a one-line warning naming its distribution, version and the error (``QCORE_STRICT_PLUGINS=1`` turns
  that into :class:`PluginError`); a hook's item that is not a subclass of the right base class is skipped;
* pluggy calls each plugin's hooks on their own (``subset_hook_caller``), so one broken plugin never takes
  down the others; a plugin left out by the allow/deny lists or whose hook raised is blocked in pluggy
  (``set_blocked``, as pytest's ``-p no:NAME``);
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
import types
import warnings
from typing import Any

import pluggy

from .. import isa
from ..errors import KernelNotFound, ObserverNotFound, PlannerNotFound, PluginError, SchemeNotFound
from ..kernels.base import Kernel
from ..quantization.observer import Observer
from ..quantization.planner import Planner
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
    Kind("observer", "qcore_observers", Observer, ObserverNotFound),
    Kind("kernel", "qcore_kernels", Kernel, KernelNotFound),
    Kind("planner", "qcore_planners", Planner, PlannerNotFound),
)
#: kinds whose names share one namespace (``scheme="mixed"`` may name a scheme or a planner)
SHARED_NAMES = {"scheme": ("planner",), "planner": ("scheme",)}
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
    planners: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PluginManager:
    """Wraps a ``pluggy.PluginManager`` with qcore's loading rules and its registries (one per :data:`KINDS`)."""

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
        self._proxies: dict[int, tuple[object, types.ModuleType]] = {}  # see _hashable
        self._loaded = False
        self._registries: dict[str, dict[str, type]] | None = None
        self._owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
        self._memo: dict = {}  # key -> (the registries it was computed from, value): see memo()

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
            # a mistyped QCORE_ISA is an error here, before any kernel loads: never a kernel silently left out
            isa.check()
            if self.autoload:
                self._load_entry_points()
            self._loaded = True
            self._registries = None

    def _load_entry_points(self) -> None:
        """Import and register every wanted entry point; the unwanted ones are blocked in pluggy, unimported.

        Plugin names are entry-point names, the built-ins' first; a later entry point reusing a name is registered
        as ``"<distribution>:<name>"``, so blocking one never blocks another.
        """
        allow = _env_list("QCORE_LOAD_PLUGINS")
        deny = _env_list("QCORE_DISABLE_PLUGINS") or set()
        found = []
        for ep in self._entry_points():
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
            version = dist.version if dist is not None else "?"
            found.append((ep, dist_name, version, _normalize(dist_name) == BUILTIN_DISTRIBUTION))
        found.sort(key=lambda f: not f[3])  # built-ins first (stable: otherwise importlib.metadata's order)
        loaded: set[tuple[str, str]] = set()
        taken: set[str] = set()
        for ep, dist_name, version, builtin in found:
            if (dist_name, ep.name) in loaded:  # the same distribution found twice on sys.path
                continue
            loaded.add((dist_name, ep.name))
            name = ep.name if ep.name not in taken else f"{dist_name}:{ep.name}"
            taken.add(name)
            if not builtin and (not self.third_party or (allow is not None and _normalize(dist_name) not in allow)
                                or _normalize(dist_name) in deny):
                self._pm.set_blocked(name)  # as pytest's `-p no:NAME`: pluggy refuses it from now on
            if self._pm.is_blocked(name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure skips the plugin
                self._fail(f"qcore plugin {ep.name!r} from {dist_name} {version} failed to import: {type(exc).__name__}: {exc}")
                continue
            try:
                self._register(plugin, name, dist_name, version, builtin)
            except PluginError as exc:  # e.g. a misspelled hook (check_pending): this plugin only is skipped
                self._fail(str(exc))

    def _hashable(self, plugin: object) -> object:
        """``plugin``, or for an unhashable object (a ``types.SimpleNamespace``) one module holding its attributes:
        pluggy's ``subset_hook_caller`` keeps plugins in a set."""
        try:
            hash(plugin)
            return plugin
        except TypeError:
            pass
        entry = self._proxies.get(id(plugin))
        if entry is None:
            proxy = types.ModuleType(str(getattr(plugin, "__name__", "qcore-plugin")))
            proxy.__dict__.update(vars(plugin))
            entry = self._proxies[id(plugin)] = (plugin, proxy)  # the original kept alive: its id stays unique
        return entry[1]

    def _register(self, plugin: object, name: str, distribution: str, version: str, builtin: bool) -> None:
        plugin = self._hashable(plugin)
        if name in self._records:
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
            if self._pm.is_registered(self._hashable(plugin)):
                raise PluginError(
                    f"this plugin object is already registered as {self._pm.get_name(self._hashable(plugin))!r} "
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
            if self._pm.is_blocked(name):  # blocked after its hook raised: the name may be used again
                self._pm.unblock(name)
            self._records.pop(name, None)
            self._registries = None

    # -- registries --------------------------------------------------------------------------------
    def registries(self) -> dict[str, dict[str, type]]:
        """``{"scheme": {...}, "observer": {...}, "kernel": {...}, "planner": {...}}``: name -> class per kind.

        pluggy calls the hooks, one plugin at a time (``subset_hook_caller`` without the other plugins) so
        that one broken plugin never takes the others down.  A plugin any of whose hooks raises is
        unregistered and blocked in pluggy (``set_blocked``): skipped whole — none of its names are
        registered and :meth:`records` does not list it — so a half-working plugin never provides half of
        its names.
        """
        self.load()
        regs = self._registries
        if regs is not None:
            return regs
        with self._lock:
            if self._registries is not None:
                return self._registries
            # 1. call every plugin's implementations on their own (registration order: built-ins first)
            returned: list[tuple[str, Kind, list]] = []
            for kind in KINDS:
                impls = getattr(self._pm.hook, kind.hook).get_hookimpls()
                for impl in impls:
                    if not self._pm.is_registered(impl.plugin):  # unregistered below: a hook of it raised
                        continue
                    others = [i.plugin for i in impls if i.plugin is not impl.plugin]
                    try:
                        results = self._pm.subset_hook_caller(kind.hook, remove_plugins=others)()
                        classes = [c for r in results for c in (r or ())]
                    except Exception as exc:  # noqa: BLE001 - one plugin's failure skips that plugin only
                        record = self._records.get(impl.plugin_name)
                        self._pm.unregister(impl.plugin)
                        self._pm.set_blocked(impl.plugin_name)
                        self._fail(
                            f"qcore plugin {impl.plugin_name!r} from {record.distribution if record else impl.plugin_name} "
                            f"{record.version if record else '?'}: hook {kind.hook} raised {type(exc).__name__}: {exc}"
                        )
                        continue
                    returned.append((impl.plugin_name, kind, classes))
            # 2. register the names of the plugins that did not fail, refusing collisions
            regs = {kind.name: {} for kind in KINDS}
            owners: dict[tuple[str, str], str] = {}
            for record in self._records.values():
                for kind in KINDS:
                    setattr(record, kind.plural, [])
            for plugin_name, kind, classes in returned:
                if self._pm.is_blocked(plugin_name):
                    continue
                record = self._records.get(plugin_name)
                dist = record.distribution if record else plugin_name
                for cls in classes:
                    if not (isinstance(cls, type) and issubclass(cls, kind.base)):
                        self._fail(
                            f"qcore plugin {plugin_name!r} from {dist}: {kind.hook} returned {cls!r}, "
                            f"which is not a subclass of qcore.{kind.base.__name__}"
                        )
                        continue
                    cname = getattr(cls, "name", None)
                    if not isinstance(cname, str) or not cname:
                        self._fail(f"qcore plugin {plugin_name!r} from {dist}: {kind.hook} returned {cls!r} without a string `name`")
                        continue
                    # schemes and planners share one namespace: both are what `scheme=` names
                    clash = [k for k in (kind.name, *SHARED_NAMES.get(kind.name, ())) if cname in regs[k] and regs[k][cname] is not cls]
                    if clash:
                        owner = owners[(clash[0], cname)]
                        other = self._records.get(owner)
                        raise PluginError(
                            f"two plugins provide the {kind.name if clash[0] == kind.name else 'scheme name'} {cname!r}: "
                            f"{other.distribution if other else owner} (plugin {owner!r}) and {dist} (plugin {plugin_name!r}); "
                            f"uninstall one or exclude it with QCORE_DISABLE_PLUGINS"
                        )
                    regs[kind.name][cname] = cls
                    owners[(kind.name, cname)] = plugin_name
                    if record is not None:
                        getattr(record, kind.plural).append(cname)
            self._owners = owners
            self._registries = regs
            return regs

    def memo(self, key, compute):
        """A value derived from the registries (e.g. the default kernel of a capability), computed once and
        kept until the registries change (a plugin registered or removed): a lookup of a few dict reads."""
        regs = self._registries
        if regs is None:
            regs = self.registries()
        hit = self._memo.get(key)
        if hit is not None and hit[0] is regs:
            return hit[1]
        value = compute()
        self._memo[key] = (regs, value)
        return value

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
        return [r for name, r in self._records.items() if not self._pm.is_blocked(name)]

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

