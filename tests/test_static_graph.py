"""Static int8 of real CNN graphs (issue 23): qtorch.prepare / convert on ResNet-18 and MobileNetV2 and on models
using every op the graph mode quantizes, against fp32 and torch.ao FX graph mode; the float fallback and its
warning; calibration shapes; no calibration; pickling and state dicts."""
import copy
import io
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from qcore.integrations import torch as qtorch  # noqa: E402
from qcore.kernels import conv_reference as ref  # noqa: E402
from qcore.ops import cnn  # noqa: E402
from qcore.testing.models import mobilenet_v2, resnet18, set_batch_norm_statistics, torch_ao_fx  # noqa: E402


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _convert(model, calib, **kw):
    prepared = qtorch.prepare(model, **kw)
    with torch.no_grad():
        for c in calib:
            prepared(c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = qtorch.convert(prepared)
    return prepared, q, [str(w.message) for w in caught if "convert" in str(w.message)]


_QUANTIZED = (qtorch.StaticConv2d, qtorch.StaticLinear, qtorch.QAdd, qtorch.QMaxPool2d, qtorch.QAvgPool2d,
              qtorch.QAdaptiveAvgPool2d, qtorch.QFlatten, qtorch.QClamp, qtorch.QCat, qtorch.QTableActivation,
              qtorch.QuantizeActivation, qtorch.DequantizeActivation)


def _called_modules(q):
    return [q.get_submodule(n.target) for n in q._qcore_graph.nodes if n.op == "call_module"]


def _fused_residual_convs(q):
    """The convolutions called with a residual (an addition fused into their epilogue)."""
    return [q.get_submodule(n.target) for n in q._qcore_graph.nodes
            if n.op == "call_module" and len(n.args) == 2 and isinstance(q.get_submodule(n.target), qtorch.StaticConv2d)]


def _float_ops(q):
    """Graph nodes that compute on tensors outside qcore's quantized modules."""
    return [n for n in q._qcore_graph.nodes if n.op in ("call_function", "call_method")
            and n.target not in ("size", "dim") and n.target is not getattr]


@pytest.fixture(scope="module")
def resnet():
    model = resnet18(num_classes=10, image_size=48)
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(8, 3, 48, 48, generator=g) for _ in range(3)]
    prepared, q, warned = _convert(model, calib)
    return model, calib, prepared, q, warned, torch_ao_fx(model, calib, "x86")


def test_resnet18_converts_entirely_to_int8(resnet):
    model, calib, prepared, q, warned, _ = resnet
    assert warned == []  # no float fallback anywhere
    mods = _called_modules(q)
    assert all(isinstance(m, _QUANTIZED) for m in mods), [type(m) for m in mods if not isinstance(m, _QUANTIZED)]
    assert _float_ops(q) == []
    assert sum(isinstance(m, qtorch.StaticConv2d) for m in mods) == 20
    # every residual addition (and the ReLU after it) is fused into the epilogue of the block's last convolution
    fused = _fused_residual_convs(q)
    assert len(fused) == 8 and not any(isinstance(m, qtorch.QAdd) for m in mods)
    assert all(m.activation == (0.0, float("inf")) for m in fused)
    assert q.layer1[0].conv2 in fused and q.layer2[0].conv2 in fused
    assert isinstance(q, type(model).__mro__[0]) and isinstance(q.maxpool, qtorch.QMaxPool2d)
    assert isinstance(q.bn1, nn.Identity) and isinstance(q.layer1[0].bn2, nn.Identity)  # folded
    # the only float values are the input and the logits: every activation between them is uint8 codes
    assert sum(isinstance(m, qtorch.DequantizeActivation) for m in mods) == 0
    # codes carry the zero padding of the convolutions that read them: the stem's go to the max pooling (no
    # border), the pooling's to layer1's 3x3 convolutions
    assert q.conv1.output_padding == (0, 0) and q.maxpool.output_border == (1, 1)
    assert q.layer1[0].conv1.output_padding == (1, 1)


def test_resnet18_accuracy_against_fp32_and_torch_ao(resnet):
    model, calib, _, q, _, ao = resnet
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(32, 3, 48, 48, generator=g) for _ in range(3)]
    with torch.no_grad():
        ref32 = torch.cat([model(x) for x in xs])
        y = torch.cat([q(x) for x in xs])
        ya = torch.cat([ao(x) for x in xs])
    err, err_ao = _rel(y, ref32), _rel(ya, ref32)
    assert err < 0.1 and err <= 1.5 * err_ao, (err, err_ao)
    top1, top1_ao = [(t.argmax(1) == ref32.argmax(1)).float().mean().item() for t in (y, ya)]
    assert top1 >= top1_ao - 3 / 96, (top1, top1_ao)  # random inputs, small margins: three images of slack


def test_observers_one_per_value_shared_by_layers(resnet):
    prepared = resnet[2]
    obs = prepared.qcore_observers
    assert isinstance(prepared.layer1[0].conv1, qtorch.ObservedConv2d)
    # layer1[0].conv1 reads the max pooling's output, which keeps the stem's parameters: one observer
    stem = obs["relu"]
    assert prepared.layer1[0].conv1.input_quantizer is stem.input_quantizer
    assert prepared.layer1[0].conv1.observe_input is False
    assert stem.observed_batches == 3 and stem.shape == (8, 64, 24, 24)
    s, z = prepared.layer1[0].conv1.input_params()
    assert (s, z) == stem.input_params()


def test_resnet18_other_input_size_than_calibration(resnet):
    """Per-tensor parameters carry over to another input size (adaptive pooling before the classifier)."""
    model, calib, _, q, _, ao = resnet
    x = torch.randn(8, 3, 64, 80)
    with torch.no_grad():
        r = model(x)
        err, err_ao = _rel(q(x), r), _rel(ao(x), r)
    assert err < 0.3 and err <= 1.5 * err_ao, (err, err_ao)


def test_mobilenet_v2_converts_entirely_to_int8():
    model = mobilenet_v2(num_classes=10, image_size=32)
    g = torch.Generator().manual_seed(5)
    calib = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    _, q, warned = _convert(model, calib)
    assert warned == []
    mods = _called_modules(q)
    assert all(isinstance(m, _QUANTIZED) for m in mods) and _float_ops(q) == []
    convs = [m for m in mods if isinstance(m, qtorch.StaticConv2d)]
    assert len(convs) == 52 and sum(m.groups > 1 for m in convs) == 17
    assert sum(m.activation == (0.0, 6.0) for m in convs) == 35  # ReLU6 clamped in the epilogue
    fused = _fused_residual_convs(q)  # x + conv(x): added in the projection convolution's epilogue
    assert len(fused) == 10 and all(m.kernel_size == (1, 1) and m.activation is None for m in fused)
    x = torch.randn(8, 3, 32, 32, generator=g)
    ao = torch_ao_fx(model, calib, "x86")
    with torch.no_grad():
        r = model(x)
        err, err_ao = _rel(q(x), r), _rel(ao(x), r)
    assert err <= 1.5 * err_ao, (err, err_ao)


class EveryOp(nn.Module):
    """Each op the graph mode quantizes, spelled in the usual ways."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(16, 12, 3, padding=1)
        self.c = nn.Conv2d(20, 20, 3, padding=1, groups=20)
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(20 * 4 * 4, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([F.relu6(self.a(x)), torch.sigmoid(self.b(x))], 1)   # 8 + 12 channels
        y = F.hardtanh(F.max_pool2d(y, 2, 2), -1.0, 3.0)                  # a standalone clamp
        y = F.relu(torch.clamp(self.c(y), 0.0, 4.0) + y)                  # clamp fused; add + ReLU
        y = self.drop(self.pool(y))
        y = y.view(y.size(0), -1)
        return self.fc(y)


def test_every_op_quantized_and_close_to_float():
    torch.manual_seed(20)
    model = set_batch_norm_statistics(EveryOp(), [torch.randn(8, 3, 16, 16)])
    calib = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    _, q, warned = _convert(model, calib)
    assert warned == []
    mods = _called_modules(q)
    assert all(isinstance(m, _QUANTIZED) for m in mods) and _float_ops(q) == []
    kinds = {type(m).__name__ for m in mods}
    assert {"QCat", "QTableActivation", "QClamp", "QAdd", "QMaxPool2d", "QAvgPool2d", "QFlatten"} <= kinds
    assert q.a.activation == (0.0, 6.0) and q.c.activation == (0.0, 4.0)
    assert {m.function for m in mods if isinstance(m, qtorch.QTableActivation)} == {"hardswish", "sigmoid"}
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.06


def test_table_and_clamp_ops_equal_the_reference():
    """The graph's QClamp / QTableActivation are table lookups of the documented float64 function."""
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, (2, 5, 6, 8), dtype=np.uint8)
    a = qtorch.QuantizedActivation(buf, 0.05, 100, 7, pad=(1, 1))
    clamp = qtorch.QClamp(-1.0, 3.0)
    out = clamp(a)
    img = a.image()
    want = np.clip(np.rint(np.clip((img.interior()[..., :7].astype(np.float64) - 100) * 0.05, -1, 3) / 0.05) + 100,
                   0, 255)
    np.testing.assert_array_equal(out.image().interior()[..., :7], want)
    hs = qtorch.QTableActivation("hardswish", 0.02, 30)
    out = hs(a)
    v = (img.interior()[..., :7].astype(np.float64) - 100) * 0.05
    want = np.clip(np.rint(v * np.clip(v + 3, 0, 6) / 6 / 0.02) + 30, 0, 255)
    np.testing.assert_array_equal(out.image().interior()[..., :7], want)
    np.testing.assert_array_equal(out.image().interior(), ref.lookup(img.interior(), hs._tables[(0.05, 100)]))
    # on a float tensor the module computes the float op
    t = torch.randn(3, 4)
    torch.testing.assert_close(hs(t), F.hardswish(t))
    torch.testing.assert_close(clamp(t), t.clamp(-1, 3))


class WithUnsupported(nn.Module):
    """A squeeze-excitation style gate (elementwise product) and a layer norm: no quantized kernel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.norm = nn.LayerNorm([8, 8, 8])
        self.out = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x * torch.sigmoid(self.gate(x))
        return self.out(self.norm(x))


def test_unsupported_ops_run_in_float_with_one_warning():
    torch.manual_seed(21)
    model = WithUnsupported().eval()
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    _, q, warned = _convert(model, calib)
    assert len(warned) == 1
    assert "2 operation(s)" in warned[0] and "mul" in warned[0] and "norm (LayerNorm)" in warned[0]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05
    mods = _called_modules(q)
    assert any(isinstance(m, qtorch.DequantizeActivation) for m in mods)  # codes back to float for the mul


def test_no_calibration_is_an_error():
    prepared = qtorch.prepare(resnet18(num_classes=4, image_size=32))
    with pytest.raises(RuntimeError, match="calibration"):
        qtorch.convert(prepared)


def test_pickle_deepcopy_and_state_dict(resnet):
    _, calib, prepared, q, _, _ = resnet
    x = calib[0][:2]
    with torch.no_grad():
        y = q(x)
        for other in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
            assert type(other).__name__ == "ResNet18"
            torch.testing.assert_close(other(x), y, rtol=0, atol=0)
        buf = io.BytesIO()
        torch.save(q.state_dict(), buf)
        again = qtorch.convert(copy.deepcopy(prepared))
        for m in again.modules():
            if isinstance(m, qtorch.QAdd):
                m.output_scale = 1.0
        buf.seek(0)
        again.load_state_dict(torch.load(buf, weights_only=True))
        torch.testing.assert_close(again(x), y, rtol=0, atol=0)


def test_fused_residual_conv_is_the_codes_reference(resnet):
    """layer1[0].conv2 of the converted ResNet (conv -> BN -> + identity -> ReLU in one epilogue), run alone,
    equals the numpy reference on the codes it was given."""
    calib, q = resnet[1], resnet[3]
    conv = q.layer1[0].conv2
    captured = {}
    h = conv.register_forward_hook(lambda m, i, o: captured.update(x=i[0], r=i[1], out=o))
    with torch.no_grad():
        q(calib[1][:2])
    h.remove()
    x, r, out = captured["x"].image(), captured["r"].image(), captured["out"].image()
    assert r.border == out.border and r.codes.shape == out.codes.shape  # one layout for the residual and the sum
    acc = ref.conv2d_int32(x.interior(), x.zero_point, conv.weight_codes.numpy(), conv.stride, conv.padding,
                           conv.dilation, conv.groups)
    s, z = conv.output_scale, conv.output_zero_point
    mult = (np.float64(np.float32(conv.input_scale)) * conv.weight_scale.numpy().astype(np.float64) / s)
    bias = (conv.bias.numpy().astype(np.float64) / s).astype(np.float32)
    lo, hi = cnn.code_bounds(0.0, float("inf"), s, z)
    want = ref.conv_epilogue(acc, mult.astype(np.float32), bias, (lo, hi), z,
                             residual=(r.interior()[..., :64], r.zero_point, np.float32(r.scale / s)))
    np.testing.assert_array_equal(out.interior()[..., :64], want)
    # given its residual in another layout, the layer computes the unfused sum: within a code or two
    other = qtorch.QuantizedActivation(np.ascontiguousarray(r.interior()), r.scale, r.zero_point, 64)
    with torch.no_grad():
        y = conv(captured["x"], other)
    assert np.abs(y.image().interior().astype(np.int64) - out.interior().astype(np.int64)).max() <= 2
