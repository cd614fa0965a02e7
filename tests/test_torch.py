"""qcore.integrations.torch: QLinear on qcore.ops.qlinear, quantize_dynamic, prepare_qat/convert (issue 7)."""
from __future__ import annotations

import io

import numpy as np
import pytest

import qcore


torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install 'qcore[torch]' (torch==2.13.0)")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qcore.integrations import torch as qtorch  # noqa: E402
from article_digits import ArticleModel, load_digits_split, train  # noqa: E402


def _ops():
    try:
        from qcore import ops
    except ImportError as exc:  # fail clearly (not skip) until issue 5's kernel is there
        pytest.fail(f"qcore.ops (issue 5, int8 GEMM) is needed by QLinear's int8 path: {exc}")
    return ops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def mlp():
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


# ---------------------------------------------------------------------------------------- QLinear (PTQ)

@pytest.mark.parametrize("shape", [(7, 64), (3, 5, 64), (64,), (2, 1, 3, 64), (0, 64)])
def test_qlinear_equals_ops_qlinear_exactly(shape):
    ops = _ops()
    lin = nn.Linear(64, 48)
    q = qtorch.QLinear.from_float(lin)
    assert q.uses_kernel and q.weight.bits == 8 and q.weight.scheme == "linear"
    x = torch.randn(*shape)
    with torch.inference_mode():
        y = q(x)
    ref = ops.qlinear(x.numpy(), q.weight, q.bias.numpy())
    assert y.shape == shape[:-1] + (48,) and y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), ref)
    with torch.no_grad():
        np.testing.assert_array_equal(q(x).numpy(), ref)
    # close to float (per-channel int8 weights, per-row int8 activations)
    if x.numel():
        np.testing.assert_allclose(y.numpy(), lin(x).detach().numpy(), atol=0.03)


def test_qlinear_runs_on_the_input_memory(monkeypatch):
    ops = _ops()
    q = qtorch.QLinear.from_float(nn.Linear(32, 16))
    seen = []
    real = ops.qlinear

    def spy(x, w, bias=None):
        seen.append(x)
        return real(x, w, bias)

    monkeypatch.setattr(ops, "qlinear", spy)
    x = torch.randn(4, 6, 32)
    q(x)
    assert np.shares_memory(seen[-1], x.numpy())  # contiguous CPU float32: a view, no copy
    # other dtypes, layouts and requires_grad still work (converted once)
    xt = torch.randn(32, 6).t()
    np.testing.assert_array_equal(q(xt).numpy(), q(xt.contiguous()).numpy())
    x64 = x.double()
    y64 = q(x64)
    assert y64.dtype == torch.float64
    np.testing.assert_array_equal(y64.float().numpy(), q(x).numpy())


def test_qlinear_gradient_flows_to_the_input():
    _ops()
    lin = nn.Linear(16, 8)
    q = qtorch.QLinear.from_float(lin)
    x = torch.randn(5, 16, requires_grad=True)
    q(x).sum().backward()
    w = torch.from_numpy(q.weight.dequantize())
    torch.testing.assert_close(x.grad, torch.ones(5, 8) @ w)


def low_bit_tolerance(q, ref):
    """qlinear quantizes activations to int8 (per row / per 32-block): about 1% of the output's scale; the
    packed-rows path multiplies decoded float32 rows: float rounding only."""
    return 0.02 * float(ref.abs().max()) if q.uses_kernel else 1e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("scheme,bits", [("linear", 4), ("linear", 2), ("kmeans", 4), ("log", 4)])
def test_low_bit_path_computes_with_the_dequantized_weight(scheme, bits):
    assert scheme in qcore.list_schemes(), f"built-in scheme {scheme!r} failed to load"  # fail, never skip
    lin = nn.Linear(64, 24)
    q = qtorch.QLinear.from_float(lin, scheme, bits=bits)
    assert q.weight.scheme == scheme and q.weight.bits == bits
    x = torch.randn(3, 2, 64)
    with torch.inference_mode():
        y = q(x)
    ref = F.linear(x.double(), torch.from_numpy(q.weight.dequantize()).double(), lin.bias.detach().double()).float()
    torch.testing.assert_close(y, ref, rtol=0, atol=low_bit_tolerance(q, ref))
    r = repr(q)
    assert f"scheme={scheme!r}" in r and f"bits={bits}" in r and ("qlinear" in r or "packed rows" in r)
    # only the packed weight is held: no float tensor of the weight's size anywhere on the module
    assert not any(isinstance(v, torch.Tensor) and v.numel() >= 64 * 24 for v in vars(q).values())
    assert not any(b.numel() >= 64 * 24 for b in q.buffers())


def test_assigning_a_new_weight_clears_the_caches():
    lin = nn.Linear(16, 8)
    q = qtorch.QLinear.from_float(lin, bits=4)
    x = torch.randn(3, 16)
    q(x)
    new = qcore.quantize(lin.weight.detach().numpy(), "linear", bits=2, symmetric=True)
    q.weight = new
    want = F.linear(x, torch.from_numpy(new.dequantize()), lin.bias.detach())
    # the new weight runs the low-bit qlinear (int8 activations per block of 32): close, not bit-equal
    torch.testing.assert_close(q(x), want, rtol=0, atol=0.03 * float(want.abs().max()))
    with pytest.raises(ValueError, match="shape"):
        q.weight = qcore.quantize(np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="QTensor"):
        q.weight = lin.weight.detach()


def test_caches_made_under_inference_mode_work_with_autograd_later():
    model = mlp()
    x = torch.randn(2, 64, requires_grad=True)
    for m in (qtorch.quantize_dynamic(model, bits=4), qtorch.quantize_dynamic(model),
              qtorch.prepare_qat(model, weight_bits=4).eval().requires_grad_(False)):
        with torch.inference_mode():
            m(torch.randn(2, 64))
        m(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        x.grad = None


def test_repr_shows_scheme_and_bits():
    r = repr(qtorch.quantize_dynamic(mlp()))
    assert "QLinear(in_features=64, out_features=48" in r and "scheme='linear'" in r and "bits=8" in r
    assert "int8 qlinear" in r


def test_quantize_dynamic_copies_and_selects_by_name():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = qtorch.quantize_dynamic(model)
    assert isinstance(q[0], qtorch.QLinear) and isinstance(q[2], qtorch.QLinear)
    assert type(model[0]) is nn.Linear  # the original is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    only = qtorch.quantize_dynamic(model, include="2")
    assert type(only[0]) is nn.Linear and isinstance(only[2], qtorch.QLinear)
    skip = qtorch.quantize_dynamic(model, exclude=["0"])
    assert type(skip[0]) is nn.Linear and isinstance(skip[2], qtorch.QLinear)
    with pytest.warns(UserWarning, match="no nn.Linear"):
        qtorch.quantize_dynamic(model, include="nothing*")
    with pytest.raises(TypeError, match="unknown option"):
        qtorch.quantize_dynamic(model, bogus=1)
    with pytest.raises(TypeError, match="nn.Module"):
        qtorch.quantize_dynamic(np.zeros(3))
    inplace = qtorch.quantize_dynamic(model, inplace=True)
    assert inplace is model and isinstance(model[0], qtorch.QLinear)


def test_quantize_dynamic_keeps_shared_modules_shared_and_leaves_attention_alone():
    shared = nn.Linear(8, 8)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    q = qtorch.quantize_dynamic(seq)
    assert q[0] is q[2] and isinstance(q[0], qtorch.QLinear)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    b = Block().eval()
    qb = qtorch.quantize_dynamic(b)
    assert isinstance(qb.fc, qtorch.QLinear) and not isinstance(qb.attn.out_proj, qtorch.QLinear)
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        np.testing.assert_allclose(qb(x).numpy(), b(x).numpy(), atol=0.05)


def test_state_dict_round_trip_through_torch_save():
    a = qtorch.quantize_dynamic(mlp())
    b = qtorch.quantize_dynamic(mlp())  # other weights
    x = torch.randn(4, 64)
    assert not torch.equal(a(x), b(x))
    sd = a.state_dict()
    assert sd["0.weight.packed"].dtype == torch.uint8 and sd["0.weight.scale"].shape == (48,)
    assert "0.weight.codes" not in sd and "0.weight.zero_point" not in sd  # symmetric: no zero point
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a(x), b(x))
    np.testing.assert_array_equal(a[0].weight.codes, b[0].weight.codes)
    # a 4-bit state dict changes the module to 4 bits
    c = qtorch.quantize_dynamic(mlp(), bits=4)
    b.load_state_dict(c.state_dict())
    assert b[0].weight.bits == 4 and c.state_dict()["0.weight.packed"].numel() == 48 * 64 // 2
    assert torch.equal(b(x), c(x))
    # strict loading reports what is missing or unexpected
    bad = dict(a.state_dict())
    del bad["0.weight.packed"]
    bad["0.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Missing key.*0.weight.packed.*|Unexpected key"):
        b.load_state_dict(bad)
    res = b.load_state_dict(bad, strict=False)
    assert "0.weight.packed" in res.missing_keys
    wrong = dict(a.state_dict())
    wrong["0.weight.packed"] = torch.zeros(7, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="need 3072 bytes"):
        b.load_state_dict(wrong)
    wrong = dict(a.state_dict())
    del wrong["0.weight.packed"]
    wrong["0.weight.codes"] = torch.zeros(3, 3, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="size mismatch"):
        b.load_state_dict(wrong)


def test_quantized_model_deepcopies_and_pickles():
    import copy
    import pickle

    q = qtorch.quantize_dynamic(mlp())
    x = torch.randn(3, 64)
    y = q(x)
    assert torch.equal(copy.deepcopy(q)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(q))(x), y)


# ---------------------------------------------------------------------------------------- QAT

def _fake(w: torch.Tensor, scheme: str, **options) -> torch.Tensor:
    """decode(encode(w)) by the scheme itself."""
    q = qcore.get_quantizer(scheme, **options)
    a = w.detach().numpy()
    params = q.fit(a)
    return torch.from_numpy(np.asarray(q.decode(q.encode(a, params), params), np.float32).reshape(a.shape))


QAT_CASES = [
    ("linear", dict(bits=8, symmetric=True, granularity="channel", axis=0)),
    ("linear", dict(bits=4, symmetric=False, granularity="tensor")),
    ("linear", dict(bits=2, symmetric=True, granularity="channel", axis=0)),
    ("linear", dict(bits=1, symmetric=True, granularity="tensor")),
    ("log", dict(bits=4, granularity="channel", axis=0)),
    ("kmeans", dict(bits=2, granularity="channel", axis=0)),
    ("kmeans", dict(bits=3)),
]


@pytest.mark.parametrize("scheme,options", QAT_CASES)
def test_qat_forward_equals_fake_quantization_by_the_scheme(scheme, options):
    assert scheme in qcore.list_schemes(), f"built-in scheme {scheme!r} failed to load"  # fail, never skip
    model = ArticleModel(in_ch=3)
    qat = qtorch.prepare_qat(model, scheme, **options)
    assert isinstance(qat.conv, qtorch.QATConv2d) and isinstance(qat.fc, qtorch.QATLinear)
    x = torch.randn(4, 3, 8, 8)
    wc = _fake(model.conv.weight, scheme, **options)
    wf = _fake(model.fc.weight, scheme, **options)
    h = F.relu(F.conv2d(x, wc, model.conv.bias))
    ref = F.linear(h.reshape(-1, 576), wf, model.fc.bias)
    out = qat(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with torch.no_grad():  # eval path (cached fake-quant weight) gives the same
        torch.testing.assert_close(qat.eval()(x), ref, rtol=0, atol=0)


def test_qat_backward_is_straight_through():
    model = ArticleModel()
    qat = qtorch.prepare_qat(model, weight_bits=2)
    x = torch.randn(6, 1, 8, 8)
    qat(x).square().sum().backward()
    # the same computation with the fake-quantized weights as leaves: their gradients are the STE gradients
    wc = _fake(model.conv.weight, "linear", bits=2, symmetric=True, granularity="channel", axis=0).requires_grad_()
    wf = _fake(model.fc.weight, "linear", bits=2, symmetric=True, granularity="channel", axis=0).requires_grad_()
    h = F.relu(F.conv2d(x, wc, model.conv.bias))
    F.linear(h.reshape(-1, 576), wf, model.fc.bias).square().sum().backward()
    torch.testing.assert_close(qat.conv.weight.grad, wc.grad)
    torch.testing.assert_close(qat.fc.weight.grad, wf.grad)
    assert model.fc.weight.grad is None  # prepare_qat made a copy


@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop"])
def test_qat_trains_with_any_optimizer(opt):
    qat = qtorch.prepare_qat(ArticleModel(), weight_bits=4)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "adam": lambda p: torch.optim.Adam(p, 1e-2),
            "rmsprop": lambda p: torch.optim.RMSprop(p, 1e-3)}[opt]
    optim = make(qat.parameters())
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    losses = []
    for _ in range(30):
        optim.zero_grad()
        loss = F.cross_entropy(qat(x), y)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_prepare_qat_inplace_keeps_the_parameters():
    model = ArticleModel()
    params = list(model.parameters())
    qat = qtorch.prepare_qat(model, inplace=True)
    assert qat is model and isinstance(model.fc, qtorch.QATLinear)
    assert [id(p) for p in qat.parameters()] == [id(p) for p in params]
    assert set(qat.state_dict()) >= {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}


def test_convert_gives_quantized_modules_with_the_trained_weights():
    model = ArticleModel()
    qat = qtorch.prepare_qat(model, weight_bits=2).eval()
    conv = qtorch.convert(qat)
    assert isinstance(conv.conv, qtorch.QConv2d) and isinstance(conv.fc, qtorch.QLinear)
    assert isinstance(conv.conv.weight, qcore.QTensor) and conv.conv.weight.bits == 2
    assert conv.conv.weight.shape == (16, 1, 3, 3) and conv.fc.weight.shape == (10, 576)
    assert isinstance(qat.fc, qtorch.QATLinear)  # convert copies by default
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        ref = qat(x)
        torch.testing.assert_close(conv(x), ref, rtol=0, atol=low_bit_tolerance(conv.fc, ref))
    qat8 = qtorch.prepare_qat(model, weight_bits=8).eval()
    conv8 = qtorch.convert(qat8)
    assert conv8.fc.uses_kernel
    with torch.inference_mode():
        torch.testing.assert_close(conv8(x), qat8(x), rtol=0, atol=0.05)
    # state dict of the converted model round-trips
    again = qtorch.convert(qtorch.prepare_qat(ArticleModel(), weight_bits=2))
    again.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x), conv(x), rtol=0, atol=0)


def test_qat_activation_fake_quant_through_qcore_observers():
    qat = qtorch.prepare_qat(ArticleModel(), weight_bits=8, activations={"bits": 4, "observer": "minmax"})
    aq = qat.fc.input_quantizer
    assert isinstance(aq, qtorch.ActivationFakeQuant) and aq.quantizer.observer_name == "minmax"
    x = torch.rand(8, 1, 8, 8)
    qat.train()
    qat(x)
    assert aq.calibrated and aq.params is not None and aq.uses_torch_ops  # linear/minmax: on torch ops
    # eval: frozen parameters; the input of fc is quantized to 4 bits (at most 16 distinct values)
    qat.eval()
    seen = {}

    def hook(module, inp, out):
        seen["x"] = aq(inp[0])

    handle = qat.fc.register_forward_hook(hook)
    with torch.no_grad():
        qat(torch.rand(3, 1, 8, 8))
    handle.remove()
    assert len(torch.unique(seen["x"])) <= 16
    # round trip of the activation parameters through the state dict
    other = qtorch.prepare_qat(ArticleModel(), weight_bits=8, activations={"bits": 4, "observer": "minmax"}).eval()
    other.load_state_dict(qat.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), qat(x), rtol=0, atol=0)
    # convert keeps the (frozen) activation quantizer
    conv = qtorch.convert(qat)
    assert isinstance(conv.fc.input_quantizer, qtorch.ActivationFakeQuant)
    with pytest.raises(TypeError, match="activations"):
        qtorch.prepare_qat(ArticleModel(), activations="yes")


# ---------------------------------------------------------------------------------------- digits (article §5)

@pytest.fixture(scope="module")
def digits():
    return load_digits_split(channels=1)


def _accuracy(model, data):
    model.eval()
    with torch.no_grad():
        return (model(data[2]).argmax(1) == data[3]).float().mean().item()


def test_digits_2bit_qat_recovers_and_beats_ptq(digits):
    torch.manual_seed(0)
    fp32 = train(ArticleModel(), digits, epochs=20, lr=1e-2, seed=0)
    acc_fp32 = _accuracy(fp32, digits)
    assert acc_fp32 > 0.95
    ptq = qtorch.convert(qtorch.prepare_qat(fp32, weight_bits=2))  # post-training: quantize the fp32 weights
    acc_ptq = _accuracy(ptq, digits)
    torch.manual_seed(1)
    qat = train(qtorch.prepare_qat(fp32, weight_bits=2), digits, epochs=10, lr=1e-3, seed=1)
    acc_qat = _accuracy(qat, digits)
    acc_conv = _accuracy(qtorch.convert(qat), digits)
    assert acc_conv == acc_qat  # the converted model computes with the weights QAT saw
    assert acc_qat >= acc_fp32 - 0.03, (acc_fp32, acc_ptq, acc_qat)
    assert acc_qat > acc_ptq, (acc_fp32, acc_ptq, acc_qat)
    assert isinstance(fp32.fc, nn.Linear) and not isinstance(fp32.fc, qtorch.QATLinear)
