"""What every conformance check shares: results, the runner, and temporary registration of the tested class."""
from __future__ import annotations

import contextlib
import dataclasses
import traceback
import types
from typing import Any, Callable, Iterable, Iterator

from ..plugin import manager as _mgr


class ConformanceError(AssertionError):
    """One or more conformance checks failed; ``results`` holds every :class:`CheckResult` of the run."""

    def __init__(self, message: str, results: list["CheckResult"]):
        super().__init__(message)
        self.results = results

    @property
    def failed(self) -> list["CheckResult"]:
        return [r for r in self.results if r.status == "failed"]


class SkipCheck(Exception):
    """Raised inside a check that does not apply (the reason is reported; the check does not fail)."""


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check on one plugin class.

    ``status`` is ``"passed"``, ``"failed"``, ``"skipped"`` (did not apply), ``"xfail"`` (failed, and
    declared in ``expected_failed_checks``) or ``"xpass"`` (declared as failing, but passed).
    """

    check: str
    target: str
    status: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.check} [{self.target}]: {self.status}" + (f": {self.message}" if self.message else "")


@dataclasses.dataclass(frozen=True)
class Check:
    """A named check bound to nothing yet: ``check(obj)`` runs it on a class or instance and raises
    ``AssertionError`` (message starting with the check's name) when it fails, :class:`SkipCheck` when it does
    not apply."""

    name: str
    func: Callable[[Any], None]
    kind: str  # a kind of qcore/plugin/manager.py's KINDS: "scheme", "observer", "kernel" or "planner"

    def __call__(self, obj) -> None:
        spec_cls = obj if isinstance(obj, type) else type(obj)
        with registered(self.kind, spec_cls):
            try:
                self.func(obj)
            except AssertionError as exc:
                raise AssertionError(f"{self.name} failed for {describe(obj)}: {exc}") from None


def describe(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    kind = "class" if isinstance(obj, type) else "instance"
    return f"{cls.__module__}.{cls.__qualname__} {kind} (name {getattr(cls, 'name', '?')!r})"


def _exc_line(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


def run_checks(obj, checks: Iterable[Check], *, expected_failed_checks: dict[str, str] | None, on_fail: str | None,
               kind_label: str) -> list[CheckResult]:
    """Run every check, collecting results; with ``on_fail="raise"`` raise :class:`ConformanceError` listing
    every failure at the end (not only the first)."""
    if on_fail not in ("raise", "warn", None):
        raise ValueError(f"on_fail must be 'raise', 'warn' or None, got {on_fail!r}")
    expected = dict(expected_failed_checks or {})
    checks = list(checks)
    unknown = set(expected) - {c.name for c in checks}
    if unknown:
        raise ValueError(f"expected_failed_checks names unknown check(s): {', '.join(sorted(unknown))}")
    target = describe(obj)
    results = []
    for check in checks:
        try:
            check(obj)
        except SkipCheck as exc:
            results.append(CheckResult(check.name, target, "skipped", str(exc)))
            continue
        except AssertionError as exc:
            msg = str(exc)
        except Exception as exc:  # noqa: BLE001 - any other exception is a failure of the plugin under test
            msg = f"{check.name} failed for {target}: {_exc_line(exc)}"
        else:
            status = "xpass" if check.name in expected else "passed"
            results.append(CheckResult(check.name, target, status, expected.get(check.name, "")))
            continue
        if check.name in expected:
            results.append(CheckResult(check.name, target, "xfail", f"{expected[check.name]} ({msg})"))
        else:
            results.append(CheckResult(check.name, target, "failed", msg))
    failed = [r for r in results if r.status == "failed"]
    if failed and on_fail == "raise":
        lines = "\n".join(f"  - {r.message}" for r in failed)
        raise ConformanceError(f"{len(failed)} of {len(results)} {kind_label} conformance checks failed:\n{lines}", results)
    if failed and on_fail == "warn":
        import warnings

        for r in failed:
            warnings.warn(r.message, UserWarning, stacklevel=3)
    return results


@contextlib.contextmanager
def registered(kind: str, cls: type) -> Iterator[None]:
    """Make ``cls`` findable by name (``qcore.get_quantizer(cls.name)``, files, observers) while checks run.

    Nothing changes when the current registry already maps the name to this very class.  A name that is not
    registered is added as an in-process plugin on the current manager and removed afterwards.  A name that
    some *other* class holds (an installed copy of the plugin under development, say) is tested in an
    isolated manager with the built-in plugins only, so the checks never run the wrong class.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        yield  # the class contract check reports this
        return
    hook = _mgr.KIND[kind].hook
    plugin = types.SimpleNamespace(**{hook: _hookimpl(lambda: [cls], hook)})
    manager = _mgr.get_manager()
    try:
        current = manager.registries()[kind].get(name)
    except Exception:  # noqa: BLE001 - a broken environment: fall back to an isolated manager
        current = object()
    if current is cls:
        yield
        return
    if current is None:
        reg = manager.register(plugin, name=f"qcore.testing:{kind}:{name}")
        try:
            yield
        finally:
            manager.unregister(reg)
        return
    isolated = _mgr.PluginManager(third_party=False)
    previous = _mgr.set_manager(isolated)
    try:
        if isolated.registries()[kind].get(name) is not cls:
            isolated.register(plugin, name=f"qcore.testing:{kind}:{name}")
        yield
    finally:
        _mgr.set_manager(previous)


def _hookimpl(func, name):
    from ..plugin.hookspecs import hookimpl

    func.__name__ = name
    return hookimpl(func)
