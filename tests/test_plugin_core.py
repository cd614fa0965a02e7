"""The plugin core with in-process plugin objects and fake entry points (no install needed)."""
import importlib.metadata as md
import types
import warnings

import numpy as np
import pytest

import qcore
from qcore.plugin import manager as mgr


def builtin_entry_points():
    return [ep for ep in md.entry_points(group="qcore") if ep.dist.metadata["Name"] == "qcore"]


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name, dist, target):
        self.name, self.dist, self._target = name, FakeDist(dist), target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def scheme_plugin(scheme_name, raises=None):
    class Plain(qcore.Quantizer):
        name = scheme_name
        signed = False

        def fit(self, x):
            return {"lo": np.array([x.min() if x.size else 0], np.float32)}

        def encode(self, x, params):
            return np.zeros(x.shape, np.uint8)

        def decode(self, codes, params):
            return np.full(codes.shape, params["lo"][0], np.float32)

    mod = types.ModuleType(f"plugin_{scheme_name}")

    @qcore.hookimpl
    def qcore_quantizers():
        if raises:
            raise raises
        return [Plain]

    mod.qcore_quantizers = qcore_quantizers
    return mod


@pytest.fixture
def manager_with(monkeypatch):
    """Install a process-wide manager over the built-ins plus the given fake entry points."""
    saved = mgr.set_manager(None)

    def make(*fakes, env=None):
        for k in ("QCORE_LOAD_PLUGINS", "QCORE_DISABLE_PLUGINS", "QCORE_STRICT_PLUGINS"):
            monkeypatch.delenv(k, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        return mgr.reset_manager(entry_points=lambda: builtin_entry_points() + list(fakes))

    yield make
    mgr.set_manager(saved)


def test_builtins_come_through_entry_points():
    names = {ep.name for ep in builtin_entry_points()}
    assert {"linear", "minmax", "numpy", "cython"} <= names
    # qcore.plugins() lists what `qcore plugins` prints (third-party only); all=True adds the built-ins
    assert not any(r.builtin for r in qcore.plugins())
    recs = {r.name: r for r in qcore.plugins(all=True)}
    assert recs["linear"].builtin and recs["linear"].schemes == ["linear"]
    assert recs["linear"].distribution == "qcore" and recs["linear"].version == qcore.__version__


def test_loading_is_lazy_and_once(manager_with):
    calls = []

    def eps():
        calls.append(1)
        return builtin_entry_points()

    m = mgr.reset_manager(entry_points=eps)
    assert calls == []  # creating the manager does not scan entry points
    qcore.list_schemes()
    qcore.list_observers()
    qcore.get_quantizer("linear")
    assert calls == [1]
    assert m is mgr.get_manager()


def test_third_party_scheme_is_usable_by_name(manager_with):
    manager_with(FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo")))
    assert "foo" in qcore.list_schemes()
    qt = qcore.quantize(np.array([3.0, 4.0], np.float32), "foo")
    assert qt.scheme == "foo" and np.all(qt.dequantize() == 3.0)
    rec = [r for r in qcore.plugins() if r.name == "foo"][0]
    assert rec.distribution == "qcore-foo" and rec.schemes == ["foo"] and rec.hooks == ["qcore_quantizers"]


def test_plugin_failing_to_import_is_skipped_with_a_warning(manager_with):
    manager_with(FakeEntryPoint("broken", "qcore-broken", ImportError("no module named zzz")),
                 FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo")))
    with pytest.warns(mgr.PluginWarning, match=r"'broken' from qcore-broken 1.0 failed to import: ImportError: no module named zzz"):
        names = qcore.list_schemes()
    assert "foo" in names and "linear" in names


def test_plugin_whose_hook_raises_is_skipped(manager_with):
    manager_with(FakeEntryPoint("bad", "qcore-bad", scheme_plugin("bad", raises=RuntimeError("boom"))),
                 FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo")))
    with pytest.warns(mgr.PluginWarning, match="qcore-bad.*qcore_quantizers raised RuntimeError: boom"):
        names = qcore.list_schemes()
    assert "foo" in names and "bad" not in names


@pytest.mark.parametrize("target", [ImportError("nope"), scheme_plugin("bad", raises=RuntimeError("boom"))])
def test_strict_mode_turns_failures_into_errors(manager_with, target):
    manager_with(FakeEntryPoint("bad", "qcore-bad", target), env={"QCORE_STRICT_PLUGINS": "1"})
    with pytest.raises(qcore.PluginError, match="qcore-bad"):
        qcore.list_schemes()


def test_duplicate_names_are_an_error_naming_both_distributions(manager_with):
    manager_with(FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo")),
                 FakeEntryPoint("foo2", "qcore-other", scheme_plugin("foo")))
    with pytest.raises(qcore.PluginError, match=r"(?s)two plugins provide the scheme 'foo'.*qcore-foo.*qcore-other"):
        qcore.list_schemes()


def test_duplicate_of_a_builtin_name(manager_with):
    manager_with(FakeEntryPoint("evil", "qcore-evil", scheme_plugin("linear")))
    with pytest.raises(qcore.PluginError, match=r"scheme 'linear'.*qcore .*qcore-evil"):
        qcore.get_quantizer("linear")


def test_allow_list(manager_with):
    foo = FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo"))
    bar = FakeEntryPoint("bar", "qcore_Bar", scheme_plugin("bar"))
    manager_with(foo, bar, env={"QCORE_LOAD_PLUGINS": "qcore-bar"})
    assert "bar" in qcore.list_schemes() and "foo" not in qcore.list_schemes()
    manager_with(foo, bar, env={"QCORE_LOAD_PLUGINS": ""})
    assert qcore.list_schemes() == sorted(n for n in qcore.list_schemes() if n not in ("foo", "bar"))
    assert "linear" in qcore.list_schemes()  # built-ins always load


def test_deny_list(manager_with):
    foo = FakeEntryPoint("foo", "qcore-foo", scheme_plugin("foo"))
    bar = FakeEntryPoint("bar", "qcore-bar", scheme_plugin("bar"))
    manager_with(foo, bar, env={"QCORE_DISABLE_PLUGINS": "qcore-foo, something-else"})
    assert "bar" in qcore.list_schemes() and "foo" not in qcore.list_schemes()


def test_misspelled_hook_fails(manager_with):
    mod = types.ModuleType("typo")

    @qcore.hookimpl
    def qcore_quantizer():  # missing the final "s"
        return []

    mod.qcore_quantizer = qcore_quantizer
    m = manager_with()
    with pytest.raises(qcore.PluginError, match="qcore_quantizer"):
        m.register(mod, name="typo")
    assert "typo" not in [r.name for r in m.records()]


def test_register_and_unregister_in_process(manager_with):
    m = manager_with()
    name = m.register(scheme_plugin("tmp"), name="tmp-plugin")
    assert "tmp" in qcore.list_schemes()
    m.unregister(name)
    assert "tmp" not in qcore.list_schemes()
    with pytest.raises(qcore.SchemeNotFound):
        qcore.get_quantizer("tmp")


def test_registering_a_duplicate_in_process_is_refused_and_rolled_back(manager_with):
    m = manager_with()
    with pytest.raises(qcore.PluginError):
        m.register(scheme_plugin("linear"), name="dup")
    assert "dup" not in [r.name for r in m.records()]
    assert qcore.get_quantizer("linear").name == "linear"


def test_class_without_name_is_skipped(manager_with):
    mod = types.ModuleType("noname")

    @qcore.hookimpl
    def qcore_observers():
        return [type("Anon", (qcore.Observer,), {})]

    mod.qcore_observers = qcore_observers
    m = manager_with()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m.register(mod, name="noname")
    assert any("without a string `name`" in str(x.message) for x in w)
