"""The conformance kit for qcore plugins, in the spirit of scikit-learn's ``check_estimator``.

::

    from qcore.testing import check_quantizer, check_observer, check_kernel, check_planner
    check_quantizer(MyScheme)            # a class (tried with several option sets) or a configured instance
    check_observer(MyObserver)
    check_kernel(MyKernel)               # bit-for-bit against the ``numpy`` reference kernel
    check_planner(MyPlanner)             # measure / plan within capacity / quantize to a candidate scheme

Each runs every check, then raises :class:`ConformanceError` (an ``AssertionError``) listing each failed
check by name with what was expected; it returns the list of :class:`CheckResult` otherwise.  A check that
is known to fail is declared with ``expected_failed_checks={"check_name": "reason"}``.

With pytest, one test per check::

    from qcore.testing import parametrize_with_checks

    @parametrize_with_checks([MyScheme, MyObserver])
    def test_conformance(obj, check):
        check(obj)

The pytest plugin (``qcore.testing.pytest_plugin``, loaded automatically through the ``pytest11`` entry point)
adds fixtures that register an in-process plugin for one test with third-party entry points off.
Outside pytest, :func:`isolated_plugins` does the same as a context manager.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any, Callable, Iterable, Iterator

from ..plugin import manager as _mgr
from ._common import Check, CheckResult, ConformanceError, SkipCheck, run_checks
from ._kernel import KERNEL_CHECKS, kernel_checks
from ._observer import OBSERVER_CHECKS, observer_checks
from ._planner import PLANNER_CHECKS, planner_checks
from ._quantizer import QUANTIZER_CHECKS, quantizer_checks

__all__ = [
    "check_quantizer", "check_observer", "check_kernel", "check_planner", "parametrize_with_checks", "checks_for",
    "isolated_plugins", "plugin_from_classes",
    "Check", "CheckResult", "ConformanceError", "SkipCheck",
    "QUANTIZER_CHECKS", "OBSERVER_CHECKS", "KERNEL_CHECKS", "PLANNER_CHECKS",
]

#: kind -> the checks of that kind (the kinds themselves come from the registry's table, qcore/plugin/manager.py)
_CHECKS_OF = {"scheme": quantizer_checks, "observer": observer_checks, "kernel": kernel_checks, "planner": planner_checks}


def _kind_of(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    if isinstance(cls, type):
        for kind in _mgr.KINDS:
            if issubclass(cls, kind.base):
                return kind.name
    bases = ", ".join(f"qcore.{k.base.__name__}" for k in _mgr.KINDS)
    raise TypeError(f"expected a subclass or instance of one of {bases}, got {obj!r}")


def checks_for(obj) -> list[Check]:
    """The checks that apply to ``obj`` (a scheme, observer, kernel or planner class or instance), in run order."""
    return _CHECKS_OF[_kind_of(obj)](obj)


def _check(obj, kind, expected_failed_checks, on_fail) -> list[CheckResult]:
    if _kind_of(obj) != kind:
        raise TypeError(f"expected a qcore.{_mgr.KIND[kind].base.__name__} subclass or instance, got {obj!r}")
    return run_checks(obj, checks_for(obj), expected_failed_checks=expected_failed_checks, on_fail=on_fail,
                      kind_label=kind)


def check_quantizer(quantizer, *, expected_failed_checks: dict[str, str] | None = None, on_fail: str | None = "raise") -> list[CheckResult]:
    """Check a scheme class (tried with its defaults, several bit widths, each granularity) or a configured
    instance (its own options) against qcore's contract.

    Checks: class contract, default construction, option validation, round trip, error falling with bits,
    code dtype and range, QTensor fields and ``nbytes``, determinism, input left unchanged, input forms
    (float64/float16/int/list/Fortran/strided), NaN/Inf refused, empty and 0-d input, constant input,
    packing round trip, rebuild from stored options (and pickling), file round trip (when qcore has the model
    layer), calibration, thread safety.  See ``qcore.testing.QUANTIZER_CHECKS``.

    :param expected_failed_checks: ``{check_name: reason}`` for known failures (reported as ``"xfail"``).
    :param on_fail: ``"raise"`` (default): :class:`ConformanceError` listing every failure; ``"warn"``: one
        warning per failure; ``None``: only return the results.
    :return: one :class:`CheckResult` per check.
    """
    return _check(quantizer, "scheme", expected_failed_checks, on_fail)


def check_observer(observer, *, expected_failed_checks: dict[str, str] | None = None, on_fail: str | None = "raise") -> list[CheckResult]:
    """Check an observer class or instance: per-tensor and per-channel ranges, NaN/empty batches, reset,
    determinism, bounded memory, use by the ``linear`` scheme, threads.  Same arguments as :func:`check_quantizer`."""
    return _check(observer, "observer", expected_failed_checks, on_fail)


def check_kernel(kernel, *, expected_failed_checks: dict[str, str] | None = None, on_fail: str | None = "raise") -> list[CheckResult]:
    """Check a kernel class or instance bit for bit against the ``numpy`` reference kernel (min/max,
    quantize with ties and clamping, dequantize, packing at 1..8 bits, NaN refusal, threads).  A kernel whose
    ``available()`` is False has its checks skipped.  Same arguments as :func:`check_quantizer`."""
    return _check(kernel, "kernel", expected_failed_checks, on_fail)


def check_planner(planner, *, expected_failed_checks: dict[str, str] | None = None, on_fail: str | None = "raise") -> list[CheckResult]:
    """Check a planner class or instance: class contract, option validation, candidate records, plans within
    capacity, ``quantize`` returning a candidate scheme's QTensor, whole-model planning and the file round trip.
    Same arguments as :func:`check_quantizer`."""
    return _check(planner, "planner", expected_failed_checks, on_fail)


def _obj_id(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(cls, "name", "") or cls.__name__
    if isinstance(obj, type):
        return name
    opts = getattr(obj, "export_options", None)
    if callable(opts):
        return name + "(" + ",".join(f"{k}={v}" for k, v in opts().items()) + ")"
    return name + "()"


def parametrize_with_checks(objs: Iterable[Any], *, expected_failed_checks: Callable[[Any], dict[str, str]] | None = None):
    """A ``pytest.mark.parametrize`` decorator over ``(obj, check)``: one test per object and check, with ids
    ``"<name>-<check_name>"``.  ``expected_failed_checks(obj)`` may return ``{check_name: reason}``: those
    tests are marked ``xfail`` with the reason.  The test body is ``check(obj)``."""
    import pytest

    params = []
    for obj in objs:
        xfails = (expected_failed_checks(obj) if expected_failed_checks else None) or {}
        for check in checks_for(obj):
            marks = [pytest.mark.xfail(reason=xfails[check.name], strict=False)] if check.name in xfails else []
            params.append(pytest.param(obj, _PytestCheck(check), id=f"{_obj_id(obj)}-{check.name}", marks=marks))
    return pytest.mark.parametrize("obj, check", params)


class _PytestCheck:
    """A check as pytest runs it: :class:`SkipCheck` becomes ``pytest.skip``."""

    def __init__(self, check: Check):
        self.check = check
        self.name = check.name

    def __call__(self, obj) -> None:
        import pytest

        try:
            self.check(obj)
        except SkipCheck as exc:
            pytest.skip(f"{self.check.name}: {exc}")

    def __repr__(self) -> str:
        return self.check.name


def plugin_from_classes(*classes, name: str | None = None) -> types.SimpleNamespace:
    """A plugin object whose hooks return ``classes`` (schemes, observers, kernels, planners sorted by base class)."""
    from ..plugin.hookspecs import hookimpl

    by_hook: dict[str, list] = {k.hook: [] for k in _mgr.KINDS}
    for cls in classes:
        by_hook[_mgr.KIND[_kind_of(cls)].hook].append(cls)
    ns = types.SimpleNamespace(__name__=name or "qcore.testing:" + ",".join(getattr(c, "name", "?") for c in classes))
    for hook, items in by_hook.items():
        if items:
            def impl(items=tuple(items)):
                return list(items)

            impl.__name__ = hook
            setattr(ns, hook, hookimpl(impl))
    return ns


@contextlib.contextmanager
def isolated_plugins(*plugins, third_party: bool = False) -> Iterator[_mgr.PluginManager]:
    """Install a fresh process-wide plugin manager for the ``with`` block and restore the previous one after.

    The fresh manager loads the built-in plugins (distribution ``qcore``) but no third-party entry points
    (``third_party=True`` loads them too, honouring ``QCORE_LOAD_PLUGINS``/``QCORE_DISABLE_PLUGINS``).
    Each of ``plugins`` — a module, a namespace with ``@qcore.hookimpl`` functions, or a scheme/observer/kernel/
    planner class — is registered in it.  Yields the manager (``.register()`` adds more).
    """
    manager = _mgr.PluginManager(third_party=third_party)
    previous = _mgr.set_manager(manager)
    try:
        for p in plugins:
            if isinstance(p, type):
                p = plugin_from_classes(p)
            manager.register(p)
        yield manager
    finally:
        _mgr.set_manager(previous)
