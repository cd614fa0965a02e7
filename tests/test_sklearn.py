"""qcore.integrations.sklearn.quantize_estimator on fitted MLPs (issue 7)."""
from __future__ import annotations

import importlib
import sys
import warnings

import numpy as np
import pytest

import qcore
from qcore.integrations import sklearn as qsk

REPORT_KEYS = {"name", "scheme", "bits", "shape", "bytes_fp32", "bytes_q", "sqnr_db"}


def _fit(est, X, y):
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on a loaded 2-core machine, BLAS threads spinning against each other make this 50x slower
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = _fit(MLPClassifier(hidden_layer_sizes=(128,), max_iter=100, random_state=0), Xtr, ytr)
    return clf, Xte, yte


def test_import_without_sklearn_says_how_to_install(monkeypatch):
    import qcore.integrations as integ

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.delitem(sys.modules, "qcore.integrations.sklearn", raising=False)
    monkeypatch.delattr(integ, "sklearn", raising=False)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        importlib.import_module("qcore.integrations.sklearn")


def test_int8_mlp_loses_at_most_half_a_point(digits_mlp):
    clf, Xte, yte = digits_mlp
    base = clf.score(Xte, yte)
    assert base > 0.95
    coefs = [w.copy() for w in clf.coefs_]
    q = qsk.quantize_estimator(clf, "linear", bits=8)
    acc = q.score(Xte, yte)
    assert acc >= base - 0.005, (base, acc)
    # the original is untouched; the copy computes with the quantized weights
    for w, w0 in zip(clf.coefs_, coefs):
        np.testing.assert_array_equal(w, w0)
    assert not hasattr(clf, "qcore_report_")
    assert any(not np.array_equal(a, b) for a, b in zip(q.coefs_, clf.coefs_))
    report = q.qcore_report_
    assert [r["name"] for r in report] == [f"coefs_.{i}" for i in range(len(clf.coefs_))]
    for r, w in zip(report, clf.coefs_):
        assert REPORT_KEYS <= set(r)
        assert r["scheme"] == "linear" and r["bits"] == 8 and tuple(r["shape"]) == w.shape
        assert r["bytes_fp32"] == w.size * 4 and r["bytes_q"] < r["bytes_fp32"] / 3
        assert r["sqnr_db"] > 35
    assert q.qcore_scheme_ == "linear"


def test_predictions_use_exactly_the_dequantized_weights(digits_mlp):
    clf, Xte, _ = digits_mlp
    q = qsk.quantize_estimator(clf, "linear", bits=4, granularity="tensor")
    for i, w in enumerate(clf.coefs_):
        ref = qcore.quantize(w.astype(np.float32), "linear", bits=4, granularity="tensor", symmetric=True)
        np.testing.assert_array_equal(q.coefs_[i], ref.dequantize().astype(w.dtype))
    # forward pass by hand with the quantized weights
    h = Xte
    for i, (w, b) in enumerate(zip(q.coefs_, q.intercepts_)):
        h = h @ w + b
        if i < len(q.coefs_) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_array_equal(q.predict(Xte), q.classes_[np.argmax(h, axis=1)])


@pytest.mark.parametrize("bits,budget", [(4, 0.015)])
def test_kmeans_4bit_mlp_loses_at_most_one_and_a_half_points(digits_mlp, bits, budget):
    if "kmeans" not in qcore.list_schemes():
        pytest.fail("the kmeans scheme (issue 4) is not installed")
    clf, Xte, yte = digits_mlp
    base = clf.score(Xte, yte)
    q = qsk.quantize_estimator(clf, "kmeans", bits=bits)
    acc = q.score(Xte, yte)
    assert acc >= base - budget, (base, acc)
    assert all(r["scheme"] == "kmeans" and r["bits"] == bits for r in q.qcore_report_)


def test_every_scheme_runs(digits_mlp):
    clf, Xte, yte = digits_mlp
    for scheme in qcore.list_schemes():
        if scheme == "mixed":
            q = qsk.quantize_estimator(clf, "mixed", budget_bits=4.5)
        else:
            q = qsk.quantize_estimator(clf, scheme, bits=4)
        assert 0.5 < q.score(Xte, yte) <= 1.0
        assert q.qcore_report_ and all(REPORT_KEYS <= set(r) for r in q.qcore_report_)


def test_regressor_and_selection():
    from sklearn.datasets import load_diabetes
    from sklearn.neural_network import MLPRegressor

    X, y = load_diabetes(return_X_y=True)
    reg = _fit(MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, learning_rate_init=0.01, random_state=0), X, y)
    q = qsk.quantize_estimator(reg, "linear", bits=8)
    np.testing.assert_allclose(q.predict(X), reg.predict(X), rtol=0.02, atol=1.0)
    only = qsk.quantize_estimator(reg, "linear", bits=2, include="coefs_.1")
    np.testing.assert_array_equal(only.coefs_[0], reg.coefs_[0])
    assert not np.array_equal(only.coefs_[1], reg.coefs_[1])
    assert [r["name"] for r in only.qcore_report_ if r["scheme"] is not None] == ["coefs_.1"]
    assert [r["scheme"] for r in only.qcore_report_] == [None, "linear"]
    skip = qsk.quantize_estimator(reg, "linear", bits=2, exclude=["coefs_.1"])
    np.testing.assert_array_equal(skip.coefs_[1], reg.coefs_[1])


def test_bad_input():
    from sklearn.exceptions import NotFittedError
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    with pytest.raises(TypeError, match="MLPClassifier"):
        qsk.quantize_estimator(LogisticRegression())
    with pytest.raises(NotFittedError):
        qsk.quantize_estimator(MLPClassifier())
    clf = _fit(MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0), np.random.rand(20, 3),
               np.arange(20) % 2)
    with pytest.raises(TypeError, match="unknown option"):
        qsk.quantize_estimator(clf, "linear", bogus=1)
    with pytest.raises(qcore.SchemeNotFound):
        qsk.quantize_estimator(clf, "no-such-scheme")
    with pytest.raises(ValueError):
        qsk.quantize_estimator(clf, "linear", bits=9)
