"""ONNX export of models holding qcore ``QLinear`` layers: the weights go out quantized, as ONNX Runtime runs them.

``export_onnx(model, example_inputs, path, standard=False)`` exports the model with torch's exporter, each
``QLinear`` standing in as a float ``nn.Linear`` carrying exactly the dequantized weight, then replaces every
matrix product with such a weight by an operator that holds the codes (decided from the weight's decode form and
layout, never from its scheme's name):

* ``standard=False`` (default): linear 2-8 bit weights in groups of a power of two >= 16 along the inputs become
  ``com.microsoft.MatMulNBits`` (ONNX Runtime): codes packed along K at 2, 4 or 8 bits (the widths ONNX Runtime's
  CPU kernels take: 3-bit codes are stored in 4, 5-7 bit codes in 8, exactly), one scale per block
  (``scales`` ``(N, blocks)``), zero points packed like the codes when the codes are unsigned with a zero point
  (signed codes use the operator's default zero point ``2^(bits-1)``: ``code + 2^(bits-1)`` is stored), a
  float zero point ``-minimum/scale`` for ``zero="minimum"``;
* ``standard=True``: the same weights as a blocked ``DequantizeLinear`` (opset 21: ``int4``/``uint4`` codes for
  2-4 bits, ``int8``/``uint8`` for 5-8, ``block_size`` = the group size, any size) feeding ``MatMul``;
* per-output-channel (or per-tensor) 2-8 bit weights: ``DequantizeLinear`` per axis (int8/uint8, or int4/uint4
  at 2-4 bits, which needs opset 21) feeding ``MatMul`` — the weight half of ONNX's QDQ form;
* anything no node expresses (lookup tables such as k-means and log, 1-bit binary weights, scales along the
  input axis, ``zero="minimum"`` under ``standard=True``): the float weight stays, with a warning naming the
  layers and the bytes they cost.  ``QConv2d`` layers are exported the same way (float, warned).

Accuracy (docs/deploy.md): with ``accuracy_level=0`` MatMulNBits computes ``A @ dequantize(W).T`` in float, the
values qcore dequantized (float zero points of ``zero="minimum"`` add one float rounding);
``accuracy_level=4`` lets ONNX Runtime quantize activations to int8 per block of ``block_size``, as
``qcore.ops.qlinear`` does per block of 32.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...model.atomic import atomic_output
from ...quantization.forms import Affine
from ...tensor import QTensor
from ._modules import QConv2d, QLinear

MS_DOMAIN = "com.microsoft"
#: the opset of the exported graph (raised to 21 when int4 DequantizeLinear or blocked DequantizeLinear is used)
DEFAULT_OPSET = 18
STANDARD_OPSET = 21


class ONNXExportWarning(UserWarning):
    """A weight left in float in the exported model (no ONNX node expresses its decode)."""


# -- what each weight becomes --------------------------------------------------------------------------------
class _Plan:
    """How one QLinear weight goes out: ``kind`` "nbits" | "dq_block" | "dq_axis" | "float", with the reason."""

    def __init__(self, kind: str, reason: str = "", **info):
        self.kind, self.reason, self.info = kind, reason, info


def _pow2(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


def plan_weight(qt: QTensor, standard: bool) -> _Plan:
    """The node that computes with ``qt`` (an ``(N, K)`` weight) exactly, or "float" with the reason."""
    if len(qt.shape) != 2:
        return _Plan("float", f"{len(qt.shape)}-d weight")
    form = qt.decodes_as()
    if not isinstance(form, Affine):
        return _Plan("float", f"scheme {qt.scheme!r} decodes through {'a lookup table' if form is not None else 'its own decode'}")
    if not 2 <= qt.bits <= 8:
        return _Plan("float", f"{qt.bits}-bit codes")
    layout = qt.layout
    n, k = qt.shape
    if layout.granularity == "group":
        gs = int(layout.group_size)
        if form.offset is not None:
            if standard:
                return _Plan("float", "zero='minimum' (DequantizeLinear's zero point is an integer)")
            if not (_pow2(gs) and gs >= 16):
                return _Plan("float", f"group size {gs} (MatMulNBits blocks are powers of two >= 16)")
            return _Plan("nbits", form=form, block=gs)
        if standard:
            return _Plan("dq_block", form=form, block=gs)
        if _pow2(gs) and gs >= 16:
            return _Plan("nbits", form=form, block=gs)
        return _Plan("dq_block", form=form, block=gs)  # blocked DequantizeLinear takes any block size
    if form.offset is not None:
        return _Plan("float", "zero='minimum' per channel")
    if layout.granularity == "tensor" or (layout.granularity == "channel" and layout.axis == 0):
        return _Plan("dq_axis", form=form)
    return _Plan("float", f"scales along axis {layout.axis} (the input axis)")


def container_bits(bits: int) -> int:
    """The MatMulNBits width that holds ``bits``-bit codes (ONNX Runtime's CPU kernels take 2, 4 and 8)."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def plan_embedding(qt: QTensor, standard: bool) -> _Plan:
    """How a quantized ``(V, D)`` embedding table goes out: ``GatherBlockQuantized`` (ONNX Runtime: 4-bit codes in
    blocks of a power of two >= 16 along D), with ``standard=True`` a blocked ``DequantizeLinear`` + ``Gather``."""
    form = qt.decodes_as()
    if len(qt.shape) != 2 or not isinstance(form, Affine) or form.offset is not None:
        return _Plan("float", "its decode is not (q - zero_point) * scale")
    layout = qt.layout
    if layout.granularity != "group" or not 2 <= qt.bits <= 4:
        return _Plan("float", "not 2-4 bit codes in groups along the embedding dimension")
    gs = int(layout.group_size)
    if standard:
        return _Plan("dq_gather", form=form, block=gs)
    if not (_pow2(gs) and gs >= 16):
        return _Plan("float", f"group size {gs} (GatherBlockQuantized blocks are powers of two >= 16)")
    return _Plan("gather_q", form=form, block=gs)


def _int4_raw(values: np.ndarray) -> np.ndarray:
    """4-bit values (their low nibbles) packed two per byte, first value in the low nibble (ONNX int4/uint4)."""
    nib = (np.asarray(values).astype(np.int16) & 0x0F).astype(np.uint8).reshape(-1)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    return nib[0::2] | (nib[1::2] << 4)


def _unsigned_codes(qt: QTensor, width: int) -> np.ndarray:
    """Codes as unsigned ``v`` in [0, 2^width): signed codes move up by 2^(width-1), the zero point MatMulNBits
    assumes when none is given."""
    c = np.asarray(qt.codes).astype(np.int16)
    if qt.signed:
        c = c + (1 << (width - 1))
    return c.astype(np.uint8)


def _pack_lsb(values: np.ndarray, bits: int) -> np.ndarray:
    """Rows of values in [0, 2^bits) packed along the last axis, value ``i`` at bits ``[i*bits, (i+1)*bits)`` of
    the row's little-endian byte stream (MatMulNBits' "low bits first" packing)."""
    v = np.asarray(values, np.uint8)
    lead, cols = v.shape[:-1], v.shape[-1]
    bitmat = ((v[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(*lead, cols * bits)
    pad = -bitmat.shape[-1] % 8
    if pad:
        bitmat = np.concatenate([bitmat, np.zeros((*lead, pad), np.uint8)], axis=-1)
    return np.packbits(bitmat, axis=-1, bitorder="little")


def _scales(form: Affine, n: int, groups: int) -> np.ndarray:
    return np.asarray(form.scale, np.float32).reshape(n, groups)




# -- the graph rewrite ---------------------------------------------------------------------------------------
def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a, np.float32)
    return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()


class _Rewriter:
    def __init__(self, model_proto, standard: bool, accuracy_level: int):
        import onnx
        from onnx import numpy_helper

        self.onnx, self.nh = onnx, numpy_helper
        self.m = model_proto
        self.g = model_proto.graph
        self.standard = standard
        self.accuracy_level = int(accuracy_level)
        self.init = {t.name: t for t in self.g.initializer}
        self.producers = {o: nd for nd in self.g.node for o in nd.output}
        self.new_inits: list = []
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"qcore_{self.count}_{base}"

    def _add_init(self, name: str, arr: np.ndarray, data_type=None, dims=None):
        if data_type is None:
            self.new_inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        else:  # 4-bit types: raw bytes, two values per byte, low nibble first
            t = self.onnx.TensorProto()
            t.name, t.data_type = name, data_type
            t.dims.extend(dims)
            t.raw_data = np.ascontiguousarray(arr, np.uint8).tobytes()
            self.new_inits.append(t)
        return name

    def _weight_of(self, name: str) -> np.ndarray | None:
        """The constant array behind an input name (an initializer, possibly through a Transpose), or None."""
        if name in self.init:
            return self.nh.to_array(self.init[name])
        return None

    def nodes_for(self, qt: QTensor, plan: _Plan, a: str, prefix: str) -> tuple[list, str]:
        """Nodes computing ``a @ dequantize(W).T`` into a new name; returns ``(nodes, output name)``."""
        helper = self.onnx.helper
        n, k = qt.shape
        out = self._name(prefix + "_out")
        form = plan.info.get("form")
        if plan.kind == "nbits":
            bs, bits = plan.info["block"], container_bits(qt.bits)
            groups = k // bs
            v = _unsigned_codes(qt, bits).reshape(n, groups, bs)
            b = _pack_lsb(v, bits)  # (n, groups, bs*bits/8)
            inputs = [a, self._add_init(self._name(prefix + "_B"), b),
                      self._add_init(self._name(prefix + "_scales"), _scales(form, n, groups))]
            if form.offset is not None:  # (v - zpf) * s = v*s + m with zpf = -m/s (float zero point)
                s = _scales(form, n, groups)
                m = np.broadcast_to(np.asarray(form.offset, np.float32).reshape(-1) if np.size(form.offset) > 1
                                    else np.asarray(form.offset, np.float32).reshape(()), (n * groups,)).reshape(n, groups)
                inputs.append(self._add_init(self._name(prefix + "_zp"), (-m / s).astype(np.float32)))
            elif not qt.signed:
                zp = form.zero_points().reshape(n, groups).astype(np.uint8)
                inputs.append(self._add_init(self._name(prefix + "_zp"), _pack_lsb(zp, bits)))
            node = helper.make_node("MatMulNBits", inputs, [out], domain=MS_DOMAIN, name=self._name(prefix),
                                    K=k, N=n, bits=bits, block_size=bs, accuracy_level=self.accuracy_level)
            return [node], out
        # DequantizeLinear of W^T (K, N), then MatMul
        tp = self.onnx.TensorProto
        four = qt.bits <= 4
        signed = qt.signed
        codes = np.asarray(qt.codes).T  # (K, N)
        if four:
            dt = tp.INT4 if signed else tp.UINT4
            xname = self._add_init(self._name(prefix + "_q"), _int4_raw(codes), dt, [k, n])
        else:
            xname = self._add_init(self._name(prefix + "_q"), np.ascontiguousarray(codes.astype(np.int8 if signed else np.uint8)))
        attrs: dict[str, Any] = {}
        if plan.kind == "dq_block":
            bs = plan.info["block"]
            groups = k // bs
            scale = _scales(form, n, groups).T.copy()  # (K/bs, N)
            zp = None if signed else form.zero_points().reshape(n, groups).T
            attrs.update(axis=0, block_size=bs)
        else:  # per output channel (axis 1 of W^T) or per tensor
            per_tensor = qt.layout.granularity == "tensor"
            scale = np.asarray(form.scale, np.float32).reshape(-1)
            scale = scale.reshape(()) if per_tensor else scale
            zp = None if signed else form.zero_points().reshape(-1)
            zp = None if zp is None else (zp.reshape(()) if per_tensor else zp)
            if not per_tensor:
                attrs["axis"] = 1
        inputs = [xname, self._add_init(self._name(prefix + "_scale"), np.ascontiguousarray(scale, np.float32))]
        if zp is not None:
            zp = np.asarray(zp)
            if four:
                inputs.append(self._add_init(self._name(prefix + "_zp"), _int4_raw(zp), tp.UINT4, list(zp.shape)))
            else:
                inputs.append(self._add_init(self._name(prefix + "_zp"), np.ascontiguousarray(zp.astype(np.uint8))))
        wdq = self._name(prefix + "_w")
        dq = helper.make_node("DequantizeLinear", inputs, [wdq], name=self._name(prefix + "_dq"), **attrs)
        mm = helper.make_node("MatMul", [a, wdq], [out], name=self._name(prefix + "_mm"))
        return [dq, mm], out

    def gather_nodes(self, qt: QTensor, plan: _Plan, indices: str, output: str, prefix: str) -> list:
        """Nodes computing ``Gather(dequantize(E), indices)`` into ``output`` for a ``(V, D)`` table ``qt``."""
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        v, d = qt.shape
        bs = plan.info["block"]
        form = plan.info["form"]
        groups = d // bs
        dt = tp.INT4 if qt.signed else tp.UINT4
        inputs = [self._add_init(self._name(prefix + "_q"), _int4_raw(qt.codes), dt, [v, d]), indices,
                  self._add_init(self._name(prefix + "_scales"), _scales(form, v, groups))]
        if not qt.signed:
            inputs.append(self._add_init(self._name(prefix + "_zp"), _int4_raw(form.zero_points().reshape(v, groups)),
                                         tp.UINT4, [v, groups]))
        if plan.kind == "gather_q":
            return [helper.make_node("GatherBlockQuantized", inputs, [output], domain=MS_DOMAIN, name=self._name(prefix),
                                     gather_axis=0, quantize_axis=1, block_size=bs)]
        table = self._name(prefix + "_table")
        dq_inputs = [inputs[0]] + inputs[2:]
        return [helper.make_node("DequantizeLinear", dq_inputs, [table], name=self._name(prefix + "_dq"), axis=1,
                                 block_size=bs),
                helper.make_node("Gather", [table, indices], [output], name=self._name(prefix + "_gather"), axis=0)]

    def rewrite(self, weights: dict[str, tuple[QTensor, _Plan, str]]) -> list[str]:
        """Replace MatMul/Gemm nodes whose weight is one of ``weights`` (digest of ``W`` or ``W.T`` -> (qt, plan,
        layer name)); returns the layer names replaced."""
        helper = self.onnx.helper
        new_nodes, replaced = [], []
        for node in self.g.node:
            hit = None
            if node.op_type == "Gather" and len(node.input) == 2:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                w = self._weight_of(node.input[0]) if attrs.get("axis", 0) == 0 else None
                hit = weights.get(_digest(w)) if w is not None and w.ndim == 2 else None
                if hit is not None and hit[1].kind in ("gather_q", "dq_gather"):
                    qt, plan, layer = hit
                    new_nodes.extend(self.gather_nodes(qt, plan, node.input[1], node.output[0],
                                                       layer.replace(".", "_") or "embedding"))
                    replaced.append(layer)
                    continue
                hit = None
            if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                               or attrs.get("beta", 1.0) != 1.0):
                    attrs = None
                w = self._weight_of(node.input[1]) if attrs is not None else None
                if w is not None and w.ndim == 2:
                    trans_b = node.op_type == "Gemm" and attrs.get("transB", 0)
                    key = _digest(w if trans_b else w.T)  # the (N, K) weight
                    hit = weights.get(key)
                    hit = hit if hit is not None and hit[1].kind in ("nbits", "dq_block", "dq_axis") else None
            if hit is None:
                new_nodes.append(node)
                continue
            qt, plan, layer = hit
            nodes, out = self.nodes_for(qt, plan, node.input[0], layer.replace(".", "_") or "linear")
            new_nodes.extend(nodes)
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                new_nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=self._name("bias")))
            else:
                new_nodes.append(helper.make_node("Identity", [out], [node.output[0]], name=self._name("out")))
            replaced.append(layer)
        del self.g.node[:]
        self.g.node.extend(new_nodes)
        self.g.initializer.extend(self.new_inits)
        # drop the float weights nothing reads any more
        used = {i for nd in self.g.node for i in nd.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        return replaced


# -- the public function -------------------------------------------------------------------------------------
def _float_twins(model: nn.Module, embeddings: dict | None):
    """Swap every QLinear / QConv2d of ``model`` (and with ``embeddings``, every nn.Embedding, quantized now) for a
    float module with its dequantized weight; returns ``(undo, {layer name: (module, QTensor)})``."""
    import qcore

    swaps, found = [], {}
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Embedding) and embeddings is not None:
                opts = dict(embeddings)
                qt = qcore.quantize(child.weight.detach().to(torch.float32).cpu().numpy(), opts.pop("scheme", "linear"), **opts)
                twin = nn.Embedding(child.num_embeddings, child.embedding_dim, padding_idx=child.padding_idx)
            elif isinstance(child, QLinear):
                qt = child.weight
                twin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            elif isinstance(child, QConv2d):
                qt = child.weight
                twin = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, bias=child.bias is not None, padding_mode=child.padding_mode)
            else:
                continue
            if not isinstance(child, nn.Embedding) and getattr(child, "input_quantizer", None) is not None:
                raise ValueError(f"layer {full!r} quantizes its input activations (QAT/static); export_onnx exports "
                                 f"weight-quantized layers (qtorch.quantize_dynamic / convert of weight-only QAT)")
            with torch.no_grad():
                twin.weight.copy_(torch.from_numpy(np.ascontiguousarray(qt.dequantize(), np.float32)).reshape(twin.weight.shape))
                if getattr(child, "bias", None) is not None:
                    twin.bias.copy_(child.bias.detach().to(torch.float32))
            setattr(mod, child_name, twin)
            swaps.append((mod, child_name, child))
            found[full] = (child, qt)

    def undo():
        for mod, child_name, child in reversed(swaps):
            setattr(mod, child_name, child)
    return undo, found


def export_onnx(model: nn.Module, example_inputs, path, standard: bool = False, *, accuracy_level: int = 0,
                embeddings: dict | None = None, input_names=None, output_names=None, dynamic_axes=None,
                opset: int | None = None) -> dict:
    """Export ``model`` (with ``qtorch.QLinear`` layers) to the ONNX file ``path``, weights kept quantized.

    :param example_inputs: a tensor or tuple of tensors (as ``torch.onnx.export`` takes; a dict of keyword
        inputs is passed as ``(dict,)``)
    :param standard: False: ``com.microsoft.MatMulNBits`` for grouped weights (ONNX Runtime); True: only standard
        ONNX operators (blocked ``DequantizeLinear``, opset 21, + ``MatMul``)
    :param accuracy_level: MatMulNBits' ``accuracy_level`` (0: float activations, exact; 4: int8 activations per
        block, ONNX Runtime's fast path)
    :param embeddings: None (``nn.Embedding`` tables stay float) or the qcore options to quantize them with on the
        way out (e.g. ``{"bits": 4, "symmetric": True, "granularity": "group", "group_size": 32}``; scheme
        ``"linear"`` unless ``"scheme"`` says otherwise): ``GatherBlockQuantized`` (standard: blocked
        ``DequantizeLinear`` + ``Gather``).  The QTensors used are returned under ``"embeddings"``.
    :returns: ``{"path", "file_size", "layers": {name: "MatMulNBits" | "DequantizeLinear(block)" |
        "DequantizeLinear(axis)" | "GatherBlockQuantized" | "float" | "unused"}, "embeddings": {name: QTensor},
        "opset"}``

    Layers no node expresses stay float with an :class:`ONNXExportWarning` (docs/deploy.md).  The file is
    written to a temporary name in the target's folder and renamed into place.
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be 0, 1, 2, 3 or 4, got {accuracy_level!r}")
    out = os.fspath(path)
    if os.path.isdir(out):
        raise ValueError(f"{out!r} is a folder; name the .onnx file to write")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of {out!r} does not exist")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    undo, found = _float_twins(model, embeddings)
    try:
        if not any(isinstance(m, QLinear) for m, _ in found.values()):
            raise ValueError("the model has no qtorch.QLinear layer (quantize it with qtorch.quantize_dynamic first)")
        weights, kinds, floats = {}, {}, []
        for name, (mod, qt) in found.items():
            if isinstance(mod, QConv2d):
                kinds[name] = "float"
                floats.append((name, "a convolution", qt))
                continue
            plan = plan_embedding(qt, standard) if isinstance(mod, nn.Embedding) else plan_weight(qt, standard)
            if plan.kind == "float":
                kinds[name] = "float"
                floats.append((name, plan.reason, qt))
                continue
            weights[_digest(qt.dequantize())] = (qt, plan, name)
            kinds[name] = {"nbits": "MatMulNBits", "dq_block": "DequantizeLinear(block)", "dq_axis": "DequantizeLinear(axis)",
                           "gather_q": "GatherBlockQuantized", "dq_gather": "DequantizeLinear(block)+Gather"}[plan.kind]
        buf = io.BytesIO()
        modes = [(m, m.training) for m in model.modules()]  # each module's own mode comes back, not the root's
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
                torch.onnx.export(model, tuple(example_inputs), buf, dynamo=False, opset_version=opset or DEFAULT_OPSET,
                                  input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)
        finally:
            for m, mode in modes:
                m.training = mode
    finally:
        undo()
    proto = onnx.load_from_string(buf.getvalue())
    if any(p.kind in ("dq_block", "dq_gather") or (p.kind == "dq_axis" and q.bits <= 4) for q, p, _ in weights.values()) \
            and _opset_of(proto) < STANDARD_OPSET:  # int4 and blocked DequantizeLinear are opset 21
        proto = onnx.version_converter.convert_version(proto, STANDARD_OPSET)
    rw = _Rewriter(proto, standard, accuracy_level)
    replaced = set(rw.rewrite(weights))
    left = set()  # float weights still in the file (W and W.T digests)
    for t in proto.graph.initializer:
        a = onnx.numpy_helper.to_array(t) if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 else None
        if a is not None:
            left |= {_digest(a), _digest(a.T)}
    for name in kinds:
        if kinds[name] not in ("float",) and name not in replaced:
            if _digest(found[name][1].dequantize()) in left:
                kinds[name] = "float"
                floats.append((name, "its product was not found in the exported graph (fused or reshaped by the "
                               "exporter)", found[name][1]))
            else:
                kinds[name] = "unused"  # the exporter dropped it: no output depends on it
        elif kinds[name] == "float" and _digest(found[name][1].dequantize()) not in left:
            kinds[name] = "unused"
            floats = [f for f in floats if f[0] != name]
    if any(n.domain == MS_DOMAIN for n in proto.graph.node) and not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    if floats:
        cost = sum(4 * qt.size for _, _, qt in floats)
        warnings.warn(f"export_onnx: {len(floats)} layer(s) stay float32 ({cost / 2**20:.2f} MiB): "
                      + "; ".join(f"{n}: {why}" for n, why, _ in floats[:5]) + (" ..." if len(floats) > 5 else ""),
                      ONNXExportWarning, stacklevel=2)
    with atomic_output(out) as f:
        f.write(proto.SerializeToString())
    return {"path": out, "file_size": os.path.getsize(out), "layers": kinds, "opset": _opset_of(proto),
            "embeddings": {n: qt for n, (m, qt) in found.items() if isinstance(m, nn.Embedding)}}


def _opset_of(proto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


__all__ = ["export_onnx", "plan_weight", "ONNXExportWarning"]
