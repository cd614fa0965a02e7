"""Decode forms (docs/contracts.md §2): schemes declare what their codes decode as, and every path that computes
on codes (qlinear's int8 and low-bit kernels, QLinear, fake quantization, QAT, static convert) reads the form
and the layout instead of the scheme's name — so a third-party scheme with the same arithmetic takes them."""
import numpy as np
import pytest

import qcore
from qcore.quantization import forms
from qcore.quantization.forms import Affine, Layout, Table
from qcore.testing import check_quantizer
from qcore_plugins.schemes.linear import LinearQuantizer


def _w(n, k, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


# -- the forms themselves ------------------------------------------------------------------------------------
def test_forms_validate_their_arrays():
    a = Affine(np.array([0.5, -0.25], np.float16), np.array([3.0, 0.0]))
    assert a.scale.dtype == np.float32 and a.zero_point.dtype == np.int32
    np.testing.assert_array_equal(Affine(np.ones(3)).zero_points(), np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="zero_point must hold integers"):
        Affine(np.ones(2), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Affine(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="one per scale"):
        Affine(np.ones(4), np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="float array"):
        Affine(np.array(["a"]))
    assert Table(np.zeros((3, 16))).entries == 16
    for bad in (np.zeros(16), np.zeros((2, 3)), np.zeros((1, 512))):
        with pytest.raises(ValueError):
            Table(bad)
    with pytest.raises(ValueError, match="NaN"):
        Table(np.full((1, 4), np.nan))
    with pytest.raises(Exception):  # frozen
        a.scale = np.ones(2)


def test_layout_param_index_by_hand():
    shape = (2, 3, 8)
    assert Layout().param_shape(shape) == (1,)
    ch = Layout.from_options({"granularity": "channel", "axis": -2}, shape)
    assert ch == Layout("channel", 1) and ch.param_shape(shape) == (3,)
    idx = np.broadcast_to(ch.param_index(shape), shape)
    assert idx[1, 2, 5] == 2 and idx[0, 0, 7] == 0
    gr = Layout.from_options({"granularity": "group", "group_size": 4}, shape)
    assert gr.param_shape(shape) == (2, 3, 2)
    idx = gr.param_index(shape)
    # element (i, j, c) uses set (i*3 + j)*2 + c//4
    assert idx[1, 2, 5] == (1 * 3 + 2) * 2 + 1 and idx[0, 1, 3] == 2
    # rows 4: of an (8, 64) tensor in groups of 16: row r, column c -> r*4 + c//16
    assert Layout("group", group_size=16).param_index((2, 64), row_start=4)[1, 40] == 5 * 4 + 2
    with pytest.raises(ValueError):
        Layout("channel")
    with pytest.raises(ValueError):
        Layout("block")


@pytest.mark.parametrize("scheme, opts, kind", [
    ("linear", dict(bits=8), Affine),
    ("linear", dict(bits=8, granularity="channel", axis=1), Affine),
    ("linear", dict(bits=4, symmetric=True, granularity="group", group_size=16), Affine),  # full range, +- scales
    ("linear", dict(bits=2, symmetric=True, granularity="channel"), Affine),                # ternary
    ("linear", dict(bits=1, symmetric=True, granularity="channel"), Table),                 # binary +-alpha
    ("linear", dict(bits=5, granularity="group", group_size=32, scale_dtype="float16"), Affine),
    ("kmeans", dict(bits=3, granularity="channel"), Table),
    ("log", dict(bits=4, granularity="group", group_size=16), Table),
    ("log", dict(bits=7), Table),
])
def test_builtin_schemes_declare_forms_that_reproduce_decode(scheme, opts, kind):
    w = qcore.quantize(_w(16, 64, 1), scheme, **opts)
    form = w.decodes_as()
    assert isinstance(form, kind)
    np.testing.assert_array_equal(forms.decode(form, w.codes, w.layout, w.bits), w.dequantize())
    np.testing.assert_array_equal(forms.decode(form, w.codes[8:], w.layout, w.bits, row_start=8), w.dequantize()[8:])
    np.testing.assert_array_equal(w.decode_rows(8, 16), w.dequantize()[8:16])


def test_full_range_symmetric_scales_may_be_negative_and_stay_affine():
    w = qcore.quantize(_w(64, 64, 2), "linear", bits=4, symmetric=True, granularity="channel")
    form = w.decodes_as()
    assert isinstance(form, Affine) and form.zero_point is None and (form.scale < 0).any()
    assert w.codes.min() == -8  # the full signed range


def test_binary_table_is_plus_minus_alpha():
    w = qcore.quantize(_w(4, 32, 3), "linear", bits=1, symmetric=True, granularity="channel")
    t = w.decodes_as().table
    np.testing.assert_array_equal(t[:, 0], w.params["scale"])  # bit pattern 0 = code 0 = +alpha
    np.testing.assert_array_equal(t[:, 1], -w.params["scale"])  # bit pattern 1 = code -1 = -alpha


def test_offset_form_decodes_by_hand():
    f = Affine(np.array([0.5], np.float32), offset=np.array([-1.0], np.float32))
    got = forms.decode(f, np.array([0, 1, 4], np.uint8), Layout(), 4)
    np.testing.assert_array_equal(got, np.array([-1.0, -0.5, 1.0], np.float32))


# -- third-party schemes -------------------------------------------------------------------------------------
class RenamedLinear(LinearQuantizer):
    """The built-in linear scheme under another name: it inherits the Affine form and the linear rule."""

    name = "renamed-linear"


class Pow2(qcore.Quantizer):
    """Written to the documented contract only: symmetric codes, power-of-two scales, an Affine form."""

    name = "pow2-affine"
    signed = True
    bits_range = (2, 8)
    options = {"granularity": "channel", "axis": 0, "group_size": 32}

    def fit(self, x):
        view, axis = self.layout(x)
        rows = view.reshape(1, -1) if axis is None else np.moveaxis(view, axis, 0).reshape(view.shape[axis], -1)
        amax = np.abs(rows).max(axis=1, initial=0.0)
        qmax = (1 << (self.bits - 1)) - 1
        scale = np.exp2(np.ceil(np.log2(np.maximum(amax, 1e-30) / qmax)))
        const = rows.min(axis=1, initial=np.inf) == rows.max(axis=1, initial=-np.inf)  # a constant: code +-1 exactly
        scale = np.where(const, np.where(amax > 0, amax, 1.0), scale)
        return {"scale": scale.astype(np.float32).reshape(self.param_shape(x))}

    def encode(self, x, params):
        view, axis = self.layout(x)
        s = self._per(view, axis, params["scale"])
        qmax = (1 << (self.bits - 1)) - 1
        return np.clip(np.rint(view / s), -qmax, qmax).astype(np.int8).reshape(x.shape)

    def decode(self, codes, params):
        view, axis = self.layout(codes)
        return (view.astype(np.float32) * self._per(view, axis, params["scale"])).astype(np.float32).reshape(codes.shape)

    @staticmethod
    def _per(view, axis, p):
        if axis is None:
            return np.asarray(p, np.float32).reshape(())
        shape = [1] * view.ndim
        shape[axis] = -1
        return np.asarray(p, np.float32).reshape(shape)

    def decodes_as(self, params):
        return Affine(params["scale"])


class WrongForm(Pow2):
    """Declares a form its decode does not follow (decode adds one step)."""

    name = "wrong-form"

    def decode(self, codes, params):
        return super().decode(codes.astype(np.int16) + 1, params)


@pytest.fixture
def third_party(qcore_plugins):
    for cls in (RenamedLinear, Pow2, WrongForm):
        qcore_plugins.register(cls)
    return qcore_plugins


def test_third_party_schemes_pass_the_kit_and_a_wrong_form_is_caught(third_party):
    check_quantizer(RenamedLinear)
    check_quantizer(Pow2)
    results = check_quantizer(WrongForm, on_fail=None)
    failed = {r.check for r in results if r.status == "failed"}
    assert "check_decode_form" in failed


def _as_linear(w, **opts):
    """The same codes and scales as a built-in symmetric linear QTensor (the independent reference path)."""
    return qcore.QTensor(w.codes, "linear", w.bits, {"scale": np.asarray(w.params["scale"])},
                         dict(opts, bits=w.bits, symmetric=True), signed=True)


@pytest.mark.parametrize("kernel_name", [None, "numpy"])
def test_third_party_affine_runs_the_int8_and_lowbit_kernels(third_party, kernel_name):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    wf = _w(40, 96, 5)
    cases = [(dict(bits=8), "int8", dict(granularity="channel", axis=0)),
             (dict(bits=4, granularity="group", group_size=32), "lowbit", dict(granularity="group", group_size=32))]
    for opts, path, lin in cases:
        w = qcore.quantize(wf, "pow2-affine", kernel=kernel_name, **opts)
        assert qcore.ops.qlinear_path(w) == path
        ref = _as_linear(w, **lin)
        assert qcore.ops.qlinear_path(ref) == path
        np.testing.assert_array_equal(qcore.ops.qlinear(x, w), qcore.ops.qlinear(x, ref))
        np.testing.assert_allclose(qcore.ops.qlinear(x, w), x @ w.dequantize().T, atol=0.05 * np.abs(x @ wf.T).max())
        r = qcore.quantize(wf, "renamed-linear", **dict(opts, symmetric=True), **({} if "granularity" in opts else lin))
        assert qcore.ops.qlinear_path(r) == path
        same = qcore.QTensor(r.codes, "linear", r.bits, r.params, r.options, signed=True)
        np.testing.assert_array_equal(qcore.ops.qlinear(x, r), qcore.ops.qlinear(x, same))


def test_a_wrong_form_takes_the_rows_path(third_party):
    w = qcore.quantize(_w(16, 64, 6), "wrong-form", bits=8)
    assert qcore.ops.qlinear_path(w) == "rows"
    x = _w(3, 64, 7)
    np.testing.assert_allclose(qcore.ops.qlinear(x, w), x @ w.dequantize().T, rtol=1e-5, atol=1e-5)


def test_third_party_affine_in_torch_qlinear_qat_and_static(third_party):
    torch = pytest.importorskip("torch")
    from torch import nn

    from qcore.integrations import torch as qtorch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8)).eval()
    x = torch.randn(6, 32)
    with torch.no_grad():
        ref = model(x)
    for scheme in ("pow2-affine", "renamed-linear"):
        qm = qtorch.quantize_dynamic(model, scheme, bits=8)
        assert "int8 qlinear" in repr(qm[0])
        with torch.no_grad():
            assert float((qm(x) - ref).norm() / ref.norm()) < 0.05
        # QAT: the renamed linear declares the linear rule (torch ops), pow2 goes through numpy
        qat = qtorch.prepare_qat(model, scheme, weight_bits=8, activations={"scheme": scheme, "bits": 8, "granularity": "tensor"})
        assert qat[0].uses_torch_ops == (scheme == "renamed-linear")
        assert qat[0].input_quantizer.uses_torch_ops == (scheme == "renamed-linear")
        qat.train()
        opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
        loss = qat(x).square().mean()
        loss.backward()
        opt.step()
        qat.eval()
        with torch.no_grad():
            y_qat = qat(x)
        scale, zp = qat[0].input_quantizer.qparams()  # read from the activation scheme's Affine form
        assert scale > 0
        conv = qtorch.convert(qat)
        # signed per-channel affine weights and an 8-bit per-tensor affine activation: static int8 modules
        assert isinstance(conv[0], qtorch.StaticLinear), type(conv[0])
        with torch.no_grad():
            assert float((conv(x) - y_qat).norm() / y_qat.norm()) < 0.05
