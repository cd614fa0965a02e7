"""The conformance kit itself: a correct scheme passes, each kind of broken scheme fails the check named for
its fault, and the pytest helpers (parametrize_with_checks, the qcore_plugins fixture) work."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import qcore
from qcore.plugin import manager as mgr
from qcore.testing import (ConformanceError, check_kernel, check_observer, check_quantizer, checks_for,
                           isolated_plugins, parametrize_with_checks, plugin_from_classes)


class Grid(qcore.Quantizer):
    """A correct little scheme: symmetric uniform codes over [-max|x|, max|x|] per tensor."""

    name = "kit-grid"
    signed = True
    bits_range = (2, 8)

    def __init__(self, bits=4, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)

    def fit(self, x):
        if x.size == 0:
            return {"scale": np.ones(1, np.float32)}
        lo, hi = self.observed_range(x)
        amax = float(max(-lo.min(), hi.max()))
        return {"scale": np.array([amax / self.qmax if amax > 0 else 1.0], np.float32)}

    def encode(self, x, params):
        return np.clip(np.rint(x / params["scale"][0]), -self.qmax, self.qmax).astype(np.int8)

    def decode(self, codes, params):
        return (codes.astype(np.float32) * params["scale"][0]).astype(np.float32)


def broken(name, **methods):
    return type(f"Broken_{name}", (Grid,), {"name": f"kit-{name}", **methods})


def _shifted_encode(self, x, params):  # codes outside the declared range
    return (Grid.encode(self, x, params).astype(np.int16) + 200).astype(np.int16)


def _noisy_fit(self, x):
    p = Grid.fit(self, x)
    p["scale"] = p["scale"] * np.float32(1 + np.random.uniform(0, 1e-3))
    return p


def _mutating_fit(self, x):
    p = Grid.fit(self, x)
    x *= 1.5  # writes into the caller's array
    return p


def _racy_encode(self, x, params):
    self._scratch = x
    time.sleep(0.002)
    return Grid.encode(self, self._scratch, params)


def _lax_init(self, bits=4, observer=None, kernel=None, **options):
    Grid.__init__(self, bits, observer, kernel)  # silently drops unknown options


def _dividing_fit(self, x):
    lo, hi = self.observed_range(x)
    return {"scale": np.array([(hi.max() - lo.min()) / 2], np.float32)}  # 0 for a constant tensor


def _nan_blind_fit(self, x):
    amax = float(np.nanmax(np.abs(x))) if x.size else 1.0  # never looks for NaN/Inf
    return {"scale": np.array([amax / self.qmax if amax > 0 else 1.0], np.float32)}


BROKEN = [
    (broken("range", encode=_shifted_encode), "check_codes_in_range"),
    (broken("noisy", fit=_noisy_fit), "check_deterministic"),
    (broken("mutating", fit=_mutating_fit), "check_input_unchanged"),
    (broken("nan", self_checking=True, fit=_nan_blind_fit), "check_non_finite_rejected"),
    (broken("racy", encode=_racy_encode), "check_thread_safety"),
    (broken("lax", __init__=_lax_init), "check_options_validated"),
    (broken("divide", fit=_dividing_fit), "check_constant_input"),
]


def test_a_correct_scheme_passes():
    results = check_quantizer(Grid)
    assert {r.status for r in results} <= {"passed", "skipped"}
    assert [r.check for r in results] == [c.name for c in checks_for(Grid)]
    assert len(results) >= 15


def test_an_instance_is_checked_with_its_own_options():
    results = check_quantizer(Grid(bits=3))
    assert all(r.status in ("passed", "skipped") for r in results)


@pytest.mark.parametrize("cls, check", BROKEN, ids=[c for _, c in BROKEN])
def test_a_broken_scheme_fails_the_named_check(cls, check):
    with pytest.raises(ConformanceError) as info:
        check_quantizer(cls)
    failed = {r.check for r in info.value.failed}
    assert check in failed, f"{check} not among {failed}"
    assert check in str(info.value) and cls.name in str(info.value)
    # each failure message says which check failed and on what
    assert all(r.message.startswith(r.check) for r in info.value.failed)


def test_expected_failures_are_reported_not_raised():
    cls, check = BROKEN[1]
    results = check_quantizer(cls, expected_failed_checks={check: "nondeterministic on purpose"}, on_fail=None)
    [r] = [r for r in results if r.check == check]
    assert r.status == "xfail" and "on purpose" in r.message
    results = check_quantizer(Grid, expected_failed_checks={"check_deterministic": "not really"})
    assert [r.status for r in results if r.check == "check_deterministic"] == ["xpass"]
    with pytest.raises(ValueError, match="check_no_such"):
        check_quantizer(Grid, expected_failed_checks={"check_no_such": "?"})


def test_on_fail_none_and_warn():
    cls, check = BROKEN[0]
    results = check_quantizer(cls, on_fail=None)
    assert any(r.check == check and r.status == "failed" for r in results)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_quantizer(cls, on_fail="warn")
    assert any(check in str(w.message) for w in caught)


def test_wrong_kind_is_a_type_error():
    from qcore_plugins.observers.minmax import MinMaxObserver

    with pytest.raises(TypeError):
        check_quantizer(MinMaxObserver)
    with pytest.raises(TypeError):
        check_observer(Grid)
    with pytest.raises(TypeError):
        check_kernel(object)


def test_kit_leaves_the_registry_as_it_found_it():
    before = qcore.list_schemes()
    check_quantizer(Grid)
    assert qcore.list_schemes() == before and "kit-grid" not in before


def test_kit_tests_the_class_given_even_when_another_holds_the_name():
    """An installed copy of a plugin under development must not be what gets tested."""
    Other = type("Other", (Grid,), {"name": "kit-grid"})
    with isolated_plugins(Other):
        assert qcore.get_quantizer("kit-grid").__class__ is Other
        check_quantizer(Grid)  # rebuild-from-options would fail if it ran Other... it runs Grid
        assert qcore.get_quantizer("kit-grid").__class__ is Other


def test_broken_observer_and_kernel_fail():
    from qcore_plugins.kernels.numpy_kernel import NumpyKernel
    from qcore_plugins.observers.minmax import MinMaxObserver

    class Sloppy(MinMaxObserver):
        name = "kit-sloppy"

        def _update(self, x):
            self.lo = x.min() if self.axis is None else x.min(axis=tuple(i for i in range(x.ndim) if i != self.axis % x.ndim))
            self.hi = np.nanmax(x)  # NaN slips through, state changes before the error
            if not np.isfinite(x).all():
                raise ValueError("NaN")

    check_observer(MinMaxObserver)
    with pytest.raises(ConformanceError, match="check_observer_non_finite"):
        check_observer(Sloppy)

    class TruncatingKernel(NumpyKernel):
        name = "kit-trunc"

        def _quantize_affine(self, x3, inv_scale, zero_point, qmin, qmax, out3):
            if not np.isfinite(x3).all():
                return False
            v = np.trunc(x3 * inv_scale.reshape(1, -1, 1))  # truncation instead of round-half-to-even
            out3[...] = np.clip(v + zero_point.reshape(1, -1, 1), qmin, qmax).astype(out3.dtype)
            return True

    check_kernel(NumpyKernel)
    with pytest.raises(ConformanceError, match="check_kernel_quantize_affine"):
        check_kernel(TruncatingKernel)


def test_unavailable_kernel_is_skipped():
    from qcore_plugins.kernels.numpy_kernel import NumpyKernel

    Gone = type("Gone", (NumpyKernel,), {"name": "kit-gone", "available": classmethod(lambda cls: False)})
    results = check_kernel(Gone)
    assert results[0].status == "passed" and {r.status for r in results[1:]} == {"skipped"}


# -- pytest integration ----------------------------------------------------------------------------------
@parametrize_with_checks([Grid, Grid(bits=8)])
def test_parametrize_with_checks(obj, check):
    check(obj)


def test_parametrize_ids_and_marks():
    mark = parametrize_with_checks([Grid])
    assert mark.args[0] == "obj, check"
    ids = [p.id for p in mark.args[1]]
    assert ids[0] == "kit-grid-check_class_contract" and len(ids) == len(checks_for(Grid))
    mark = parametrize_with_checks([Grid], expected_failed_checks=lambda o: {"check_round_trip": "why"})
    [p] = [p for p in mark.args[1] if p.id.endswith("check_round_trip")]
    assert p.marks and p.marks[0].name == "xfail" and p.marks[0].kwargs["reason"] == "why"


def test_qcore_plugins_fixture_registers_for_one_test(qcore_plugins):
    assert "kit-grid" not in qcore.list_schemes()
    qcore_plugins.register(Grid)
    assert qcore.quantize(np.arange(8, dtype=np.float32), "kit-grid").scheme == "kit-grid"
    assert mgr.get_manager() is qcore_plugins.manager
    assert not qcore_plugins.manager.third_party


def test_qcore_plugins_fixture_cleaned_up():
    assert "kit-grid" not in qcore.list_schemes()


def test_register_qcore_plugin_fixture(register_qcore_plugin):
    name = register_qcore_plugin(plugin_from_classes(Grid), name="my-plugin")
    assert name == "my-plugin" and "kit-grid" in qcore.list_schemes()
    assert [r.schemes for r in qcore.plugins() if r.name == "my-plugin"] == [["kit-grid"]]


def test_isolated_plugins_restores_the_manager():
    before = mgr.get_manager()
    with isolated_plugins(Grid) as m:
        assert mgr.get_manager() is m and "kit-grid" in qcore.list_schemes() and "linear" in qcore.list_schemes()
    assert mgr.get_manager() is before and "kit-grid" not in qcore.list_schemes()


def test_registering_an_already_registered_plugin_object_is_refused():
    mod = plugin_from_classes(Grid)
    with isolated_plugins(mod) as m:
        with pytest.raises(qcore.PluginError, match="already registered"):
            m.register(mod, name="again")


def test_pytest_plugin_is_loaded_through_its_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("qcore")
    assert plugin is not None and plugin.__name__ == "qcore.testing.pytest_plugin", \
        "the pytest11 entry point 'qcore' is missing: reinstall qcore (pip install -e .)"


def test_pytest_helpers_in_a_fresh_session(tmp_path):
    """What a plugin author writes, run by a fresh pytest: ids name the check, a failure names what was expected."""
    (tmp_path / "test_author.py").write_text(textwrap.dedent('''
        import numpy as np
        import qcore
        from qcore.testing import parametrize_with_checks

        class Bad(qcore.Quantizer):
            name = "author-bad"
            signed = False
            def fit(self, x):
                return {}
            def encode(self, x, params):
                return np.zeros(x.shape, np.uint8)
            def decode(self, codes, params):
                return np.zeros(codes.shape, np.float32)

        @parametrize_with_checks([Bad])
        def test_conformance(obj, check):
            check(obj)

        def test_fixture(qcore_plugins):
            qcore_plugins.register(Bad)
            assert "author-bad" in qcore.list_schemes()
    '''))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    out = res.stdout
    assert res.returncode == 1, out
    assert "FAILED test_author.py::test_conformance[author-bad-check_round_trip]" in out
    assert "not below the signal power" in out
    assert "test_conformance[author-bad-check_class_contract] PASSED" in out or "passed" in out.splitlines()[-1]
    assert "failed" in out.splitlines()[-1] and " passed" in out.splitlines()[-1]


def test_kit_reachable_as_qcore_testing_after_import_qcore():
    code = "import sys, qcore; assert 'qcore.testing' not in sys.modules; print(qcore.testing.check_quantizer.__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "check_quantizer", res.stderr
