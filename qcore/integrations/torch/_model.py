"""Model-level functions: quantize_dynamic, prepare_qat, convert (prepare: see _graph)."""
from __future__ import annotations

from torch import nn

import copy
import warnings
from typing import Callable, Iterable

import qcore

from .._common import bits_alias, name_selected, scheme_class, weight_options
from ._modules import QConv2d, QLinear
from ._qat import ActivationFakeQuant, QATConv2d, QATLinear, _activation_spec
from ._fusion import apply_fusion, plan_fusion
from ._static import ObservedConv2d, ObservedLinear, static_from_observed, static_from_qat
from ._tensors import _qtensor_of
from ._walk import _check_module, _swap  # noqa: F401 - _swap: also imported from here by _apply


def _is_planner(scheme: str) -> bool:
    return isinstance(scheme_class(scheme), type) and issubclass(scheme_class(scheme), qcore.Planner)


def quantize_dynamic(module: nn.Module, scheme: str = "linear", bits: int | None = None, *,
                     weight_bits: int | None = None,
                     include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
                     inplace: bool = False, method: str = "rtn", calibrate: Callable[[nn.Module], object] | None = None,
                     gptq_options: dict | None = None, awq: bool = False, progress: bool = True,
                     **options) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` (exactly that type) replaced by :class:`QLinear`.

    :param scheme: any installed qcore scheme; ``options`` go to it, over the scheme's own defaults for weights
        (``role_defaults["weight"]``: ``linear`` per output channel and symmetric, ``log`` per output channel,
        ``kmeans`` one codebook; docs/usage.md, "Defaults") with ``axis=0`` (torch's output channels) where the
        layout is per channel
    :param weight_bits: bits per weight code (None: the scheme's default, 8 for ``linear``, 4 for ``log`` and
        ``kmeans``); ``bits`` is the same (the spelling DESIGN.md fixes)
    :param include: glob pattern(s) on qualified module names (``"encoder.*.fc?"``); only those are quantized
    :param exclude: glob pattern(s) of names left in float
    :param inplace: modify ``module`` itself instead of a deep copy
    :param method: ``"rtn"`` (round to nearest) or ``"gptq"``: each layer quantized by :func:`qcore.gptq` with the
        Hessian of its inputs while ``calibrate(model)`` runs, layer after layer, each seeing the earlier layers
        already quantized (see ``qcore.integrations.torch._ptq``)
    :param calibrate: ``fn(model)`` running forward passes on calibration data (needed by ``method="gptq"``
        and by ``scheme="mixed"`` to measure candidates on the layers' outputs); or data (a tensor, a dict of
        tensors, a list of strings for a sentence-transformers model, a list of batches); or a list of such
        sources ``[fn1, fn2, ...]``, mixed with equal weight in every layer's statistics whatever their sizes
    :param gptq_options: ``block_size``, ``damp``, ``act_order``, ``clip_search`` for :func:`qcore.gptq`
        (``clip_search`` also applies to ``awq=True`` with ``method="rtn"``), and ``float_targets`` (default
        True: layers in repeated blocks fitted to the float model's outputs, see
        :func:`qcore.ptq.correct_for_input_shift`)
    :param awq: activation-aware scaling (``qcore.ptq.awq``; needs ``calibrate``): each layer's weight is
        quantized as ``Q(W * s)`` with a per-input-channel ``s`` chosen on its calibration inputs, the layer
        becoming :class:`AWQLinear` (input divided by ``s``); with ``method="gptq"`` the scaled weight is
        quantized by GPTQ.  Not with ``scheme="mixed"``.
    :param progress: a progress bar over layers (on a terminal) while calibrating

    Every layer runs ``qcore.ops.qlinear`` on the packed weight (the int8 GEMM for 8-bit affine weights per
    channel, the low-bit kernel for other affine and table forms, decoded rows for the rest; no float copy).
    Subclasses of ``nn.Linear`` (e.g. attention's ``out_proj``, whose weight is read directly) are left alone.
    """
    _check_module(module)
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and calibrate is None:
        raise TypeError("method='gptq' needs calibrate=fn, a function running calibration forwards on the model")
    if calibrate is not None:
        from ._ptq import Sources

        calibrate = Sources(calibrate)  # a function, data, or a list of them (mixed with equal weight)
    if not isinstance(awq, bool):
        raise TypeError(f"awq must be True or False, got {awq!r}")
    if awq and calibrate is None:
        raise TypeError("awq=True needs calibrate=fn, a function running calibration forwards on the model")
    if gptq_options is not None and method != "gptq" and not awq:
        raise TypeError("gptq_options are for method='gptq' (or awq=True)")
    bits = bits_alias(bits, weight_bits, "bits", "weight_bits", warn=False)
    model = module if inplace else copy.deepcopy(module)
    wopts = weight_options(scheme, bits, options, channel_axis=0)
    qcore.get_quantizer(scheme, **wopts)  # bad options fail here, before any layer is touched
    if calibrate is not None and _is_planner(scheme):
        if awq:
            raise TypeError("awq=True is not available with a planner scheme such as 'mixed'")
        from ._ptq import check_gptq_options
        from ._ptq_mixed import quantize_mixed

        gopts, float_targets = check_gptq_options(gptq_options)
        if gopts:
            if "gptq_options" not in scheme_class(scheme).options:
                raise TypeError(f"planner {scheme!r} takes no gptq_options")
            wopts = {**wopts, "gptq_options": gopts}
        return quantize_mixed(model, qcore.get_quantizer(scheme, **wopts), calibrate, method=method,
                              include=include, exclude=exclude, progress=progress, float_targets=float_targets)
    if method == "gptq" or awq:
        from ._ptq import quantize_calibrated

        return quantize_calibrated(model, scheme, wopts, calibrate, method=method, include=include,
                                   exclude=exclude, gptq_options=gptq_options, awq=awq, progress=progress)

    def make(name, child):
        if type(child) is nn.Linear and name_selected(name, include, exclude):
            q = qcore.get_quantizer(scheme, **wopts)
            return QLinear(child.in_features, child.out_features, _qtensor_of(child.weight, q), child.bias)
        return None

    if isinstance(model, nn.Linear) and type(model) is nn.Linear:
        if name_selected("", include, exclude):
            return make("", model)
        return model
    if _swap(model, make) == 0:
        warnings.warn("quantize_dynamic: no nn.Linear module was selected; the model is unchanged", stacklevel=2)
    return model


def prepare_qat(module: nn.Module, scheme: str = "linear", bits: int | None = None, *, weight_bits: int | None = None,
                activations=False, include: Iterable[str] | str | None = None,
                exclude: Iterable[str] | str | None = None, inplace: bool = False, **options) -> nn.Module:
    """A copy of ``module`` ready for quantization-aware training.

    Every ``nn.Linear`` and ``nn.Conv2d`` (exactly those types, chosen by ``include``/``exclude`` glob patterns)
    becomes :class:`QATLinear` / :class:`QATConv2d`: the forward uses ``decode(encode(weight))`` of the qcore
    scheme (refitted on the current weight at every step), the backward is straight-through, so any optimizer
    trains the float weights.  ``activations=True`` (or a dict of :class:`ActivationFakeQuant` options such as
    ``{"activation_bits": 8, "observer": "minmax"}``) also fake-quantizes the input of each of those layers,
    calibrated by a qcore observer while training.

    ``weight_bits``: bits per weight code (None: the scheme's default; ``bits`` is its deprecated alias, which
    meant weight bits here but activation bits in :func:`prepare`).  Weight options default to the scheme's
    weight defaults, as in :func:`quantize_dynamic`.

    With ``inplace=False`` (default) the copy has its own parameters: build the optimizer on the returned model.
    With ``inplace=True`` the layers are swapped inside ``module`` and keep the very same ``Parameter`` objects.
    """
    _check_module(module)
    bits = bits_alias(bits, weight_bits, "bits", "weight_bits", warn=True)
    model = module if inplace else copy.deepcopy(module)
    act = _activation_spec(activations)
    if act is not None:
        ActivationFakeQuant(**act)  # bad activation options fail here
    wopts = weight_options(scheme, bits, options, channel_axis=0)
    qcore.get_quantizer(scheme, **wopts)

    def make(name, child):
        if not name_selected(name, include, exclude):
            return None
        if type(child) is nn.Linear:
            return QATLinear.from_float(child, scheme, wopts, act)
        if type(child) is nn.Conv2d:
            return QATConv2d.from_float(child, scheme, wopts, act)
        return None

    if type(model) in (nn.Linear, nn.Conv2d):
        return make("", model) or model
    if _swap(model, make) == 0:
        warnings.warn("prepare_qat: no nn.Linear or nn.Conv2d module was selected; the model is unchanged",
                      stacklevel=2)
    return model


def _frozen(aq: ActivationFakeQuant | None) -> ActivationFakeQuant | None:
    if aq is None:
        return None
    aq = copy.deepcopy(aq)
    aq.eval()
    return aq


def convert(module: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The quantized model of a prepared (:func:`prepare`) or QAT (:func:`prepare_qat`) model.

    * Layers prepared for static quantization (observers on their inputs, calibrated by running batches)
      become :class:`StaticLinear` / :class:`StaticConv2d`: int8 input quantized with the calibrated per-tensor
      parameters, int8 per-channel weights, int32 accumulation.
    * QAT layers whose input was fake-quantized by an 8-bit :class:`ActivationFakeQuant` whose codes decode
      affinely per tensor (``prepare_qat(..., activations=True)``: ``linear``) and whose weight codes are signed
      and decode as ``codes * scale`` per tensor or output channel (``linear`` symmetric, the weight default)
      become the same static modules, with the fake quantizer's scale and zero point and the weight codes the
      QAT model trained with.
    * Other QAT layers: :class:`QATLinear` → :class:`QLinear`, :class:`QATConv2d` → :class:`QConv2d`, weights
      quantized by the same scheme and options as during training.  Activation fake-quantizers are kept, frozen.

    Static layers are fused with what follows them in ``forward`` (read by ``torch.fx`` when the model traces,
    else from the order of ``nn.Sequential`` children): a ``BatchNorm2d`` after a convolution is folded into
    its weights, a ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``) into its epilogue, and a static layer feeding
    one of the same kind passes uint8 codes instead of float (see ``docs/integrations.md``).
    """
    _check_module(module)
    from ._graph import convert_model, is_graph_prepared

    if is_graph_prepared(module):
        return convert_model(module, inplace)
    model = module if inplace else copy.deepcopy(module)
    plan = plan_fusion(model)
    made = {}

    def bn_of(child):
        site = plan.site(child)
        return None if site is None else site.bn

    def make(name, child):
        new = _make(child)
        if new is not None:
            made[id(child)] = new
        return new

    def _make(child):
        if isinstance(child, (ObservedLinear, ObservedConv2d)):
            return static_from_observed(child, bn=bn_of(child))
        if isinstance(child, (QATLinear, QATConv2d)):
            static = static_from_qat(child, bn=bn_of(child))
            if static is not None:
                return static
        if isinstance(child, QATLinear):
            return QLinear(child.in_features, child.out_features, child.quantized_weight(), child.bias,
                           _frozen(child.input_quantizer))
        if isinstance(child, QATConv2d):
            return QConv2d._like(child, child.quantized_weight(), _frozen(child.input_quantizer))
        return None

    if isinstance(model, (QATLinear, QATConv2d, ObservedLinear, ObservedConv2d)):
        return make("", model)
    if _swap(model, make) == 0:
        warnings.warn("convert: the model has no prepared or QAT layers (use prepare or prepare_qat first, or "
                      "quantize_dynamic)", stacklevel=2)
    apply_fusion(model, plan, made)
    return model
