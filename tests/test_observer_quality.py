"""Calibration quality of the ``histogram`` (l2) and ``mse`` observers against an independent reference: the
brute-force best range of the same 8-bit ``linear`` grid on the same data (``observer_reference.brute_force``,
exact squared error on the raw data), and torch's ``HistogramObserver``.

Data: four batches of six synthetic distributions (100k values) and inputs of four Linear layers of the real
all-MiniLM-L6-v2 encoder (``tests/data/minilm_linear_inputs.npz``, captured by
``benchmarks/bench_observer_quality.py --capture``).
"""
from __future__ import annotations

import numpy as np
import pytest

import observer_reference as ref

SETS = list(ref.SYNTHETIC) + [f"minilm:{k}" for k in ("layer0_query_in", "layer3_attn_out_in", "layer3_ffn_out_in",
                                                       "layer5_ffn_in")]
_cache: dict = {}


def batches_of(name):
    if name not in _cache:
        _cache[name] = ref.minilm()[name[7:]] if name.startswith("minilm:") else ref.synthetic(name, n=100_000)
    return _cache[name]


def test_minilm_fixture_is_real_activations():
    sets = ref.minilm()
    assert len(sets) == 4
    for name, batches in sets.items():
        x = np.concatenate(batches)
        assert x.size == 24_576 and np.isfinite(x).all() and x.std() > 0.05, name
    gelu = np.concatenate(sets["layer3_ffn_out_in"])
    assert -0.2 < gelu.min() < -0.1  # GELU's minimum is -0.17: these are GELU outputs


def test_reference_scores_the_quantizer_exactly():
    """The sorted-prefix-sum error equals the quantizer's own error for the same range."""
    import qcore

    rng = np.random.default_rng(3)
    x = rng.laplace(size=20_000).astype(np.float32)
    data = ref.SortedData(x)
    for sym, (lo, hi) in [(False, (-3.1, 5.2)), (True, (-4.0, 4.0)), (False, (0.0, 2.5))]:
        q = qcore.get_quantizer("linear", bits=8, symmetric=sym)
        params = q.fit(np.array([lo, hi], np.float32))
        y = q.decode(q.encode(x, params), params)
        want = float(np.mean((y.astype(np.float64) - x) ** 2))
        assert ref.range_mse(data, lo, hi, 8, sym)[0] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("symmetric", [False, True], ids=["affine", "symmetric"])
@pytest.mark.parametrize("name", SETS)
def test_histogram_and_mse_within_3pct_of_brute_force_and_not_worse_than_torch(name, symmetric):
    batches = batches_of(name)
    best, _, _ = ref.brute_force(ref.SortedData(np.concatenate(batches)), 8, symmetric)
    torch_err = ref.torch_histogram_mse(batches, 8, symmetric) if _have_torch() else None
    for obs in ("histogram", "mse"):
        err = ref.observer_mse(batches, obs, 8, symmetric)
        assert err <= 1.03 * best, f"{obs} on {name}: {err:.5g} is {err / best - 1:+.2%} above the brute force"
        if torch_err is not None:
            assert err <= torch_err, f"{obs} on {name}: {err:.5g} worse than torch HistogramObserver {torch_err:.5g}"


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
