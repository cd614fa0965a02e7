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

import copy
from typing import Iterable

import numpy as np

try:  # an adapter imported without its framework says how to install it (tests/test_sklearn.py)
    import sklearn  # noqa: F401 - first: submodules already in sys.modules would import without it
    from sklearn.neural_network._multilayer_perceptron import BaseMultilayerPerceptron
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:
    raise ImportError(
        "qcore.integrations.sklearn needs scikit-learn, which is not installed: pip install scikit-learn"
    ) from exc

import qcore

from ._common import weight_options
from ._packed import PackedMatrix

__all__ = ["quantize_estimator"]


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
    the :meth:`qcore.QModel.report` format; weights left in float have ``scheme`` None and ``bits`` 32),
    ``qcore_model_`` (the :class:`qcore.QModel` of its weights) and ``qcore_scheme_``.
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
    extra = {} if budget_bits is None else {"budget_bits": budget_bits}
    model = qcore.quantize_model(tensors, scheme, include=include, exclude=exclude, progress=False, **extra, **opts)
    report = [dict(r) for r in model.report()]
    qts = {r["name"]: model[r["name"]] for r in report if r.get("scheme") is not None}

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
