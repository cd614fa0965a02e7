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


class CNN(nn.Module):
    """The benchmark's CIFAR-size network (smaller batches in the tests)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


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
    # ReLUs fused, conv -> conv hand uint8 codes, the last conv gives float (a flatten follows in forward)
    assert all(isinstance(q.features[i], nn.Identity) for i in (1, 3, 5))
    assert all(q.features[i].relu for i in (0, 2, 4))
    assert q.features[0].output_scale is not None and q.features[2].output_scale is not None
    assert q.features[4].output_scale is None and q.fc.output_scale is None
    assert q.features[2].output_scale == q.features[4].plan.input_scale


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
    ao = copy.deepcopy(model)
    ao_q = nn.Sequential(torch.ao.quantization.QuantStub(), ao, torch.ao.quantization.DeQuantStub()).eval()
    ao.fc = nn.Sequential(torch.ao.quantization.DeQuantStub(), torch.ao.quantization.QuantStub(), ao.fc)
    engine = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = "fbgemm"
        ao_q.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
        torch.ao.quantization.fuse_modules(ao.features, [["0", "1"], ["2", "3"], ["4", "5"]], inplace=True)
        torch.ao.quantization.prepare(ao_q, inplace=True)
        with torch.no_grad():
            for c in calib:
                ao_q(c)
        torch.ao.quantization.convert(ao_q, inplace=True)
        with torch.no_grad():
            ya = ao_q(x)
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
        qtorch.prepare(CNN(), bits=9)
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


def test_qat_with_fake_quantized_activations_converts_to_static_modules():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    qat = qtorch.prepare_qat(model, bits=8, activations=True)
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    qat.train()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(qat(torch.randn(32, 3, 8, 8)), torch.randint(0, 10, (32,))).backward()
        opt.step()
    qat.eval()
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
    q4 = qtorch.convert(qtorch.prepare_qat(model, bits=8, activations={"bits": 4}).eval())
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
