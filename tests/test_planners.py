"""Planners are their own plugin kind (the ``qcore_planners`` hook): a third-party planner registers, passes the
conformance kit, plans whole models, and may not reuse a scheme's name."""
import numpy as np
import pytest

import qcore
from qcore.plugin import manager as mgr
from qcore.ptq import HessianAccumulator, save_hessians
from qcore.testing import check_planner, isolated_plugins, plugin_from_classes


class WidestThatFits(qcore.Planner):
    """Toy planner written only to the documented contract (qcore/quantization/planner.py): per tensor the widest
    ``linear`` per-channel width (2, 4 or 8 bits) the budget allows; with Hessians it scores each width by the
    output error on the held-out fold, fitting GPTQ on the other folds."""

    name = "widest-fit"
    options = {"budget_bits": 4.5, "target_sqnr": None}

    def measure(self, x, *, hessians=None, method="rtn", sensitivity=None):
        x = np.asarray(x, np.float32)
        out = []
        for bits in (2, 4, 8):
            spec = {"scheme": "linear", "bits": bits, "granularity": "channel" if x.ndim > 1 else "tensor"}
            if hessians is None:
                qt = self.quantize_candidate(x, spec)
                d = x.astype(np.float64) - qt.dequantize()
                err = err_in = float((d * d).sum())
            else:
                held = hessians.k >= 2
                train = hessians.rest(0) if held else hessians.full()
                test = hessians.fold(0) if held else hessians.full()
                qt = self._fit(x, spec, train, method)
                d = x.astype(np.float64) - qt.dequantize()
                err, err_in = (float(np.einsum("nk,nk->", d @ h, d)) for h in (test, train))
            out.append({"spec": spec, "label": f"linear:{bits}", "bits": bits, "nbytes": int(qt.nbytes),
                        "error": err, "error_in_sample": err_in, "held_out": hessians is not None and hessians.k >= 2,
                        "sqnr_db": float(qcore.model.sqnr_db(x, qt.dequantize()))})
        return out

    def plan(self, measurements, *, capacity_bits=None, target_sqnr=None, names=None):
        picks = [0] * len(measurements)
        if capacity_bits is None:
            return [len(m) - 1 for m in measurements]
        used = sum(8 * m[0]["nbytes"] for m in measurements)
        if used > capacity_bits:
            raise ValueError("budget too small for the narrowest candidates")
        for t, m in enumerate(measurements):  # greedy widening, first tensors first
            for k in range(len(m) - 1, 0, -1):
                extra = 8 * (m[k]["nbytes"] - m[picks[t]]["nbytes"])
                if used + extra <= capacity_bits:
                    used += extra
                    picks[t] = k
                    break
        return picks

    def _fit(self, x, spec, h, method):
        opts = {k: v for k, v in spec.items() if k != "scheme"}
        q = qcore.get_quantizer(spec["scheme"], kernel=self.kernel, **opts)
        return qcore.gptq(x, h, q) if method == "gptq" else q.quantize(x)

    def quantize_candidate(self, x, spec, *, hessians=None, method="rtn"):
        return self._fit(np.asarray(x, np.float32), spec, None if hessians is None else hessians.full(), method)


def test_a_third_party_planner_passes_the_kit_and_plans_models():
    with isolated_plugins(WidestThatFits):
        results = check_planner(WidestThatFits)
        assert {r.status for r in results} == {"passed"}
        assert "widest-fit" in qcore.list_planners() and "widest-fit" in qcore.list_schemes()
        w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
        qm = qcore.quantize_model({"a.weight": w, "b.weight": w * 2}, "widest-fit", budget_bits=5.0)
        assert qm.average_bits <= 5.0 and {qm.info[n]["planned_by"] for n in qm.quantized} == {"widest-fit"}
        assert qcore.quantize(w, "widest-fit", budget_bits=9.0).bits == 8
        rec = [r for r in qcore.plugins() if r.planners == ["widest-fit"]]
        assert len(rec) == 1 and rec[0].hooks == ["qcore_planners"]


def test_a_third_party_planner_runs_end_to_end_with_hessians(tmp_path):
    """quantize_model(..., hessians=file, method="gptq") drives the contract's planner: the driver passes the
    Hessians in folds, the chosen candidates are fitted by GPTQ on all the data, the budget holds, and each
    tensor's info carries the held-out and in-sample errors."""
    rng = np.random.default_rng(3)
    w = {"a.weight": rng.standard_normal((32, 48)).astype(np.float32),
         "b.weight": rng.standard_normal((16, 32)).astype(np.float32)}
    hs = {n: HessianAccumulator(2).update(rng.standard_normal((256, v.shape[1])).astype(np.float32)).folds()
          for n, v in w.items()}
    path = tmp_path / "h.safetensors"
    save_hessians(path, hs)
    with isolated_plugins(WidestThatFits):
        qm = qcore.quantize_model(w, "widest-fit", budget_bits=5.0, hessians=str(path), method="gptq", progress=False)
        p = qcore.get_quantizer("widest-fit")
        for n in w:
            assert qm.info[n]["method"] == "gptq" and qm.info[n]["held_out"] is True
            spec = {"scheme": "linear", "bits": qm[n].bits, "granularity": "channel"}
            np.testing.assert_array_equal(qm[n].codes, qcore.gptq(w[n], hs[n].full(), bits=qm[n].bits,
                                                                  granularity="channel").codes)
            rec = next(c for c in p.measure(w[n], hessians=hs[n], method="gptq") if c["spec"] == spec)
            assert qm.info[n]["error"] == rec["error"] and qm.info[n]["error_in_sample"] == rec["error_in_sample"]
        assert qm.average_bits <= 5.0


def test_the_kit_names_a_broken_planner_check():
    class Overspends(WidestThatFits):
        name = "overspends"

        def plan(self, measurements, *, capacity_bits=None, target_sqnr=None, names=None):
            return [len(m) - 1 for m in measurements]  # ignores the capacity

    with isolated_plugins(Overspends):
        results = {r.check: r for r in check_planner(Overspends, on_fail=None)}
    assert results["check_plan_respects_capacity"].status == "failed"
    assert results["check_measure_records"].status == "passed"


def test_a_planner_may_not_take_a_scheme_name():
    class Linear(WidestThatFits):
        name = "linear"

    manager = mgr.PluginManager(third_party=False)
    with pytest.raises(qcore.PluginError, match="'linear'"):
        manager.register(plugin_from_classes(Linear), name="clash")


def test_planners_never_decode_and_files_never_name_them():
    with isolated_plugins(WidestThatFits):
        qt = qcore.quantize(np.ones((16, 64), np.float32), "widest-fit", budget_bits=8.0)
        assert qt.scheme == "linear"
        with pytest.raises(qcore.SchemeNotFound):  # a QTensor claiming the planner has no decoder
            qcore.QTensor(qt.codes, "widest-fit", qt.bits, qt.params, {}).dequantize()
