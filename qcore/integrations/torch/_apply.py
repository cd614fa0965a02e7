"""``apply_quantized``: a saved quantized model (qcore file, compressed-tensors folder or a QModel) into a torch
module's Linear layers, by name, without quantizing again."""
from __future__ import annotations

import copy
import os

import numpy as np
import torch
from torch import nn

import qcore
from qcore.tensor import QTensor

from ._walk import _swap
from ._modules import QLinear


def apply_quantized(module: nn.Module, path_or_qmodel, inplace: bool = False) -> nn.Module:
    """A copy of ``module`` (or ``module`` itself with ``inplace=True``) whose ``nn.Linear`` layers named in the
    saved model are :class:`QLinear` holding the saved ``QTensor`` weights — the very codes and parameters of
    the file, not a new quantization.

    :param path_or_qmodel: a qcore ``.safetensors`` file, a compressed-tensors folder, or a :class:`qcore.QModel`
    Each quantized tensor ``NAME.weight`` goes to the Linear ``NAME`` (``NAME.bias``, if quantized too, is decoded
    into that layer's bias).  A name with no such Linear, a layer that is not an ``nn.Linear``, or a shape that
    differs raises ``ValueError`` listing every mismatch, before the module is touched.  Tensors the file keeps
    in float are not loaded (the module keeps its own).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(path_or_qmodel, qcore.QModel):
        qm = path_or_qmodel
    elif isinstance(path_or_qmodel, (str, os.PathLike)):
        qm = qcore.load_quantized(path_or_qmodel)
    else:
        raise TypeError(f"path_or_qmodel must be a path or a qcore.QModel, got {type(path_or_qmodel).__name__}")

    modules = dict(module.named_modules())
    weights: dict[str, QTensor] = {}
    biases: dict[str, QTensor] = {}
    problems: list[str] = []
    for name in qm.quantized:
        owner, _, leaf = name.rpartition(".")
        if leaf not in ("weight", "bias"):
            problems.append(f"{name}: not a Linear parameter (NAME.weight or NAME.bias)")
            continue
        (weights if leaf == "weight" else biases)[owner] = qm[name]
    for owner, qt in weights.items():
        m = modules.get(owner)
        if m is None:
            problems.append(f"{owner}.weight: the module has no submodule {owner!r}")
        elif not isinstance(m, nn.Linear):
            problems.append(f"{owner}.weight: {owner!r} is a {type(m).__name__}, not an nn.Linear")
        elif tuple(qt.shape) != (m.out_features, m.in_features):
            problems.append(f"{owner}.weight: saved shape {tuple(qt.shape)}, the layer's weight is "
                            f"{(m.out_features, m.in_features)}")
    for owner, qt in biases.items():
        m = modules.get(owner)
        if owner not in weights:
            problems.append(f"{owner}.bias: quantized bias without a quantized weight")
        elif isinstance(m, nn.Linear) and (m.bias is None or tuple(m.bias.shape) != tuple(qt.shape)):
            problems.append(f"{owner}.bias: saved shape {tuple(qt.shape)}, the layer's bias is "
                            f"{None if m.bias is None else tuple(m.bias.shape)}")
    if problems:
        raise ValueError(f"apply_quantized: {len(problems)} saved tensor(s) do not fit the module: " + "; ".join(problems[:20])
                         + (" ..." if len(problems) > 20 else ""))

    model = module if inplace else copy.deepcopy(module)

    def make(name, child):
        qt = weights.get(name)
        if qt is None or not isinstance(child, nn.Linear):
            return None
        bias = child.bias
        if name in biases:
            bias = torch.from_numpy(np.ascontiguousarray(biases[name].dequantize())).to(child.bias.dtype)
        return QLinear(child.in_features, child.out_features, qt, None if bias is None else bias.detach())

    if not weights:
        return model
    if "" in weights:  # the module itself is the Linear
        return make("", model)
    _swap(model, make)
    return model
