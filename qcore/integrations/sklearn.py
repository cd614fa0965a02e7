"""scikit-learn integration: quantize the weights of a fitted ``MLPClassifier`` / ``MLPRegressor`` and predict on
the packed codes.

::

    from qcore.integrations import sklearn as qsk

    qclf = qsk.quantize_estimator(clf, "linear", bits=8)        # a quantized copy; clf is untouched
    qclf.score(X, y)                                             # predictions compute on the int8 codes
    qclf.qcore_report_                                           # per layer: name, scheme, bits, shape, bytes, SQNR

scikit-learn stores a layer's weight as ``coefs_[i]`` of shape ``(n_in, n_out)``.  The adapter quantizes its
transpose ``coefs_[i].T`` — ``(n_out, n_in)``, the ``(N, K)`` layout of ``qcore.ops.qlinear`` and of torch's
``nn.Linear`` — with any installed qcore scheme (named ``"coefs_.0"``, ``"coefs_.1"``, ...), so per-channel scales
are per output unit and groups (``granularity="group"``) run along the inputs: 4-bit group-32 works on every
layer whose input count is a multiple of 32, a 512 -> 10 output layer included.  Each ``coefs_[i]`` becomes a
:class:`qcore.integrations._packed.PackedMatrix` holding only the packed ``QTensor`` (``.qtensor``), and
``predict``/``predict_proba``/``score`` run every layer through ``qcore.ops.qlinear``: activations quantized
exactly as for the torch adapter (8-bit linear weights: per row to uint8; other weights: per block of 32 inputs
to int8; docs/gemm.md §7 and §12) and an integer product on the codes, whose float32 result is what scikit-learn
sees: hidden layers stay float32 (scikit-learn adds the bias ``intercepts_[i]`` into that float32 array and
applies its activation in place), the output layer's product is cast to the estimator's dtype (float64 unless it
was fitted on float32) before the bias and the output activation (softmax, logistic or identity).  ``np.asarray(qclf.coefs_[i])``
decodes a weight on demand, in the ``(n_in, n_out)`` layout.  The copy is for inference: refitting it
(``fit``/``partial_fit``) is not supported.  Options not given take the scheme's own defaults for weights
(``role_defaults["weight"]``; ``linear``: one scale per output unit, ``granularity="channel"``, and
``symmetric=True``; docs/usage.md, "Defaults"); the adapter sets only the channel axis.  ``axis`` options are given
in scikit-learn's layout (``axis=1``: per output unit, the default; ``axis=0``: per input).
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

from ..validation import normalize_axis
from ._common import bits_alias, weight_options
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
    :param options: scheme options: ``weight_bits`` (or ``bits``, the same; default: the scheme's, 8 for ``linear``),
        ``granularity``, ... and, for ``mixed``, ``budget_bits``; unset options take the scheme's weight defaults
        (``linear``: per output unit, symmetric)

    The copy carries ``qcore_report_`` (per weight: ``name, scheme, bits, shape, bytes_fp32, bytes_q, sqnr_db``,
    the :meth:`qcore.QModel.report` format; weights left in float have ``scheme`` None and ``bits`` 32),
    ``qcore_model_`` (the :class:`qcore.QModel` of its weights) and ``qcore_scheme_``.  Both describe the
    transposed weights ``coefs_[i].T`` (shape ``(n_out, n_in)``, what the kernels compute with; a saved
    ``qcore_model_`` loads into torch ``nn.Linear`` layers of the same sizes as they are).
    """
    if not isinstance(estimator, BaseMultilayerPerceptron):
        raise TypeError(
            f"quantize_estimator supports fitted MLPClassifier and MLPRegressor, got {type(estimator).__name__}"
        )
    check_is_fitted(estimator, "coefs_")
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a scheme name (str), got {type(scheme).__name__}")
    options = dict(options)
    bits = bits_alias(options.pop("bits", None), options.pop("weight_bits", None), "bits", "weight_bits", warn=False)
    budget_bits = options.pop("budget_bits", None)
    opts = weight_options(scheme, bits, options, channel_axis=1)
    if "axis" in opts:  # given in scikit-learn's (n_in, n_out) layout; the tensors are transposed
        opts["axis"] = 1 - normalize_axis(opts["axis"], 2)

    tensors = {f"coefs_.{i}": np.ascontiguousarray(w.T, dtype=np.float32) for i, w in enumerate(estimator.coefs_)}
    extra = {} if budget_bits is None else {"budget_bits": budget_bits}
    model = qcore.quantize_model(tensors, scheme, include=include, exclude=exclude, progress=False, **extra, **opts)
    report = [dict(r) for r in model.report()]
    qts = {r["name"]: model[r["name"]] for r in report if r.get("scheme") is not None}

    quantized = {r["name"] for r in report if r.get("scheme") is not None}
    est = copy.deepcopy(estimator)
    last = len(estimator.coefs_) - 1
    for i, w in enumerate(estimator.coefs_):
        name = f"coefs_.{i}"
        if name in quantized:  # hidden layers hand float32 (the kernel's output) to the next one: no conversions
            est.coefs_[i] = PackedMatrix(qts[name], dtype=w.dtype if i == last else np.float32)
    est.qcore_report_ = report
    est.qcore_model_ = model
    est.qcore_scheme_ = scheme
    return est
