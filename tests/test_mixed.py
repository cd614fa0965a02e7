"""The ``mixed`` scheme on real trained weights: budget never exceeded, beats uniform 4-bit at the same or a lower
budget, target SQNR, sensitivity and calibration change the plan, configurable candidates, the knapsack solver."""
import itertools

import numpy as np
import pytest

import qcore
from qcore.cli.demo import _train, mlp_tensors, train_digits_mlp
from qcore_plugins.schemes import mixed as mixed_mod


@pytest.fixture(scope="module")
def tensors():
    clf, _, _ = train_digits_mlp()
    return mlp_tensors(clf)


def total_error(model, tensors):
    return sum(float(np.sum((tensors[n].astype(np.float64) - model[n].dequantize()) ** 2)) for n in model.quantized)


def stored_bits(model):
    return sum(8 * model[n].nbytes for n in model.quantized)


@pytest.mark.parametrize("budget", [2.2, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0, 9.5])
def test_budget_is_never_exceeded(tensors, budget):
    qm = qcore.quantize_model(tensors, "mixed", budget_bits=budget)
    count = sum(qm[n].size for n in qm.quantized)
    assert stored_bits(qm) <= budget * count
    assert qm.average_bits <= budget
    assert all(qm.info[n]["planned_by"] == "mixed" for n in qm.quantized)


@pytest.mark.parametrize("axis", [0, 1])
def test_mixed_beats_uniform_4bit_per_channel_at_the_same_or_lower_budget(tensors, axis):
    u4 = qcore.quantize_model(tensors, "linear", bits=4, granularity="channel", axis=axis)
    mx = qcore.quantize_model(tensors, "mixed", budget_bits=u4.average_bits, axis=axis)
    assert mx.average_bits <= u4.average_bits
    assert total_error(mx, tensors) < total_error(u4, tensors)


def test_error_decreases_as_the_budget_grows(tensors):
    errs = [total_error(qcore.quantize_model(tensors, "mixed", budget_bits=b), tensors) for b in (2.5, 3.5, 4.5, 6.0, 9.0)]
    assert all(a >= b for a, b in zip(errs, errs[1:]))


def test_budget_below_the_cheapest_candidates_is_a_clear_error(tensors):
    with pytest.raises(ValueError, match="budget"):
        qcore.quantize_model(tensors, "mixed", budget_bits=1.0)


def test_fixed_tensors_count_in_the_budget(tensors):
    qm = qcore.quantize_model(tensors, "mixed", budget_bits=4.0, rules={"layer2.weight": {"scheme": "linear", "bits": 8}})
    assert qm["layer2.weight"].bits == 8 and "planned_by" not in qm.info["layer2.weight"]
    assert qm.average_bits <= 4.0


def test_target_sqnr_picks_the_smallest_candidate_reaching_it(tensors):
    target = 20.0
    qm = qcore.quantize_model(tensors, "mixed", target_sqnr=target)
    q = qcore.get_quantizer("mixed")
    for n in qm.quantized:
        assert qm.info[n]["sqnr_db"] >= target
        cands = q.measure(tensors[n])
        smaller = [c for c in cands if c["nbytes"] < qm[n].nbytes]
        assert all(c["sqnr_db"] < target for c in smaller)
    high = qcore.quantize_model(tensors, "mixed", target_sqnr=200.0)  # unreachable: the most accurate candidate
    assert all(high[n].bits == 8 for n in high.quantized)


def test_sensitivity_moves_bits_to_the_sensitive_layer(tensors):
    base = qcore.quantize_model(tensors, "mixed", budget_bits=3.0)
    sens = qcore.quantize_model(tensors, "mixed", budget_bits=3.0, sensitivity={"layer0.*": 1e4})
    assert sens["layer0.weight"].nbytes > base["layer0.weight"].nbytes
    assert sens.average_bits <= 3.0
    per_element = np.ones_like(tensors["layer0.weight"])
    qcore.quantize_model(tensors, "mixed", budget_bits=3.0, sensitivity={"layer0.weight": per_element})
    with pytest.raises(ValueError, match="sensitivity"):
        qcore.quantize_model(tensors, "mixed", budget_bits=3.0, sensitivity=-1.0)


def test_calibration_data_measures_output_error(tensors):
    """Activation arrays become Hessians (``quantize_model(calibrate=)``; ``calibration=`` is the deprecated
    spelling): the absolute score is the mean output error ``||X (W - W')||^2 / rows`` of the (in, out)
    scikit-learn layout, ``y = X @ W``."""
    from qcore.ptq import HessianAccumulator

    _, _, _, Xtr = _train(0, (128, 64), 300)
    X = Xtr[:200].astype(np.float32)
    q = qcore.get_quantizer("mixed", output_error="absolute")
    w = tensors["layer0.weight"]  # (64 inputs, 128 outputs): y = X @ W
    plain = q.measure(w)
    calib = q.measure(w, hessians=HessianAccumulator().update(X).folds())
    # rows of 128 (one group of 128): the data-free default set with or without data
    assert [c["label"] for c in plain] == [c["label"] for c in calib]
    # rows that split into groups of 128: with data the default candidates are the calibrated set (linear 3/4/5
    # per group, 4/5/6/8 per channel); without, the broad data-free set; an explicit list is used by both
    wide = np.random.default_rng(5).standard_normal((16, 256)).astype(np.float32)
    X2 = np.random.default_rng(6).standard_normal((64, 256)).astype(np.float32)
    assert [c["label"] for c in q.measure(wide, hessians=HessianAccumulator().update(X2).folds())] == [
        "linear:3:group128", "linear:4:group128", "linear:5:group128", "linear:4:channel", "linear:5:channel",
        "linear:6:channel", "linear:8:channel"]
    assert {"kmeans:4", "linear:2:channel"} <= {c["label"] for c in q.measure(wide)}
    both = qcore.get_quantizer("mixed", candidates="kmeans:3,linear:2:channel")
    assert ([c["label"] for c in both.measure(w)]
            == [c["label"] for c in both.measure(w, hessians=HessianAccumulator().update(X).folds())]
            == ["kmeans:3", "linear:2:channel"])
    for c in calib:
        deq = q.quantize_candidate(w, c["spec"]).dequantize()
        expect = float(np.sum((X.astype(np.float64) @ (w - deq).astype(np.float64)) ** 2)) / len(X)
        assert c["error"] == pytest.approx(expect, rel=1e-3)
    qm = qcore.quantize_model(tensors, "mixed", budget_bits=3.5, calibrate={"layer0.weight": X})
    assert qm.average_bits <= 3.5 and qm.info["layer0.weight"]["held_out"] is True
    with pytest.warns(DeprecationWarning, match="calibrate"):
        old = qcore.quantize_model(tensors, "mixed", budget_bits=3.5, calibration={"layer0.weight": X})
    assert all(np.array_equal(old[n].codes, qm[n].codes) for n in qm.quantized)
    with pytest.raises(ValueError, match="width 7"):
        q.measure(w, hessians=np.eye(7, dtype=np.float32))


def test_candidates_are_configurable(tensors):
    qm = qcore.quantize_model(tensors, "mixed", budget_bits=4.0, candidates=["linear:2:channel", "linear:4:channel", "linear:8:channel"])
    assert {qm[n].scheme for n in qm.quantized} == {"linear"}
    assert {qm[n].options["granularity"] for n in qm.quantized} == {"channel"}
    q = qcore.get_quantizer("mixed", candidates="linear:3:group:32,linear:4")
    assert [s["granularity"] for s in q.specs if "granularity" in s] == ["group"]
    with pytest.raises(qcore.SchemeNotFound, match="nope"):
        qcore.get_quantizer("mixed", candidates=["nope:4"])
    with pytest.raises(ValueError, match="candidate"):
        qcore.get_quantizer("mixed", candidates=["linear"])
    narrow = qcore.get_quantizer("mixed", bits=4)
    assert all(s["bits"] <= 4 for s in narrow.specs)


def test_default_candidates_skip_schemes_that_are_not_installed(monkeypatch):
    monkeypatch.setattr(qcore, "list_schemes", lambda: ["linear", "mixed"])
    q = qcore.get_quantizer("mixed")
    assert {s["scheme"] for s in q.specs} == {"linear"}
    monkeypatch.setattr(qcore, "list_schemes", lambda: ["kmeans", "linear", "log", "mixed"])
    q = qcore.get_quantizer("mixed")
    assert {s["scheme"] for s in q.specs} >= {"linear"}


def test_installed_kmeans_and_log_are_candidates():
    q = qcore.get_quantizer("mixed")
    for s in ("kmeans", "log"):
        if s in qcore.list_schemes():
            assert s in {c["scheme"] for c in q.specs}


def test_single_tensor_mixed(tensors):
    w = tensors["layer0.weight"]
    for budget in (2.5, 3.0, 4.0, 5.0):
        qt = qcore.quantize(w, "mixed", budget_bits=budget)
        assert 8 * qt.nbytes <= budget * w.size
        assert qt.scheme != "mixed"  # the QTensor of the chosen candidate: decodable by that scheme alone
        assert qt.dequantize().shape == w.shape
    qt = qcore.quantize(w, "mixed", target_sqnr=30.0)
    assert qcore.model.sqnr_db(w, qt.dequantize()) >= 30.0
    with pytest.raises(ValueError, match="budget"):
        qcore.quantize(w, "mixed", budget_bits=0.5)
    with pytest.raises(TypeError):
        qcore.get_quantizer("mixed", budget_bits="4")
    with pytest.raises(TypeError):
        qcore.get_quantizer("mixed", granularity="channel")


def test_mixed_is_a_planner_not_a_scheme(tensors):
    """``mixed`` registers through ``qcore_planners``: no fit/encode/decode, and files never name it."""
    w = tensors["layer1.weight"]
    q = qcore.get_quantizer("mixed", budget_bits=4.0)
    assert isinstance(q, qcore.Planner) and not isinstance(q, qcore.Quantizer)
    assert not any(hasattr(q, m) for m in ("fit", "encode", "decode"))
    assert "mixed" in qcore.list_planners() and "mixed" in qcore.list_schemes()
    qt = q.quantize(w)
    chosen = q.choose(w)
    assert qt.scheme == chosen["spec"]["scheme"] and qt.nbytes == chosen["nbytes"]
    # the QTensor decodes through its own scheme, exactly as that scheme quantizes it
    again = qcore.get_quantizer(qt.scheme, **qt.options).quantize(w)
    assert np.array_equal(again.codes, qt.codes)
    # a stored tensor claiming the planner as its scheme cannot be decoded by it: the planner is no decoder
    with pytest.raises(qcore.SchemeNotFound):
        qcore.QTensor(qt.codes, "mixed", qt.bits, qt.params, {}).dequantize()


def test_mixed_file_round_trip(tensors, tmp_path):
    qm = qcore.quantize_model(tensors, "mixed", budget_bits=3.5)
    qm.save(tmp_path / "m.safetensors")
    back = qcore.load_quantized(tmp_path / "m.safetensors")
    for n in qm.quantized:
        assert np.array_equal(back[n].codes, qm[n].codes)
        assert back.info[n]["planned_by"] == "mixed"
    assert back.average_bits <= 3.5


# -- the solver ---------------------------------------------------------------------------------------------
def brute_force(costs, errors, capacity):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(costs[t][k] for t, k in enumerate(pick))
        if c <= capacity:
            e = sum(errors[t][k] for t, k in enumerate(pick))
            if best is None or e < best:
                best = e
    return best


def test_knapsack_is_feasible_and_near_optimal():
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(60):
        T = int(rng.integers(1, 6))
        costs, errors = [], []
        for _t in range(T):
            C = int(rng.integers(1, 6))
            c = np.sort(rng.integers(10, 1000, C)).astype(float)
            e = np.sort(rng.random(C) * 100)[::-1].copy()
            costs.append(c)
            errors.append(e)
        lo = sum(c.min() for c in costs)
        hi = sum(c.max() for c in costs)
        cap = float(rng.uniform(lo, hi + 1))
        pick = mixed_mod.knapsack(costs, errors, cap)
        assert sum(costs[t][k] for t, k in enumerate(pick)) <= cap
        got = sum(errors[t][k] for t, k in enumerate(pick))
        opt = brute_force(costs, errors, cap)
        gaps.append(got - opt)
        assert got <= opt * 1.05 + 1e-9
    assert np.mean(np.array(gaps) <= 1e-9) > 0.9  # optimal in the vast majority of cases


def test_knapsack_edge_cases():
    assert mixed_mod.knapsack([], [], 10.0) == []
    assert mixed_mod.knapsack([np.array([0.0])], [np.array([0.0])], 0.0) == [0]
    with pytest.raises(ValueError, match="budget too small"):
        mixed_mod.knapsack([np.array([5.0, 10.0])], [np.array([1.0, 0.0])], 4.0)
    assert mixed_mod.knapsack([np.array([5.0, 10.0])], [np.array([1.0, 0.0])], 10.0) == [1]


def test_error_power_default_spares_the_worst_layer_for_relative_output_errors():
    """One upgrade fits the budget.  Summed errors favour B's larger gain (0.9 + 0 < 0.7 + 0.35); with relative
    output errors (records with an energy) the default power 8 favours lifting A, the worst layer
    (0.7^8 + 0.35^8 < 0.9^8).  Weight errors (no energy) and ``error_power=1`` keep the plain sum."""
    def recs(errors, energy):
        return [{"nbytes": nb, "error": e, **({"energy": 1.0} if energy else {})} for nb, e in zip((10, 20), errors)]

    cap = 8.0 * 30
    for energy, power, want in ((True, None, [1, 0]), (False, None, [0, 1]), (True, 1, [0, 1]), (False, 4, [1, 0])):
        q = qcore.get_quantizer("mixed", error_power=power)
        assert q.plan([recs((0.9, 0.7), energy), recs((0.35, 0.0), energy)], capacity_bits=cap) == want
    with pytest.raises(ValueError, match="error_power"):
        qcore.get_quantizer("mixed", error_power=0)
