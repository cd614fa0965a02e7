"""scikit-learn integration: quantize the weights of a fitted ``MLPClassifier`` / ``MLPRegressor``.

::

    from qcore.integrations import sklearn as qsk

    qclf = qsk.quantize_estimator(clf, "linear", bits=8)        # a quantized copy; clf is untouched
    qclf.score(X, y)                                             # predictions use the quantized weights
    qclf.qcore_report_                                           # per layer: name, scheme, bits, shape, bytes, SQNR

The weight matrices ``coefs_[i]`` (named ``"coefs_.0"``, ``"coefs_.1"``, ...) are quantized by any installed
qcore scheme and replaced by :class:`qcore.integrations._packed.PackedMatrix` objects that hold only the packed
``QTensor``: ``predict``/``predict_proba``/``score`` multiply by them a block of decoded rows at a time
(at most 1M floats of workspace, in the estimator's float dtype), so they compute with exactly the quantized
weights and no float copy of a weight is kept; ``np.asarray(qclf.coefs_[i])`` decodes one on demand.  The copy
is for inference: refitting it (``fit``/``partial_fit``) is not supported.  Biases (``intercepts_``) stay float.  Adapter defaults, for schemes that have the
options and unless given: one scale per output unit (``granularity="channel"``, ``axis=1`` — scikit-learn stores
weights as ``(n_in, n_out)``) and ``symmetric=True``.
"""
from __future__ import annotations

try:
    import sklearn  # noqa: F401
    from sklearn.neural_network._multilayer_perceptron import BaseMultilayerPerceptron
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency of qcore
    raise ImportError(
        "qcore.integrations.sklearn needs scikit-learn, which is not installed: pip install scikit-learn"
    ) from exc

import copy
from typing import Any, Iterable

import numpy as np

import qcore

from ._common import name_selected, sqnr_db, weight_options
from ._packed import PackedMatrix

__all__ = ["quantize_estimator"]


def _fallback_quantize(tensors: dict[str, np.ndarray], scheme: str, opts: dict[str, Any], include, exclude):
    """What ``qcore.quantize_model`` does for these few 2-D tensors: (dequantized, report, qtensors)."""
    deq, report, qts = {}, [], {}
    for name, w in tensors.items():
        if not name_selected(name, include, exclude):  # kept in float, reported like QModel.report() does
            report.append({"name": name, "scheme": None, "bits": 32, "shape": list(w.shape),
                           "bytes_fp32": int(w.size * 4), "bytes_q": int(w.size * 4), "sqnr_db": float("inf")})
            continue
        qt = qcore.get_quantizer(scheme, **opts).quantize(w)
        d = qt.dequantize()
        deq[name], qts[name] = d, qt
        report.append({"name": name, "scheme": qt.scheme, "bits": qt.bits, "shape": list(qt.shape),
                       "bytes_fp32": int(w.size * 4), "bytes_q": int(qt.nbytes), "sqnr_db": sqnr_db(w, d)})
    return deq, report, qts


def quantize_estimator(estimator, scheme: str = "linear", *, include: Iterable[str] | str | None = None,
                       exclude: Iterable[str] | str | None = None, **options):
    """A copy of the fitted MLP ``estimator`` whose weights are quantized by ``scheme`` (the original is untouched).

    :param estimator: a fitted :class:`~sklearn.neural_network.MLPClassifier` or
        :class:`~sklearn.neural_network.MLPRegressor`
    :param scheme: any installed qcore scheme (``"linear"``, ``"log"``, ``"kmeans"``, ``"mixed"`` ...)
    :param include: glob pattern(s) of weight names to quantize (``"coefs_.0"`` ...); default all
    :param exclude: glob pattern(s) of weight names left in float
    :param options: scheme options: ``bits`` (default 8), ``granularity``, ... and, for ``mixed``, ``budget_bits``

    The copy carries ``qcore_report_`` (per weight: ``name, scheme, bits, shape, bytes_fp32, bytes_q, sqnr_db``,
    the :meth:`qcore.QModel.report` format; weights left in float have ``scheme`` None and ``bits`` 32), ``qcore_model_`` (the :class:`qcore.QModel` of its weights, when
    this qcore has the model layer; else a ``{name: QTensor}`` dict) and ``qcore_scheme_``.
    """
    if not isinstance(estimator, BaseMultilayerPerceptron):
        raise TypeError(
            f"quantize_estimator supports fitted MLPClassifier and MLPRegressor, got {type(estimator).__name__}"
        )
    check_is_fitted(estimator, "coefs_")
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a scheme name (str), got {type(scheme).__name__}")
    options = dict(options)
    bits = options.pop("bits", 8)
    budget_bits = options.pop("budget_bits", None)
    opts = weight_options(scheme, bits, options, channel_axis=1)

    tensors = {f"coefs_.{i}": np.ascontiguousarray(w, dtype=np.float32) for i, w in enumerate(estimator.coefs_)}
    quantize_model = getattr(qcore, "quantize_model", None)
    if quantize_model is not None:
        extra = {} if budget_bits is None else {"budget_bits": budget_bits}
        qm = quantize_model(tensors, scheme, include=include, exclude=exclude, progress=False, **extra, **opts)
        report = [dict(r) for r in qm.report()]
        model = qm
        qts = {r["name"]: qm[r["name"]] for r in report if r.get("scheme") is not None}
    else:
        if budget_bits is not None:
            raise TypeError("budget_bits needs qcore.quantize_model (the model layer), which this qcore lacks")
        qcore.get_quantizer(scheme, **opts)  # bad options fail before any work
        _, report, model = _fallback_quantize(tensors, scheme, opts, include, exclude)
        qts = model

    quantized = {r["name"] for r in report if r.get("scheme") is not None}
    est = copy.deepcopy(estimator)
    for i, w in enumerate(estimator.coefs_):
        name = f"coefs_.{i}"
        if name in quantized:
            est.coefs_[i] = PackedMatrix(qts[name], dtype=w.dtype)
    est.qcore_report_ = report
    est.qcore_model_ = model
    est.qcore_scheme_ = scheme
    return est
