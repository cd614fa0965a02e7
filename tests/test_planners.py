"""Planners are their own plugin kind (the ``qcore_planners`` hook): a third-party planner registers, passes the
conformance kit, plans whole models, and may not reuse a scheme's name."""
import numpy as np
import pytest

import qcore
from qcore.plugin import manager as mgr
from qcore.testing import check_planner, isolated_plugins, plugin_from_classes


class WidestThatFits(qcore.Planner):
    """Toy planner: per tensor the widest ``linear`` per-channel width (2, 4 or 8 bits) the budget allows."""

    name = "widest-fit"
    options = {"budget_bits": 4.5, "target_sqnr": None}

    def measure(self, x, *, sensitivity=None, calibration=None):
        x = np.asarray(x, np.float32)
        out = []
        for bits in (2, 4, 8):
            spec = {"scheme": "linear", "bits": bits, "granularity": "channel" if x.ndim > 1 else "tensor"}
            qt = self.quantize_candidate(x, spec)
            d = (x.astype(np.float64) - qt.dequantize()).ravel()
            sse = float(d @ d)
            out.append({"spec": spec, "label": f"linear:{bits}", "nbytes": int(qt.nbytes), "error": sse,
                        "sqnr_db": qcore.model.sqnr_db(x, qt.dequantize())})
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

    def quantize_candidate(self, x, spec):
        opts = {k: v for k, v in spec.items() if k != "scheme"}
        return qcore.get_quantizer(spec["scheme"], kernel=self.kernel, **opts).quantize(x)


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
