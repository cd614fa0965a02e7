"""Hessians in folds (qcore.ptq.hessian): the one accumulator, HessianFolds, the Hessian file (and older files),
and the planner driver (qcore.quantization.driver) that carries them to planners."""
import concurrent.futures
import json
import pickle
import warnings

import numpy as np
import pytest

import qcore
from qcore.model import safetensors_io
from qcore.ptq import HessianAccumulator, HessianFolds, hessian, load_hessians, save_hessians
from qcore.quantization.driver import PlanItem, run_plan


def mean_xxt(x):
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    return x.T @ x / x.shape[0]


def test_folds_deal_samples_round_robin():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 5, 8)).astype(np.float32), rng.standard_normal((4, 5, 8)).astype(np.float32)]
    acc = HessianAccumulator(folds=2)
    for b in batches:
        acc.update(b)
    samples = np.concatenate(batches)  # 7 samples of 5 rows: samples 0, 2, 4, 6 -> fold 0; 1, 3, 5 -> fold 1
    f = acc.folds()
    assert f.k == 2 and f.counts == (20, 15) and acc.count == 35
    np.testing.assert_allclose(f.fold(0), mean_xxt(samples[0::2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.fold(1), mean_xxt(samples[1::2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.full(), mean_xxt(samples), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc.value(), mean_xxt(samples), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.rest(0), f.fold(1))
    np.testing.assert_allclose(f.abs_mean(), np.abs(samples).reshape(-1, 8).mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(f), f.full())  # array-like: the mean over everything
    three = HessianAccumulator(folds=3).update(samples.reshape(-1, 8)).folds()  # 2-d: each row a sample
    np.testing.assert_allclose(three.rest(1), mean_xxt(samples.reshape(-1, 8)[[i for i in range(35) if i % 3 != 1]]),
                               rtol=1e-5, atol=1e-6)
    assert hessian(samples).shape == (8, 8)


def test_torch_tensors_accumulate_like_arrays():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((6, 4, 16)).astype(np.float32)
    a = HessianAccumulator(2).update(x).folds()
    b = HessianAccumulator(2).update(torch.from_numpy(x).double()).folds()
    for i in range(2):
        np.testing.assert_array_equal(a.folds[i], b.folds[i])


def test_too_few_samples_leave_one_fold():
    f = HessianAccumulator(folds=2).update(np.ones((1, 7, 4), np.float32)).folds()  # one sample
    assert f.k == 1 and f.counts == (7,)


def test_bad_input():
    acc = HessianAccumulator(2)
    with pytest.raises(qcore.InputError):
        acc.update(np.array([[1.0, np.nan]], np.float32))
    acc.update(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="width 4 after width 3"):
        acc.update(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="numbers"):
        acc.update(np.array([["a", "b"]]))
    for bad in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="folds"):
            HessianAccumulator(bad)
    with pytest.raises(ValueError, match="no activations"):
        HessianAccumulator().folds()
    with pytest.raises(ValueError, match="square"):
        HessianFolds([np.ones((3, 4))])
    with pytest.raises(ValueError, match="fold 1"):
        HessianFolds([np.eye(3), np.eye(4)])
    with pytest.raises(ValueError, match="counts"):
        HessianFolds([np.eye(3)], counts=[1, 2])
    with pytest.raises(ValueError, match="two or more"):
        HessianFolds.of(np.eye(3)).rest(0)


def test_file_round_trip_and_older_files(tmp_path):
    rng = np.random.default_rng(2)
    hs = {"l1.weight": HessianAccumulator(2).update(rng.standard_normal((64, 8)).astype(np.float32)).folds(),
          "l2.weight": np.eye(4, dtype=np.float32)}
    path = tmp_path / "h.safetensors"
    save_hessians(path, hs)
    back = load_hessians(path)
    assert set(back) == set(hs) and back.version == "2"
    assert back["l1.weight"].counts == hs["l1.weight"].counts and back["l1.weight"].k == 2
    np.testing.assert_array_equal(back["l1.weight"].folds[1], hs["l1.weight"].folds[1])
    assert back["l2.weight"].k == 1 and back["l2.weight"].counts is None
    assert pickle.loads(pickle.dumps(back))["l1.weight"].counts == hs["l1.weight"].counts  # pickles as its path
    # a stage-2 file (version 1: one tensor per layer, row counts in "samples") and a plain safetensors file
    old = tmp_path / "old.safetensors"
    h = mean_xxt(rng.standard_normal((50, 8))).astype(np.float32)
    safetensors_io.write_safetensors(old, [safetensors_io.Entry.of("l1.weight", h)],
                                     {"format": "qcore-hessians", "version": "1", "samples": json.dumps({"l1.weight": 50})})
    f = load_hessians(old)["l1.weight"]
    assert f.k == 1 and f.counts == (50,)
    np.testing.assert_array_equal(f.full(), h)
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"l1.weight": h}, str(plain))
    assert load_hessians(plain)["l1.weight"].k == 1
    # a newer version, or broken fold metadata: a clear FormatError
    for meta in ({"format": "qcore-hessians", "version": "9"},
                 {"format": "qcore-hessians", "version": "2", "folds": "[1"},
                 {"format": "qcore-hessians", "version": "2", "folds": json.dumps({"l1.weight": [5, 5]})}):
        bad = tmp_path / "bad.safetensors"
        safetensors_io.write_safetensors(bad, [safetensors_io.Entry.of("l1.weight@fold0", h)], meta)
        with pytest.raises(qcore.FormatError):
            load_hessians(bad)


# -- the driver ----------------------------------------------------------------------------------------------
class _Item:
    def __init__(self, w, h):
        self.w, self.h = w, h

    def __call__(self):
        return self.w, self.h


def _items(folds=2):
    rng = np.random.default_rng(4)
    out = []
    for i, (n, k) in enumerate(((32, 64), (16, 32), (24, 64))):
        w = rng.standard_normal((n, k)).astype(np.float32)
        h = HessianAccumulator(folds).update(rng.standard_normal((300, k)).astype(np.float32)).folds()
        out.append(PlanItem(f"t{i}.weight", w.size, _Item(w, h)))
    return out


def test_run_plan_through_an_executor_is_the_same_plan():
    planner = qcore.get_quantizer("mixed", candidates="linear:2:channel,linear:4:channel,linear:8:channel")
    items = _items()
    cap = 4.0 * sum(it.size for it in items)
    serial = run_plan(planner, items, method="gptq", capacity_bits=cap)
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as ex:
        parallel = run_plan(planner, items, method="gptq", capacity_bits=cap, measure_map=ex.map)
    assert serial == parallel
    assert sum(8 * c["nbytes"] for c in serial) <= cap
    assert all(c["held_out"] and json.loads(json.dumps(c)) == c for c in serial)


def test_run_plan_warns_once_about_one_fold():
    planner = qcore.get_quantizer("mixed", candidates="linear:2:channel,linear:4:channel")
    items = _items(folds=1)
    with pytest.warns(UserWarning, match="3 tensor"):
        run_plan(planner, items, capacity_bits=4.0 * sum(it.size for it in items))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_plan(planner, _items(folds=2), capacity_bits=4.0 * sum(it.size for it in items))


def test_run_plan_checks_the_planners_answer():
    class Overspend(type(qcore.get_quantizer("mixed"))):
        name = "overspend-test"

        def plan(self, measurements, *, capacity_bits=None, target_sqnr=None, names=None):
            return [len(m) - 1 for m in measurements]

    class Short(Overspend):
        def plan(self, measurements, *, capacity_bits=None, target_sqnr=None, names=None):
            return [0]

    items = _items()
    cap = 3.0 * sum(it.size for it in items)
    with pytest.raises(RuntimeError, match="above the capacity"):
        run_plan(Overspend(candidates="linear:2:channel,linear:8:channel"), items, capacity_bits=cap)
    with pytest.raises(RuntimeError, match="one index per tensor"):
        run_plan(Short(candidates="linear:2:channel,linear:8:channel"), items, capacity_bits=cap)
    with pytest.raises(ValueError, match="method"):
        run_plan(Short(), items, method="awq")


def test_sources_weigh_the_same_whatever_their_size():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, 6)).astype(np.float32)          # a small source
    b = 3 * rng.standard_normal((400, 6)).astype(np.float32)      # a large, louder one
    acc = HessianAccumulator(folds=2)
    acc.update(a, source=0).update(b[:150], source=1).update(b[150:], source=1)
    f = acc.folds()
    assert f.counts == (220, 220) and acc.sources == [0, 1]
    for i in range(2):
        np.testing.assert_allclose(f.fold(i), (mean_xxt(a[i::2]) + mean_xxt(b[i::2])) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc.value(), (mean_xxt(a) + mean_xxt(b)) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc.abs_mean(), (np.abs(a).mean(0) + np.abs(b).mean(0)) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="source"):
        acc.update(a, source=-1)


def test_several_hessian_files_mix_with_equal_weight(tmp_path):
    from qcore.cli.main import main

    rng = np.random.default_rng(6)
    w = {"a.weight": rng.standard_normal((16, 32)).astype(np.float32),
         "b.weight": rng.standard_normal((8, 16)).astype(np.float32)}
    xa, xb = rng.standard_normal((100, 32)).astype(np.float32), 5 * rng.standard_normal((900, 32)).astype(np.float32)
    one = {"a.weight": HessianAccumulator(2).update(xa).folds(),
           "b.weight": HessianAccumulator(2).update(xa[:, :16]).folds()}
    two = {"a.weight": HessianAccumulator(2).update(xb).folds()}       # lacks b: b mixes from the first only
    p1, p2 = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_hessians(p1, one)
    save_hessians(p2, two)
    mixed = HessianFolds.mix([one["a.weight"], two["a.weight"]])
    assert mixed.counts == (500, 500)
    np.testing.assert_allclose(mixed.full(), (mean_xxt(xa) + mean_xxt(xb)) / 2, rtol=1e-5, atol=1e-5)
    opts = dict(bits=4, granularity="group", group_size=16)
    qm = qcore.quantize_model(w, "linear", method="gptq", hessians=[str(p1), str(p2)], progress=False, **opts)
    np.testing.assert_array_equal(qm["a.weight"].codes, qcore.gptq(w["a.weight"], mixed.full(), **opts).codes)
    np.testing.assert_array_equal(qm["b.weight"].codes, qcore.gptq(w["b.weight"], one["b.weight"].full(), **opts).codes)
    from safetensors.numpy import save_file

    model, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save_file(w, str(model))
    # (--no-symmetric: the command line quantizes weights symmetrically by default, quantize_model as the scheme does)
    assert main(["quantize", str(model), "-o", str(out), "--bits", "4", "--granularity", "group", "--group-size", "16",
                 "--no-symmetric", "--method", "gptq", "--hessians", str(p1), "--hessians", str(p2), "--quiet"]) == 0
    np.testing.assert_array_equal(qcore.load_quantized(out)["a.weight"].codes, qm["a.weight"].codes)
    with pytest.raises(ValueError, match="widths"):
        HessianFolds.mix([np.eye(3), np.eye(4)])
