"""quantize_model(method="gptq", hessians=...), the CLI's --method/--calibration, and mixed precision judged by
the output error trace((W - W') H (W - W')^T) instead of the weight error."""
import numpy as np
import pytest

import qcore
from qcore.cli.main import main
from qcore.model.quantize import hessian_for
from qcore.ptq import hessian, output_error


def anisotropic_inputs(k, m=1024, seed=0, decay=8.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    ev = np.exp(-np.arange(k) / decay)
    return ((rng.normal(size=(m, k)) * np.sqrt(ev)) @ q.T).astype(np.float32)


def model_and_hessians():
    rng = np.random.default_rng(1)
    tensors = {
        "emb.weight": rng.normal(size=(50, 32)).astype(np.float32),  # no Hessian: rounded to nearest
        "l1.weight": rng.normal(size=(48, 32)).astype(np.float32),
        "l1.bias": rng.normal(size=(48,)).astype(np.float32),
        "l2.weight": rng.normal(size=(16, 48)).astype(np.float32),
    }
    hs = {"l1.weight": hessian(anisotropic_inputs(32, seed=2)), "l2.weight": hessian(anisotropic_inputs(48, seed=3))}
    return tensors, hs


def test_quantize_model_gptq_matches_qcore_gptq():
    tensors, hs = model_and_hessians()
    opts = dict(bits=4, granularity="group", group_size=16)
    qm = qcore.quantize_model(tensors, "linear", method="gptq", hessians=hs, progress=False, **opts)
    for name in hs:
        np.testing.assert_array_equal(qm[name].codes, qcore.gptq(tensors[name], hs[name], **opts).codes)
        assert qm.info[name]["method"] == "gptq"
    assert qm.info["emb.weight"]["method"] == "rtn"
    np.testing.assert_array_equal(qm["emb.weight"].codes, qcore.quantize(tensors["emb.weight"], **opts).codes)
    assert isinstance(qm["l1.bias"], np.ndarray)


def test_hessian_names_match_by_dotted_suffix():
    hs = {"0.model.encoder.l1.weight": 1, "l2.weight": 2}
    assert hessian_for(hs, "encoder.l1.weight") == 1
    assert hessian_for(hs, "model.l2.weight") == 2
    assert hessian_for(hs, "xl1.weight") is None
    with pytest.raises(ValueError, match="several"):
        hessian_for({"a.w": 1, "b.a.w": 2}, "c.b.a.w")


def test_quantize_model_bad_arguments():
    tensors, hs = model_and_hessians()
    with pytest.raises(TypeError, match="hessians"):
        qcore.quantize_model(tensors, method="gptq", progress=False)
    with pytest.raises(ValueError, match="method"):
        qcore.quantize_model(tensors, method="awq", hessians=hs, progress=False)
    with pytest.raises(ValueError, match=r"shape \(32, 32\)"):
        qcore.quantize_model(tensors, method="gptq", hessians={"l1.weight": np.eye(5)}, progress=False)


def test_cli_method_gptq(tmp_path, capsys):
    from safetensors.numpy import save_file

    tensors, hs = model_and_hessians()
    model, hfile, out = tmp_path / "m.safetensors", tmp_path / "h.safetensors", tmp_path / "q.safetensors"
    save_file(tensors, str(model))
    save_file({k: v.astype(np.float32) for k, v in hs.items()}, str(hfile))
    opts = ["--bits", "4", "--granularity", "group", "--group-size", "16", "--method", "gptq", "--quiet"]
    assert main(["quantize", str(model), "-o", str(out), *opts, "--hessians", str(hfile)]) == 0
    qm = qcore.load_quantized(str(out))
    # the command line quantizes weights with the scheme's weight defaults: linear symmetric
    want = qcore.gptq(tensors["l2.weight"], hs["l2.weight"].astype(np.float32), bits=4, granularity="group",
                      group_size=16, symmetric=True)
    np.testing.assert_array_equal(qm["l2.weight"].codes, want.codes)
    # --calibration: the deprecated spelling, same result, says so
    old = tmp_path / "old.safetensors"
    assert main(["quantize", str(model), "-o", str(old), *opts, "--calibration", str(hfile)]) == 0
    assert "deprecated" in capsys.readouterr().err
    np.testing.assert_array_equal(qcore.load_quantized(str(old))["l2.weight"].codes, want.codes)
    assert main(["quantize", str(model), "-o", str(tmp_path / "y.safetensors"), *opts, "--calibration", str(hfile),
                 "--hessians", str(hfile)]) != 0
    assert "one of them" in capsys.readouterr().err
    assert main(["quantize", str(model), "-o", str(tmp_path / "x.safetensors"), "--method", "gptq"]) != 0
    assert "--hessians" in capsys.readouterr().err


# -- mixed by output error ---------------------------------------------------------------------------------
def test_score_is_the_output_error():
    from qcore_plugins.schemes.mixed import score_candidate

    x = anisotropic_inputs(32, seed=5)
    w = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    qt = qcore.quantize(w, bits=3)
    s = score_candidate(w, qt, hessian=hessian(x))
    direct = np.sum((x.astype(np.float64) @ (w - qt.dequantize()).T.astype(np.float64)) ** 2) / x.shape[0]
    assert s["error"] == pytest.approx(direct, rel=1e-4)


def test_mixed_with_hessians_spends_bits_where_the_output_feels_them():
    """Two equal weights; one layer's inputs are 30x larger.  By weight error the planner cannot tell them
    apart; by output error it gives the loud layer the wider code, and the total output error drops."""
    rng = np.random.default_rng(7)
    w = {"quiet.weight": rng.normal(size=(64, 64)).astype(np.float32),
         "loud.weight": rng.normal(size=(64, 64)).astype(np.float32)}
    hs = {"quiet.weight": hessian(anisotropic_inputs(64, seed=1)),
          "loud.weight": 900.0 * hessian(anisotropic_inputs(64, seed=2))}
    opts = dict(candidates="linear:2:channel,linear:3:channel,linear:4:channel,linear:6:channel", budget_bits=4.2,
                progress=False, output_error="absolute")
    by_weight = qcore.quantize_model(w, "mixed", **opts)
    by_output = qcore.quantize_model(w, "mixed", hessians=hs, **opts)
    bits = {n: by_output[n].bits for n in w}
    assert bits["loud.weight"] > bits["quiet.weight"]

    def total(qm):
        return sum(output_error(w[n], qm[n].dequantize(), hs[n]) for n in w)

    assert total(by_output) < 0.5 * total(by_weight)
    for qm in (by_weight, by_output):  # the budget holds exactly
        assert sum(8 * qm[n].nbytes for n in w) <= 4.2 * sum(v.size for v in w.values())


def test_mixed_with_gptq_candidates():
    tensors, hs = model_and_hessians()
    w = {k: tensors[k] for k in hs}
    opts = dict(candidates="linear:3:channel,linear:4:channel,linear:8:channel", budget_bits=5.0, progress=False)
    rtn = qcore.quantize_model(w, "mixed", hessians=hs, **opts)
    gq = qcore.quantize_model(w, "mixed", hessians=hs, method="gptq", **opts)
    err = {m: sum(output_error(w[n], qm[n].dequantize(), hs[n]) for n in w) for m, qm in (("rtn", rtn), ("gptq", gq))}
    assert err["gptq"] < err["rtn"]
    assert all(gq.info[n]["method"] == "gptq" for n in w)
    assert sum(8 * gq[n].nbytes for n in w) <= 5.0 * sum(v.size for v in w.values())


def test_relative_output_error():
    from qcore_plugins.schemes.mixed import score_candidate

    x = anisotropic_inputs(32, seed=5)
    h = hessian(x)
    w = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    qt = qcore.quantize(w, bits=3)
    rel = score_candidate(w, qt, hessian=h, relative=True)["error"]
    assert rel == pytest.approx(output_error(w, qt.dequantize(), h) / output_error(w, np.zeros_like(w), h), rel=1e-6)
    # scale-free: a layer with 30x larger inputs has the same relative error
    assert score_candidate(w, qt, hessian=900 * h, relative=True)["error"] == pytest.approx(rel, rel=1e-6)
    p = qcore.get_quantizer("mixed", output_error="relative", candidates="linear:3:channel,linear:4:channel")
    m = p.measure(w, hessians=h)
    assert m[0]["error"] == pytest.approx(score_candidate(w, qcore.quantize(w, bits=3, granularity="channel"),
                                                         hessian=h, relative=True)["error"])
    with pytest.raises(ValueError, match="output_error"):
        qcore.get_quantizer("mixed", output_error="loud")


# -- the report shows what the plan chose and how far it is from held-out data ---------------------------------
def test_report_lists_the_plans_held_out_and_in_sample_errors(tmp_path, capsys):
    from safetensors.numpy import save_file

    from qcore.ptq import HessianAccumulator

    tensors, _ = model_and_hessians()
    hs = {n: HessianAccumulator(2).update(anisotropic_inputs(tensors[n].shape[1], seed=i)).folds()
          for i, n in enumerate(("l1.weight", "l2.weight"))}
    qm = qcore.quantize_model(tensors, "mixed", hessians=hs, method="gptq", budget_bits=5.0, progress=False,
                              candidates="linear:3:channel,linear:4:channel,linear:8:channel")
    rows = {r["name"]: r for r in qm.report()}
    for n in hs:
        assert rows[n]["held_out"] is True and rows[n]["candidate"] == qm.info[n]["candidate"]
        assert rows[n]["error"] > 0 and rows[n]["error_in_sample"] > 0
    assert rows["emb.weight"]["held_out"] is None and rows["emb.weight"]["error"] is None  # no data for it
    path = tmp_path / "q.safetensors"
    qm.save(path)
    back = {r["name"]: r for r in qcore.load_quantized(path).report()}
    for n in hs:
        assert {k: back[n][k] for k in ("candidate", "error", "error_in_sample", "held_out")} == \
               {k: rows[n][k] for k in ("candidate", "error", "error_in_sample", "held_out")}
    model = tmp_path / "m.safetensors"
    save_file(tensors, str(model))
    assert main(["report", str(model), str(path)]) == 0
    out = capsys.readouterr().out
    assert "held-out err" in out and f"{rows['l1.weight']['error']:.3e}" in out
    assert main(["inspect", str(path)]) == 0
    assert f"{rows['l2.weight']['error_in_sample']:.3e}" in capsys.readouterr().out


# -- held-out scoring: an overfitting candidate wins in-sample and loses out of sample -------------------------
def test_held_out_scoring_rejects_a_candidate_that_only_fits_its_calibration_data():
    """Layer "few" sees 12 calibration samples of a 64-wide input (each fold spans a 6-dim subspace); layer
    "many" sees 2048 samples of inputs three times louder.  With the data in one fold (in-sample scoring), GPTQ
    makes 2-bit codes look cheap on "few" — their error hides in directions the calibration never excited — so
    the plan gives "few" 2 bits and "many" 8.  Scored on the held-out fold, the 2-bit fit is caught (the plan
    takes 4 bits for both), and that plan's output error on fresh inputs of the same distribution is far lower."""
    from qcore.ptq import HessianAccumulator

    rng = np.random.default_rng(11)
    w = {"few.weight": rng.standard_normal((64, 64)).astype(np.float32),
         "many.weight": rng.standard_normal((64, 64)).astype(np.float32)}
    mix = np.linalg.qr(rng.standard_normal((64, 64)))[0] * np.exp(-np.arange(64) / 32.0)
    draw = lambda n, loud=1.0: (loud * rng.standard_normal((n, 64)) @ mix.T).astype(np.float32)  # noqa: E731
    folds = {"few.weight": HessianAccumulator(2).update(draw(12)).folds(),
             "many.weight": HessianAccumulator(2).update(draw(2048, 3.0)).folds()}
    one = {n: f.merged() for n, f in folds.items()}
    opts = dict(candidates="linear:2:channel,linear:4:channel,linear:8:channel", budget_bits=6.0, method="gptq",
                output_error="absolute", progress=False)
    with pytest.warns(UserWarning, match="in-sample"):
        in_sample = qcore.quantize_model(w, "mixed", hessians=one, **opts)
    held_out = qcore.quantize_model(w, "mixed", hessians=folds, **opts)
    assert [in_sample[n].bits for n in w] == [2, 8] and in_sample.info["few.weight"]["held_out"] is False
    assert [held_out[n].bits for n in w] == [4, 4] and held_out.info["few.weight"]["held_out"] is True
    rec = held_out.info["few.weight"]  # a choice that fits its calibration data far better than other data
    assert rec["error"] > 10 * rec["error_in_sample"]
    fresh = {"few.weight": hessian(draw(20000)), "many.weight": hessian(draw(20000, 3.0))}
    total = {name: sum(output_error(w[n], qm[n].dequantize(), fresh[n]) for n in w)
             for name, qm in (("in", in_sample), ("held", held_out))}
    assert total["held"] < 0.5 * total["in"]
    for qm in (in_sample, held_out):
        assert sum(8 * qm[n].nbytes for n in w) <= 6.0 * sum(v.size for v in w.values())  # the budget holds
    again = qcore.quantize_model(w, "mixed", hessians=folds, **opts)  # the same inputs give the same plan
    assert all(np.array_equal(again[n].codes, held_out[n].codes) for n in w)
