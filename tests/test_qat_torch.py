"""QAT on torch ops: the linear scheme's fake quantization without numpy, bit-exact against qcore's own quantizer,
activation calibration on torch tensors, and the article's model (Conv2d 3->16, ReLU, Linear 576->10) trained on
scikit-learn's digits through prepare_qat -> training -> convert."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qcore  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402
from qcore.integrations.torch import _fakequant as fq  # noqa: E402
from qcore.integrations.torch import _qat, _tensors  # noqa: E402
from article_digits import ArticleModel, evaluate, load_digits_split, train  # noqa: E402


def _weights(rng, shape, kind):
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3.0)).astype(np.float32)
    if kind == "constant_rows":
        w[1] = 0.7
        w[2] = -0.25
        w[3] = 0.0
    elif kind == "positive":
        w = np.abs(w)
    elif kind == "halves":  # values on exact .5 code boundaries: half-to-even matters
        w = (np.round(w * 4) / 4).astype(np.float32)
    return w


@pytest.mark.parametrize("bits,symmetric,granularity",
                         list(itertools.product([1, 2, 3, 4, 8], [False, True], ["tensor", "channel", "group"])))
def test_torch_fake_quant_equals_qcore_linear_bit_for_bit(bits, symmetric, granularity):
    q = qcore.get_quantizer("linear", bits=bits, symmetric=symmetric, granularity=granularity, group_size=16)
    assert fq.torch_supported(q)
    rng = np.random.default_rng(bits * 10 + symmetric)
    for shape, axis in [((16, 64), 0), ((8, 3, 3, 32), 0), ((12, 32), 1)]:
        for kind in ("normal", "constant_rows", "positive", "halves"):
            w = _weights(rng, shape, kind)
            opts = dict(bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, group_size=16)
            ref = qcore.get_quantizer("linear", **opts).quantize(w).dequantize()
            got = fq.linear_fake_quant_values(torch.from_numpy(w), **opts).numpy()
            np.testing.assert_array_equal(got, ref, err_msg=f"{opts} {shape} {kind}")


def test_torch_fake_quant_refuses_bad_layouts_like_the_scheme():
    with pytest.raises(ValueError, match="group_size"):
        fq.linear_fake_quant_values(torch.zeros(4, 10), 4, True, "group", 0, 16)
    with pytest.raises(ValueError, match="axis"):
        fq.linear_fake_quant_values(torch.zeros(4, 10), 4, True, "channel", 2)


def _no_numpy(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("numpy round trip in a torch-ops QAT forward/backward")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(_tensors, "_numpy_view", refuse)
    monkeypatch.setattr(_qat, "_FakeQuantFn", None)


@pytest.mark.parametrize("options", [dict(bits=8), dict(bits=4, symmetric=False), dict(bits=2),
                                     dict(bits=5, granularity="group", group_size=3)])
def test_linear_qat_runs_on_torch_ops_without_numpy(monkeypatch, options):
    qat = qtorch.prepare_qat(ArticleModel(in_ch=3), activations=True, **options)
    assert qat.conv.uses_torch_ops and qat.fc.uses_torch_ops and qat.fc.input_quantizer.uses_torch_ops
    x = torch.rand(4, 3, 8, 8)
    ref_w = qat.fc.fake_quant_weight().detach().clone()
    _no_numpy(monkeypatch)
    qat.train()
    qat(x).square().sum().backward()
    assert qat.fc.weight.grad is not None and qat.conv.weight.grad is not None
    qat.eval()
    with torch.no_grad():
        qat(x)
    torch.testing.assert_close(qat.fc.fake_quant_weight(), ref_w, rtol=0, atol=0)


def test_torch_ops_qat_runs_on_another_device():
    """The 'meta' device computes shapes only: any CPU-only or numpy step in forward/backward would fail."""
    qat = qtorch.prepare_qat(ArticleModel(in_ch=3), weight_bits=5, activations=True).to("meta")
    out = qat(torch.empty(2, 3, 8, 8, device="meta"))
    out.sum().backward()
    assert out.device.type == "meta" and qat.fc.weight.grad.device.type == "meta"
    assert qat.fc.input_quantizer._scale.device.type == "meta"


def test_weight_gradient_is_straight_through_and_forward_exact():
    lin = nn.Linear(32, 8)
    qat = qtorch.prepare_qat(lin, weight_bits=3)
    x = torch.randn(5, 32)
    qat(x).sum().backward()
    torch.testing.assert_close(qat.weight.grad, torch.ones(5, 8).T @ x)  # d/dW of sum(x W^T) with W' = fq(W)
    q = qcore.get_quantizer("linear", bits=3, symmetric=True, granularity="channel", axis=0)
    ref = q.quantize(lin.weight.detach().numpy()).dequantize()
    np.testing.assert_array_equal(qat.fake_quant_weight().detach().numpy(), ref)


@pytest.mark.parametrize("observer,symmetric", [("minmax", False), ("moving_average", False),
                                                ("moving_average", True), ("minmax", True)])
def test_activation_fake_quant_on_torch_equals_the_numpy_path(monkeypatch, observer, symmetric):
    rng = np.random.default_rng(5)
    batches = [torch.from_numpy((rng.standard_normal((32, 40)) * (1 + i) + i).astype(np.float32)) for i in range(6)]
    on_torch = qtorch.ActivationFakeQuant(bits=8, observer=observer, symmetric=symmetric)
    via_numpy = qtorch.ActivationFakeQuant(bits=8, observer=observer, symmetric=symmetric)
    assert on_torch.uses_torch_ops
    monkeypatch.setattr(type(via_numpy), "uses_torch_ops", property(lambda self: self is not via_numpy))
    assert not via_numpy.uses_torch_ops and on_torch.uses_torch_ops
    for b in batches:
        torch.testing.assert_close(on_torch(b), via_numpy(b), rtol=0, atol=0)
    assert on_torch.qparams() == via_numpy.qparams()
    on_torch.eval(), via_numpy.eval()
    probe = torch.linspace(-20, 20, 999)
    torch.testing.assert_close(on_torch(probe), via_numpy(probe), rtol=0, atol=0)  # frozen in eval
    scale, zp = on_torch.qparams()
    qmin, qmax = on_torch.quant_range()
    assert (qmin, qmax) == ((-127, 127) if symmetric else (0, 255)) and (zp == 0) == symmetric
    codes = torch.clamp(torch.round(probe * np.float32(1 / np.float32(scale))) + zp, qmin, qmax)
    torch.testing.assert_close(on_torch(probe), (codes - zp) * scale, rtol=0, atol=0)


def test_activation_state_round_trips_and_moves():
    a = qtorch.ActivationFakeQuant(bits=8)
    a(torch.randn(64) * 3)
    b = qtorch.ActivationFakeQuant(bits=8)
    with pytest.raises(qcore.QcoreError, match="calibration"):
        b.qparams()
    b.load_state_dict(a.state_dict())
    assert b.qparams() == a.qparams() and b.calibrated
    b.eval()
    x = torch.randn(100)
    torch.testing.assert_close(b(x), a.eval()(x), rtol=0, atol=0)
    c = qtorch.ActivationFakeQuant(bits=8, observer="percentile")  # numpy path: qparams from its params
    assert not c.uses_torch_ops
    c(torch.randn(1000))
    s, z = c.qparams()
    assert s > 0 and 0 <= z <= 255


# ---------------------------------------------------------------- the article's model on scikit-learn's digits
@pytest.fixture(scope="module")
def digits3():
    return load_digits_split(channels=3)  # the article's 3-channel input: the 8x8 digit in every channel


@pytest.fixture(scope="module")
def fp32_article(digits3):
    torch.manual_seed(0)
    return train(ArticleModel(in_ch=3), digits3, epochs=10, lr=1e-2, seed=0)


def test_article_int8_qat_convert_within_one_point(digits3, fp32_article):
    _, acc_fp32 = evaluate(fp32_article, digits3)
    assert acc_fp32 > 0.95
    torch.manual_seed(1)
    qat = train(qtorch.prepare_qat(fp32_article, weight_bits=8, activations=True), digits3, epochs=3, lr=1e-3, seed=1)
    assert qat.fc.uses_torch_ops and qat.fc.input_quantizer.uses_torch_ops
    out_qat, acc_qat = evaluate(qat, digits3)
    int8 = qtorch.convert(qat)
    if hasattr(qtorch, "StaticLinear"):  # convert gives static int8 modules: int8 activations and weights
        assert isinstance(int8.fc, qtorch.StaticLinear) and isinstance(int8.conv, qtorch.StaticConv2d)
        assert int8.fc.input_scale == pytest.approx(qat.fc.input_quantizer.qparams()[0], rel=1e-6)
    out_int8, acc_int8 = evaluate(int8, digits3)
    assert abs(acc_int8 - acc_qat) <= 0.01, (acc_qat, acc_int8)
    assert acc_qat >= acc_fp32 - 0.02, (acc_fp32, acc_qat)
    # the converted model computes what the QAT model evaluated, up to its int8 arithmetic
    rel = ((out_int8 - out_qat).norm() / out_qat.norm()).item()
    assert rel < 0.02, rel
    assert (out_int8.argmax(1) == out_qat.argmax(1)).float().mean().item() >= 0.99


@pytest.mark.parametrize("bits", [2, 4])
def test_article_low_bit_weights_qat_convert(digits3, fp32_article, bits):
    _, acc_fp32 = evaluate(fp32_article, digits3)
    torch.manual_seed(2)
    qat = train(qtorch.prepare_qat(fp32_article, weight_bits=bits, activations=True), digits3, epochs=4, lr=1e-3, seed=2)
    out_qat, acc_qat = evaluate(qat, digits3)
    conv = qtorch.convert(qat)
    for m in (conv.fc, conv.conv):  # static int8 modules (int8 activations, low-bit weight codes) or weight-only
        assert getattr(m, "weight_bits", None) == bits or m.weight.bits == bits
    out_conv, acc_conv = evaluate(conv, digits3)
    assert abs(acc_conv - acc_qat) <= 0.01, (acc_qat, acc_conv)
    assert ((out_conv - out_qat).norm() / out_qat.norm()).item() < 0.02
    assert acc_qat >= acc_fp32 - (0.05 if bits == 2 else 0.02), (bits, acc_fp32, acc_qat)
