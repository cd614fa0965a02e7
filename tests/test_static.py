"""Static int8: qtorch.prepare -> calibration -> qtorch.convert, against torch float and torch.ao's static
quantized model, the QAT -> static path, fusion/chaining, state dicts, bad input and threads."""
import copy
import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qcore  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402
from qcore.testing.models import CifarCNN as CNN, torch_ao_static  # noqa: E402


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = CNN().eval()
    calib = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    prepared = qtorch.prepare(model)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return model, calib, prepared, qtorch.convert(prepared)


def test_prepare_keeps_float_outputs_and_convert_builds_static_modules(cnn):
    model, calib, prepared, q = cnn
    # the calibrated input parameters are the observers' (histogram, affine uint8)
    s, z = prepared.features[2].input_params()
    assert q.features[2].input_scale == pytest.approx(s) and q.features[2].input_zero_point == z
    prepared = copy.deepcopy(prepared)  # its observers would keep observing below
    assert isinstance(prepared.features[0], qtorch.ObservedConv2d) and isinstance(prepared.fc, qtorch.ObservedLinear)
    assert prepared.features[0].weight is not model.features[0].weight  # a copy by default
    with torch.no_grad():
        torch.testing.assert_close(prepared(calib[0]), model(calib[0]), rtol=0, atol=0)
    assert isinstance(q.features[0], qtorch.StaticConv2d) and isinstance(q.fc, qtorch.StaticLinear)
    # ReLUs fused, every layer hands uint8 codes to the next (the last conv's through the flatten, which fc reads
    # as the image it is), fc gives float
    assert all(isinstance(q.features[i], nn.Identity) for i in (1, 3, 5))
    assert all(q.features[i].relu for i in (0, 2, 4))
    assert all(q.features[i].output_scale is not None for i in (0, 2, 4)) and q.fc.output_scale is None
    assert q.features[2].output_scale == q.features[4].plan.input_scale
    assert q.features[4].output_scale == q.fc.input_scale and q.features[4].output_padding == (0, 0)
    assert q.features[0].output_padding == (1, 1)  # the next convolution's zero padding, carried in the codes


def test_static_model_close_to_float_and_to_torch_ao(cnn):
    model, calib, prepared, q = cnn
    torch.manual_seed(1)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        y = q(x)
    err = _rel(y, ref)
    assert err < 0.05
    # torch.ao eager static quantization of the same model (fbgemm, conv+relu fused, same calibration data)
    engine = torch.backends.quantized.engine
    try:
        ao_q = torch_ao_static(model, calib, "fbgemm")
        with torch.no_grad():
            ya = ao_q(x)
    finally:
        torch.backends.quantized.engine = engine
    err_ao = _rel(ya, ref)
    assert err <= 1.5 * err_ao + 1e-3, (err, err_ao)
    assert _rel(y, ya) < 0.05


def test_chained_codes_match_the_float_handoff(cnn):
    """Requantizing inside conv's epilogue gives (up to one code of rounding) what float output + quantize gives."""
    _, calib, _, q = cnn
    unchained = copy.deepcopy(q)
    for m in unchained.modules():
        if isinstance(m, qtorch.StaticConv2d):
            m._link(None)
    with torch.no_grad():
        a, b = q(calib[1]), unchained(calib[1])
    assert _rel(a, b) < 0.01
    # a producer called on its own returns its codes; dequantize() is the float activation
    with torch.no_grad():
        codes = q.features[0](calib[1])
        assert isinstance(codes, qtorch.QuantizedActivation) and codes.shape == (16, 32, 32, 32)
        f = unchained.features[0](calib[1])
        top = (255 - codes.zero_point) * codes.scale  # the consumer's calibrated range clips the largest values
        torch.testing.assert_close(codes.dequantize(), f.clamp(max=top), rtol=0, atol=codes.scale * 1.01)
        # any other module can still take it (as its float value)
        torch.testing.assert_close(unchained.features[2](codes), unchained.features[2](codes.dequantize()))


def test_input_layouts_and_devices_agree(cnn):
    _, calib, _, q = cnn
    x = calib[2]
    with torch.inference_mode():
        y = q(x)
        torch.testing.assert_close(q(x.contiguous(memory_format=torch.channels_last)), y, rtol=0, atol=0)
        torch.testing.assert_close(q(x.double()), y.double(), rtol=0, atol=0)
        torch.testing.assert_close(q(x[:, :, :, :].transpose(2, 3).transpose(2, 3)), y, rtol=0, atol=0)
        assert q(x[:0]).shape == (0, 10)


def test_state_dict_round_trip(cnn, tmp_path):
    _, calib, prepared, q = cnn
    path = tmp_path / "static.pt"
    torch.save(q.state_dict(), path)
    other = qtorch.convert(copy.deepcopy(prepared))
    for m in other.modules():  # disturb it, then load
        if isinstance(m, qtorch.StaticConv2d):
            m.weight_codes.zero_()
    other.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(calib[0]), q(calib[0]), rtol=0, atol=0)


def test_grouped_depthwise_and_dilated_convolutions_close_to_float():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),       # depthwise
        nn.Conv2d(16, 24, 1, groups=4),                              # grouped pointwise
        nn.Conv2d(24, 12, (3, 5), stride=(2, 1), padding="valid")).eval()
    prepared = qtorch.prepare(model, observer="minmax")
    with torch.no_grad():
        for _ in range(2):
            prepared(torch.randn(4, 8, 12, 12))
    q = qtorch.convert(prepared)
    assert q[2].groups == 16 and q[4].groups == 4 and q[0].relu and q[2].relu and not q[4].relu
    x = torch.randn(4, 8, 12, 12)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05


def test_linear_chain_and_include_exclude():
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    prepared = qtorch.prepare(mlp, exclude="4")
    assert type(prepared[4]) is nn.Linear
    with torch.no_grad():
        prepared(torch.randn(64, 20))
    q = qtorch.convert(prepared)
    assert q[0].output_scale is not None and q[2].output_scale is None  # the next layer is float: float output
    x = torch.randn(7, 5, 20)  # any leading shape
    with torch.no_grad():
        y = q(x)
        assert y.shape == (7, 5, 3)
        assert _rel(y, mlp(x)) < 0.05


def test_convert_refuses_an_uncalibrated_model():
    prepared = qtorch.prepare(CNN())
    with pytest.raises(RuntimeError, match="calibration"):
        qtorch.convert(prepared)


def test_prepare_arguments_and_bad_input(cnn):
    with pytest.raises(TypeError, match="unknown option"):
        qtorch.prepare(CNN(), granularity="channel")
    with pytest.raises(ValueError, match="bits"):
        qtorch.prepare(CNN(), activation_bits=9)
    with pytest.raises(qcore.QcoreError):
        qtorch.prepare(CNN(), observer="no-such-observer")
    with pytest.warns(UserWarning, match="no nn.Linear"):
        qtorch.prepare(nn.Sequential(nn.ReLU()))
    _, calib, _, q = cnn
    x = calib[0].clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(qcore.InputError, match="NaN or Inf"):
        q(x)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        q.features(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="smaller than the"):
        q.features[4](torch.zeros(1, 64, 1, 0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q.fc(np.zeros((1, 4096), np.float32))


def _trained_qat(model, steps=5):
    """``prepare_qat`` (8-bit weights, fake-quantized activations), a few SGD steps on random 3x8x8 batches, eval mode."""
    qat = qtorch.prepare_qat(model, weight_bits=8, activations=True)
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    qat.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(qat(torch.randn(32, 3, 8, 8)), torch.randint(0, 10, (32,))).backward()
        opt.step()
    return qat.eval()


def test_qat_with_fake_quantized_activations_converts_to_static_modules():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    qat = _trained_qat(model)
    q = qtorch.convert(qat)
    assert isinstance(q[0], qtorch.StaticConv2d) and isinstance(q[3], qtorch.StaticLinear) and q[0].relu
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        a, b = q(x), qat(x)
    assert _rel(a, b) < 0.02
    # the static weights are the codes the QAT model trained with
    qt = qat[0].quantized_weight()
    np.testing.assert_array_equal(q[0].weight_codes.numpy(), qt.codes)
    # 4-bit activations are not the static int8 path: the weight-only modules with the fake quantizer stay
    q4 = qtorch.convert(qtorch.prepare_qat(model, weight_bits=8, activations={"bits": 4}).eval())
    assert isinstance(q4[3], qtorch.QLinear)


def test_threads_share_a_static_model(cnn):
    _, calib, _, q = cnn
    with torch.no_grad():
        want = [q(c) for c in calib]
    errors = []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(3):
                    if not torch.equal(q(calib[i]), want[i]):
                        errors.append(i)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ------------------------------------------------------------------------------------------------ fusion


class FunctionalCNN(nn.Module):
    """CifarCNN's layers written as a user writes them: attributes, BatchNorm2d after each convolution, and the
    three ReLU spellings (F.relu, torch.relu, an nn.ReLU(inplace=True) module) called in forward."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64)
        self.c3, self.b3 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        x = nn.functional.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = self.act(self.b3(self.c3(x)))
        return self.fc(torch.flatten(x, 1))


def _random_bn(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.3)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data[::7] *= -1  # negative BN scales flip the folded channel
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def _sequential_twin(f):
    """The same layers (shared weights) as nn.Sequential children: what module-order fusion sees."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(f.c1, f.b1, nn.ReLU(), f.c2, f.b2, nn.ReLU(), f.c3, f.b3, nn.ReLU())
            self.fc = f.fc

        def forward(self, x):
            return self.fc(torch.flatten(self.features(x), 1))
    return copy.deepcopy(Seq()).eval()


def _static(model, calib, **kw):
    prepared = qtorch.prepare(model, **kw)
    with torch.no_grad():
        for c in calib:
            prepared(c)
    return qtorch.convert(prepared)


@pytest.fixture(scope="module")
def functional():
    torch.manual_seed(10)
    model = _random_bn(FunctionalCNN()).eval()
    calib = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    return model, calib, _static(model, calib)


def test_functional_relu_and_batch_norm_are_fused(functional):
    model, calib, q = functional
    assert isinstance(q, FunctionalCNN)  # the user's class and forward are kept
    assert all(isinstance(getattr(q, n), nn.Identity) for n in ("b1", "b2", "b3", "act"))
    assert q.c1.relu and q.c2.relu and q.c3.relu and not q.fc.relu
    # conv -> BN -> F.relu -> conv hands uint8 codes; c3's go through the flatten to fc
    assert q.c1.output_scale == q.c2.input_scale and q.c2.output_scale == q.c3.input_scale
    assert q.c3.output_scale == q.fc.input_scale
    torch.manual_seed(11)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref, y = model(x), q(x)
    err = _rel(y, ref)
    # torch.ao eager static quantization of the same model: conv+BN(+ReLU module) fused by fuse_modules, the
    # functional ReLUs run on its quantized tensors
    import torch.ao.quantization as tq
    ao = nn.Sequential(tq.QuantStub(), copy.deepcopy(model), tq.DeQuantStub()).eval()
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ao.qconfig = tq.get_default_qconfig("fbgemm")
            tq.fuse_modules(ao[1], [["c1", "b1"], ["c2", "b2"], ["c3", "b3", "act"]], inplace=True)
            ao[1].fc = nn.Sequential(tq.DeQuantStub(), tq.QuantStub(), ao[1].fc)  # flatten of a quantized tensor
            tq.prepare(ao, inplace=True)
            with torch.no_grad():
                for c in calib:
                    ao(c)
            tq.convert(ao, inplace=True)
            with torch.no_grad():
                ya = ao(x)
    finally:
        torch.backends.quantized.engine = engine
    err_ao = _rel(ya, ref)
    assert err < 0.05 and err <= 1.5 * err_ao + 1e-3, (err, err_ao)


def test_fused_and_module_order_fusion_compute_the_same(functional, monkeypatch):
    """F.relu in forward (fx) and nn.ReLU children of an nn.Sequential (fx, and module order when fx is off)
    give bit-identical models; BN folded at convert equals BN folded by torch before prepare up to rounding."""
    model, calib, q = functional
    x = calib[0]
    seq = _sequential_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), model(x), rtol=0, atol=0)
        q_seq = _static(seq, calib)
        torch.testing.assert_close(q_seq(x), q(x), rtol=0, atol=0)
        from qcore.integrations.torch import _walk
        monkeypatch.setattr(_walk, "trace", lambda model: None)  # as if fx could not trace
        q_order = _static(seq, calib)
        assert all(type(q_order.features[i]) is nn.Identity for i in (1, 2, 4, 5, 7, 8))
        torch.testing.assert_close(q_order(x), q(x), rtol=0, atol=0)
        # BN folded by torch's own fusion before prepare: the same static model up to float rounding
        pre = copy.deepcopy(seq)
        for i in (0, 3, 6):
            pre.features[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(pre.features[i], pre.features[i + 1])
            pre.features[i + 1] = nn.Identity()
        q_pre = _static(pre, calib)
        for a, b in ((q_pre.features[0], q.c1), (q_pre.features[3], q.c2), (q_pre.features[6], q.c3)):
            assert (a.weight_codes != b.weight_codes).float().mean() < 1e-3
            torch.testing.assert_close(a.bias, b.bias)
        assert _rel(q_pre(x), q(x)) < 2e-3


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; module-order fusion still applies."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = self.features(x)
        if x.mean() > 100:  # a branch on a value
            x = x * 2
        return self.fc(nn.functional.relu(torch.flatten(x, 1)))


def test_untraceable_model_converts_with_module_order_fusion():
    torch.manual_seed(12)
    model = _random_bn(Untraceable()).eval()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    q = _static(model, calib)
    assert type(q.features[1]) is nn.Identity and type(q.features[2]) is nn.Identity and q.features[0].relu
    assert q.features[0].output_scale is not None  # conv -> conv inside the Sequential: uint8 codes
    assert not q.features[3].relu  # the functional relu after flatten is not a layer's
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05


def test_fusion_only_where_the_layer_output_has_one_reader():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            y = self.a(x)
            z = self.act(self.b(self.act(y)))  # self.act also after b
            return z + y  # y has a second reader: a's ReLU is not fused (a standalone clamp on codes)

    torch.manual_seed(13)
    model = Branchy().eval()
    calib = [torch.randn(4, 3, 8, 8)]
    q = _static(model, calib)
    assert not q.a.relu and q.b.relu and q.a.output_scale is not None
    assert isinstance(q.qcore_ops.act, qtorch.QClamp) and isinstance(q.qcore_ops.add, qtorch.QAdd)
    assert type(q.act) is nn.Identity  # both of its calls became quantized ops
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05


def test_quantized_activation_is_seen_as_its_float_by_torch_functions(cnn):
    _, calib, _, q = cnn
    with torch.no_grad():
        codes = q.features[0](calib[0])
    assert codes.nonnegative and nn.functional.relu(codes) is codes and torch.relu(codes) is codes
    f = codes.dequantize()
    torch.testing.assert_close(torch.flatten(codes, 1), torch.flatten(f, 1), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([codes, codes]), torch.cat([f, f]), rtol=0, atol=0)
    raw = qtorch.QuantizedActivation(codes.codes, codes.scale, 100, codes.channels, pad=codes.pad)  # zp 100
    torch.testing.assert_close(nn.functional.relu(raw).dequantize(), raw.dequantize().relu(), rtol=0, atol=0)


def test_prepare_warns_about_batch_norm_in_training_mode():
    with pytest.warns(UserWarning, match="eval"):
        qtorch.prepare(FunctionalCNN())


def test_qat_conv_batch_norm_folds_into_the_trained_codes():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 10))
    qat = _trained_qat(model)
    _random_bn(qat)
    q = qtorch.convert(qat)
    assert isinstance(q[0], qtorch.StaticConv2d) and type(q[1]) is nn.Identity and q[0].relu
    neg = (qat[1].weight < 0).numpy()
    want = qat[0].quantized_weight().codes.astype(np.int16)
    want[neg] *= -1
    np.testing.assert_array_equal(q[0].weight_codes.numpy(), want)  # the trained codes (sign folded)
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        assert _rel(q(x), qat(x)) < 0.02


def test_fused_relu_is_the_unfused_layer_followed_by_relu(functional):
    """The epilogue's ReLU is torch.relu of the same layer's float output: bit for bit, BN folded in both."""
    _, calib, q = functional
    fused = copy.deepcopy(q.c3)
    fused._link(None)  # float output
    unfused = copy.deepcopy(fused)
    unfused.relu = False
    with torch.no_grad():
        codes = q.c2(q.c1(calib[1]))
        a, b = fused(codes), torch.relu(unfused(codes))
    assert fused.relu and (a >= 0).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
