"""One default per option, owned by the scheme (docs/contracts.md §2 "Defaults", the table in docs/usage.md): every
entry point takes the scheme's defaults for the role of what it quantizes; adapters set only the channel axis;
``weight_bits`` / ``activation_bits`` mean the same everywhere (``bits`` kept as a documented alias)."""
import warnings

import numpy as np
import pytest
from safetensors.numpy import save_file

import qcore
from qcore.cli.main import main


def _w(n=48, k=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def test_schemes_own_their_defaults_per_role():
    lin = qcore.get_quantizer("linear")
    assert lin.defaults() == {**{"bits": 8}, **type(lin).options}
    assert lin.defaults()["symmetric"] is False and lin.defaults()["granularity"] == "tensor"
    w = lin.defaults("weight")
    assert (w["bits"], w["symmetric"], w["granularity"], w["axis"]) == (8, True, "channel", 0)
    assert lin.defaults("activation") == lin.defaults()
    assert qcore.get_quantizer("log").defaults("weight")["bits"] == 4
    assert qcore.get_quantizer("log").defaults("weight")["granularity"] == "channel"
    assert qcore.get_quantizer("kmeans").defaults("weight") == qcore.get_quantizer("kmeans").defaults()
    with pytest.raises(ValueError, match="role"):
        lin.defaults("bias")


def test_the_torch_adapter_uses_the_schemes_weight_defaults():
    torch = pytest.importorskip("torch")
    from qcore.integrations import torch as qtorch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    wf = model[0].weight.detach().numpy()
    for scheme in ("linear", "log", "kmeans"):
        qt = qtorch.quantize_dynamic(model, scheme)[0].weight
        cls = type(qcore.get_quantizer(scheme))
        want = qcore.quantize(wf, scheme, **cls.defaults("weight"))  # the same tensor, the scheme's weight defaults
        assert qt.bits == want.bits == cls.defaults()["bits"]  # log and kmeans: 4 bits, as qcore.quantize
        np.testing.assert_array_equal(qt.dequantize(), want.dequantize())
    # weight_bits and bits are the same in quantize_dynamic (DESIGN's spelling), no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = qtorch.quantize_dynamic(model, "linear", bits=4)[0].weight
        b = qtorch.quantize_dynamic(model, "linear", weight_bits=4)[0].weight
    np.testing.assert_array_equal(a.codes, b.codes)
    with pytest.raises(TypeError, match="not both"):
        qtorch.quantize_dynamic(model, "linear", bits=4, weight_bits=4)


def test_bits_is_a_deprecated_alias_in_prepare_and_prepare_qat():
    torch = pytest.importorskip("torch")
    from qcore.integrations import torch as qtorch

    model = torch.nn.Sequential(torch.nn.Linear(16, 8)).eval()
    with pytest.warns(DeprecationWarning, match="weight_bits"):
        old = qtorch.prepare_qat(model, bits=4)
    new = qtorch.prepare_qat(model, weight_bits=4)
    assert old[0].weight_quantizer.bits == new[0].weight_quantizer.bits == 4
    assert qtorch.prepare_qat(model)[0].weight_quantizer.bits == 8
    with pytest.warns(DeprecationWarning, match="activation_bits"):
        old = qtorch.prepare(model, bits=6)
    new = qtorch.prepare(model, activation_bits=6)
    assert old[0].activation_bits == new[0].activation_bits == 6
    assert qtorch.prepare(model)[0].activation_bits == 8 and qtorch.prepare(model)[0].weight_bits == 8
    assert qtorch.ActivationFakeQuant(activation_bits=5).bits == 5 == qtorch.ActivationFakeQuant(bits=5).bits
    assert qtorch.ActivationFakeQuant().quantizer.config["granularity"] == "tensor"  # activations: per tensor


class _Plugin(qcore.Quantizer):
    """A plugin with the layout options but no role defaults: adapters must not impose per-channel or symmetric."""

    name = "test-defaults-plugin"
    options = {"symmetric": False, "granularity": "tensor", "axis": 0, "group_size": 32}

    def fit(self, x):
        return {"scale": np.array([max(float(np.abs(x).max()), 1e-6) / 127], np.float32)}

    def encode(self, x, params):
        return np.clip(np.rint(x / params["scale"][0]), -127, 127).astype(np.int8)

    def decode(self, codes, params):
        return codes.astype(np.float32) * params["scale"][0]


class _PluginWithRoles(_Plugin):
    name = "test-defaults-roles"
    role_defaults = {"weight": {"granularity": "group", "group_size": 16}}


def test_plugins_declare_their_own_role_defaults(qcore_plugins):
    torch = pytest.importorskip("torch")
    from qcore.integrations import torch as qtorch

    qcore_plugins.register(_Plugin)
    qcore_plugins.register(_PluginWithRoles)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8))
    plain = qtorch.quantize_dynamic(model, "test-defaults-plugin")[0].weight
    assert plain.options["granularity"] == "tensor" and plain.options["symmetric"] is False
    roles = qtorch.quantize_dynamic(model, "test-defaults-roles")[0].weight
    assert roles.options["granularity"] == "group" and roles.options["group_size"] == 16


def test_the_command_line_uses_the_weight_defaults(tmp_path):
    w = _w()
    src = tmp_path / "m.safetensors"
    save_file({"layer.weight": w}, str(src))
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), "-o", str(out), "--quiet"]) == 0
    qt = qcore.load_quantized(str(out))["layer.weight"]
    want = qcore.quantize(w, "linear", **qcore.get_quantizer("linear").defaults("weight"))
    assert qt.options["symmetric"] is True and qt.options["granularity"] == "channel"
    np.testing.assert_array_equal(qt.codes, want.codes)
    aff = tmp_path / "a.safetensors"
    assert main(["quantize", str(src), "-o", str(aff), "--quiet", "--no-symmetric"]) == 0
    assert qcore.load_quantized(str(aff))["layer.weight"].options["symmetric"] is False
    log = tmp_path / "l.safetensors"
    assert main(["quantize", str(src), "-o", str(log), "--quiet", "--scheme", "log"]) == 0
    qt = qcore.load_quantized(str(log))["layer.weight"]
    assert qt.bits == 4 and qt.options["granularity"] == "channel"


def test_scikit_learn_takes_weight_bits():
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier

    from qcore.integrations import sklearn as qsk

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 32)), rng.integers(0, 3, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=5, random_state=0).fit(X, y)
    a = qsk.quantize_estimator(clf, "linear", weight_bits=4)
    b = qsk.quantize_estimator(clf, "linear", bits=4)
    assert [r["bits"] for r in a.qcore_report_] == [r["bits"] for r in b.qcore_report_] == [4, 4]
    assert all(r["bits"] == 8 for r in qsk.quantize_estimator(clf, "linear").qcore_report_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
