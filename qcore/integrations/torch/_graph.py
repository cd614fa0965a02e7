"""Static int8 on the model's graph: what ``qtorch.prepare`` / ``qtorch.convert`` do with a model ``torch.fx``
can trace (qcore's prepared layers are leaves).

``prepare`` traces the model once, finds the values the converted model will hold as uint8 codes, and puts one
observer on each (:class:`ActivationObserver`, in ``model.qcore_observers``): the input of every quantized
layer, the output of every layer group (conv -> BatchNorm -> ReLU/ReLU6), residual addition, concatenation and
table activation.  Ops that keep their input's parameters (pooling, flatten, clamps) share their input's observer.
The prepared model runs that graph (its class is a subclass of the model's, whose ``forward`` is the graph's
code), so calibration sees the float model's values.

``convert`` builds the quantized graph from it:

* a layer group becomes one ``StaticConv2d``/``StaticLinear`` (BatchNorm folded, the activation clamped in the
  epilogue) writing uint8 codes requantized to its output's parameters, with a border holding the zero padding
  of the convolutions that read them;
* ``a + b`` (then ReLU) becomes :class:`QAdd`, ``torch.cat`` :class:`QCat`, pooling :class:`QMaxPool2d` /
  :class:`QAvgPool2d` / :class:`QAdaptiveAvgPool2d`, ReLU/ReLU6/Hardtanh/clamp :class:`QClamp`, Hardswish and other
  elementwise activations :class:`QTableActivation`, flatten :class:`QFlatten` (a Linear after it reads the image's
  codes as a convolution); dropout and identity disappear;
* anything else stays a float op: its quantized inputs are dequantized, a float value entering quantized ops is
  quantized with its observer's parameters, and one warning lists the ops left in float.

Every op module keeps working on float tensors (it computes the float op), so a module reached by a float
value still gives the float model's result.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

import qcore

from .._common import bits_alias, name_selected, scheme_class
from ._qops import (TABLE_FUNCTIONS, DequantizeActivation, QAdaptiveAvgPool2d, QAdd, QAvgPool2d, QCat, QClamp,
                    QFlatten, QMaxPool2d, QTableActivation, QuantizeActivation)
from . import _walk
from ._static import (_ACT_SCHEME, ObservedConv2d, ObservedLinear, StaticConv2d, StaticLinear, _conv_supported,
                      _ObservedMixin, _RELU, static_from_observed)
from ._walk import _check_module, _swap

_LAYERS = (ObservedConv2d, ObservedLinear)
OBSERVERS = "qcore_observers"
OPS = "qcore_ops"


class ActivationObserver(_ObservedMixin, nn.Module):
    """Calibrates one value of the prepared graph: a qcore ``linear`` quantizer (per tensor) whose observer sees
    every batch; returns its input unchanged.  ``shape`` is the last shape seen."""

    def __init__(self, bits: int, observer: str, symmetric: bool):
        super().__init__()
        self._init_observer(bits, observer, symmetric)
        self.shape = None

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            self.shape = tuple(x.shape)
            self._observe(x)
        return x

    def extra_repr(self):
        return self._observer_repr()


# ------------------------------------------------------------------------------------------------ node roles


def _sig(fn):
    return inspect.signature(fn)


# python signatures of the torch functions/methods read here (their arguments are bound to these names)
_SIGS = {
    "max_pool2d": _sig(lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False: None),
    "avg_pool2d": _sig(lambda input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None: None),
    "adaptive_avg_pool2d": _sig(lambda input, output_size: None),
    "flatten": _sig(lambda input, start_dim=0, end_dim=-1: None),
    "cat": _sig(lambda tensors, dim=0: None),
    "add": _sig(lambda input, other, alpha=1: None),
    "relu": _sig(lambda input, inplace=False: None),
    "relu6": _sig(lambda input, inplace=False: None),
    "hardtanh": _sig(lambda input, min_val=-1.0, max_val=1.0, inplace=False: None),
    "clamp": _sig(lambda input, min=None, max=None: None),
    "mean": _sig(lambda input, dim=None, keepdim=False, dtype=None: None),
    "dropout": _sig(lambda input, p=0.5, training=True, inplace=False: None),
    "unary": _sig(lambda input, inplace=False, approximate="none": None),
}

_FUNCS = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    F.relu6: "relu6", F.hardtanh: "hardtanh", torch.clamp: "clamp", torch.clip: "clamp",
    F.max_pool2d: "max_pool2d", torch.max_pool2d: "max_pool2d",
    F.avg_pool2d: "avg_pool2d", torch._C._nn.avg_pool2d: "avg_pool2d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d", torch.adaptive_avg_pool1d: None,
    torch.flatten: "flatten", torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat",
    torch.mean: "mean", F.dropout: "dropout",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.silu: "silu", F.gelu: "gelu",
}
_METHODS = {"add": "add", "add_": "add", "relu": "relu", "relu_": "relu", "clamp": "clamp", "clip": "clamp",
            "flatten": "flatten", "view": "view", "reshape": "view", "mean": "mean", "sigmoid": "sigmoid",
            "tanh": "tanh", "hardswish": "hardswish"}
_META_METHODS = {"size", "dim", "numel"}
_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh", nn.MaxPool2d: "max_pool2d",
            nn.AvgPool2d: "avg_pool2d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", nn.Flatten: "flatten",
            nn.Identity: "identity", nn.Dropout: "identity", nn.Dropout2d: "identity", nn.Hardswish: "hardswish",
            nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu", nn.GELU: "gelu"}

#: roles whose output keeps the input's scale and zero point (and whose input alone they read)
PASSTHROUGH = frozenset({"clamp", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "identity"})


@dataclass
class Role:
    kind: str                       # layer, bn, clamp, add, max_pool2d, ..., table, identity, meta, float, input, output
    inputs: list = field(default_factory=list)  # the tensor-valued input nodes the op reads
    info: dict = field(default_factory=dict)


def _bind(name, node):
    try:
        b = _SIGS[name].bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    b.apply_defaults()
    return b.arguments


def _is_node(v):
    return isinstance(v, torch.fx.Node)


def classify(model: nn.Module, graph: torch.fx.Graph) -> dict:
    """node -> :class:`Role` for every node of ``graph`` (a trace of ``model``)."""
    roles: dict = {}
    tensor = {}  # node -> holds a tensor (False: sizes, shapes, ints)

    def role_of(node):
        if node.op == "placeholder":
            return Role("input")
        if node.op == "output":
            return Role("output", [a for a in _flat_args(node.args) if _is_node(a) and tensor.get(a)])
        if node.op == "get_attr":
            return Role("float")
        targs = [a for a in _flat_args((node.args, node.kwargs)) if _is_node(a) and tensor.get(a)]
        if node.op == "call_method" and node.target in _META_METHODS:
            return Role("meta")
        if node.op == "call_function" and node.target in (getattr, operator.getitem) and node.args \
                and _is_node(node.args[0]) and not tensor.get(node.args[0], False):
            return Role("meta")
        if node.op == "call_function" and node.target is getattr:
            return Role("meta") if node.args[1] in ("shape", "ndim", "dtype", "device") else Role("float", targs)
        if not targs:
            return Role("meta")  # arithmetic on sizes
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            if isinstance(m, _LAYERS):
                return Role("layer", targs)
            if type(m) is nn.BatchNorm2d:
                return Role("bn", targs)
            name = _MODULES.get(type(m))
            if name is None:
                return Role("float", targs)
            return _module_role(name, m, node, targs)
        name = (_FUNCS.get(node.target) if node.op == "call_function" else _METHODS.get(node.target))
        if name is None:
            return Role("float", targs)
        return _function_role(name, node, targs, tensor)

    for node in graph.nodes:
        r = role_of(node)
        roles[node] = r
        tensor[node] = r.kind not in ("meta", "output")
    return roles


def _flat_args(a):
    out = []
    torch.fx.node.map_arg(a, out.append)
    return out


def _module_role(name, m, node, targs):
    if len(node.args) != 1 or node.kwargs or not _is_node(node.args[0]):
        return Role("float", targs)
    x = [node.args[0]]
    if name == "relu":
        return Role("clamp", x, {"lo": 0.0, "hi": math.inf})
    if name == "relu6":
        return Role("clamp", x, {"lo": 0.0, "hi": 6.0})
    if name == "hardtanh":
        return Role("clamp", x, {"lo": float(m.min_val), "hi": float(m.max_val)})
    if name == "max_pool2d":
        if m.return_indices:
            return Role("float", targs)
        return Role("max_pool2d", x, dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                           dilation=m.dilation, ceil_mode=m.ceil_mode))
    if name == "avg_pool2d":
        return Role("avg_pool2d", x, dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                           ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                                           divisor_override=m.divisor_override))
    if name == "adaptive_avg_pool2d":
        return Role("adaptive_avg_pool2d", x, dict(output_size=m.output_size, flatten=False))
    if name == "flatten":
        return Role("flatten", x) if (m.start_dim, m.end_dim) == (1, -1) else Role("float", targs)
    if name == "identity":
        return Role("identity", x)
    if name == "gelu" and getattr(m, "approximate", "none") != "none":
        return Role("float", targs)
    return Role("table", x, {"function": name})


def _function_role(name, node, targs, tensor):
    if name in TABLE_FUNCTIONS:
        a = _bind("unary", node)
        if a is None or not _is_node(a["input"]) or a.get("approximate", "none") != "none":
            return Role("float", targs)
        return Role("table", [a["input"]], {"function": name})
    if name == "view":
        shape = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1] if len(node.args) > 1 else None,
                                                                        (tuple, list)) else node.args[1]
        if len(node.args) >= 2 and not node.kwargs and len(shape) == 2 and shape[1] == -1 and _is_node(node.args[0]):
            first = shape[0]
            if _is_node(first) and first.op == "call_method" and first.target == "size" \
                    and first.args[0] is node.args[0] and (first.args[1:] or first.kwargs.get("dim")) in ((0,), 0):
                return Role("flatten", [node.args[0]])
        return Role("float", targs)
    a = _bind(name, node)
    if a is None:
        return Role("float", targs)
    x = a.get("input")
    if name in ("relu", "relu6", "hardtanh", "clamp"):
        if not _is_node(x):
            return Role("float", targs)
        if name == "relu":
            lo, hi = 0.0, math.inf
        elif name == "relu6":
            lo, hi = 0.0, 6.0
        elif name == "hardtanh":
            lo, hi = a["min_val"], a["max_val"]
        else:
            lo, hi = a["min"], a["max"]
            lo, hi = (-math.inf if lo is None else lo), (math.inf if hi is None else hi)
        if not all(isinstance(v, (int, float)) for v in (lo, hi)) or lo > hi:
            return Role("float", targs)
        return Role("clamp", [x], {"lo": float(lo), "hi": float(hi)})
    if name == "add":
        y = a["other"]
        if _is_node(x) and _is_node(y) and tensor.get(x) and tensor.get(y) and a["alpha"] == 1:
            return Role("add", [x, y])
        return Role("float", targs)
    if name == "max_pool2d":
        if not _is_node(x) or a["return_indices"] or any(_is_node(v) for v in a.values() if v is not x):
            return Role("float", targs)
        return Role("max_pool2d", [x], {k: a[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")})
    if name == "avg_pool2d":
        if not _is_node(x) or any(_is_node(v) for v in a.values() if v is not x):
            return Role("float", targs)
        return Role("avg_pool2d", [x], {k: a[k] for k in ("kernel_size", "stride", "padding", "ceil_mode",
                                                          "count_include_pad", "divisor_override")})
    if name == "adaptive_avg_pool2d":
        if not _is_node(x) or _is_node(a["output_size"]):
            return Role("float", targs)
        return Role("adaptive_avg_pool2d", [x], {"output_size": a["output_size"], "flatten": False})
    if name == "mean":
        dims = a["dim"]
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        if _is_node(x) and a["dtype"] is None and sorted(d % 4 if isinstance(d, int) else -1 for d in dims) == [2, 3]:
            return Role("adaptive_avg_pool2d", [x], {"output_size": (1, 1), "flatten": not a["keepdim"]})
        return Role("float", targs)
    if name == "flatten":
        if _is_node(x) and a["start_dim"] == 1 and a["end_dim"] == -1:
            return Role("flatten", [x])
        return Role("float", targs)
    if name == "cat":
        items = a["tensors"]
        if isinstance(items, (list, tuple)) and items and all(_is_node(t) and tensor.get(t) for t in items) \
                and a["dim"] in (1, -3):
            return Role("cat", list(items))
        return Role("float", targs)
    if name == "dropout":
        if _is_node(x) and a["training"] is False:
            return Role("identity", [x])
        return Role("float", targs)
    return Role("float", targs)


# ------------------------------------------------------------------------------------------------ fusion groups


@dataclass
class Group:
    """A layer or an addition with what is fused into it."""

    head: torch.fx.Node
    out: torch.fx.Node                 # the node whose value the group produces
    members: list                      # head, then the fused nodes (BN, clamp)
    bn: nn.Module | None = None
    activation: tuple | None = None


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _reads_only(user, node, roles) -> bool:
    return roles[user].inputs == [node]


def find_groups(model, graph, roles) -> dict:
    """head node -> :class:`Group` for every layer and addition (conv -> BN -> clamp; add -> clamp)."""
    calls: dict = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    groups = {}
    for node in graph.nodes:
        kind = roles[node].kind
        if kind == "layer" and calls[node.target] != 1:
            continue  # a layer called twice keeps its own input observer per call: not fused (rare)
        if kind not in ("layer", "add"):
            continue
        g = Group(node, node, [node])
        cur = node
        u = _only_user(cur)
        if kind == "layer" and isinstance(model.get_submodule(node.target), ObservedConv2d) and u is not None \
                and roles[u].kind == "bn" and _reads_only(u, cur, roles) and calls.get(u.target) == 1:
            bn = model.get_submodule(u.target)
            conv = model.get_submodule(node.target)
            if bn.track_running_stats and bn.running_mean is not None and bn.num_features == conv.out_channels:
                g.bn, cur = bn, u
                g.members.append(u)
                u = _only_user(cur)
        if u is not None and roles[u].kind == "clamp" and _reads_only(u, cur, roles):
            g.activation = (roles[u].info["lo"], roles[u].info["hi"])
            g.members.append(u)
            cur = u
        g.out = cur
        groups[node] = g
    return groups


# ------------------------------------------------------------------------------------------------ analysis


class Analysis:
    """Roles, groups and the quantized values of one traced graph (the same for prepare and convert)."""

    def __init__(self, model, graph):
        self.graph = graph
        self.roles = classify(model, graph)
        self.groups = find_groups(model, graph, self.roles)
        self.member_of = {m: g for g in self.groups.values() for m in g.members}
        self.fused_adds = self._fused_adds(model)

    def _fused_adds(self, model) -> dict:
        """add head -> (the conv group computing one operand, the other operand): the addition goes into that
        convolution's epilogue (its output read by the add alone, no activation of its own, groups == 1)."""
        fused = {}
        for head, g in self.groups.items():
            if self.roles[head].kind != "add":
                continue
            for i, v in enumerate(self.roles[head].inputs):
                cg = self.member_of.get(v)
                if cg is None or cg.out is not v or self.roles[cg.head].kind != "layer" or cg.activation is not None \
                        or len(v.users) != 1:
                    continue
                conv = model.get_submodule(cg.head.target)
                other = self.roles[head].inputs[1 - i]
                if isinstance(conv, ObservedConv2d) and conv.groups == 1 and other is not v:
                    fused[head] = (cg, other)
                    break
        return fused

    def root(self, node):
        """The node whose observer gives ``node``'s parameters (through ops that keep them)."""
        while True:
            g = self.member_of.get(node)
            if g is not None:
                return g.out
            r = self.roles[node]
            if r.kind in PASSTHROUGH:
                node = r.inputs[0]
                continue
            return node

    def consumers(self, node):
        """The ops that read ``node``'s value (a group's value is read past its fused members)."""
        return [u for u in node.users if self.member_of.get(u) is None or self.member_of[u].head is u]

    def needs_codes(self, node, _seen=None) -> bool:
        """Some op reading ``node`` (directly or through ops that keep parameters) takes codes."""
        for u in self.consumers(node):
            kind = self.roles[u].kind
            g = self.member_of.get(u)
            if g is not None or kind in ("cat", "table"):
                return True
            if kind in PASSTHROUGH and self.needs_codes(u):
                return True
        return False

    def observed_roots(self) -> list:
        """The values that get an observer, in graph order: the outputs of additions, concatenations and table
        activations (always codes), and every other value some op reads as codes (layer inputs included)."""
        roots = []
        for node in self.graph.nodes:
            if self.root(node) is not node or self.roles[node].kind in ("meta", "output"):
                continue
            g = self.member_of.get(node)
            if g is not None:
                if g.out is node and (self.roles[g.head].kind == "add" or self.needs_codes(node)):
                    roots.append(node)
            elif self.roles[node].kind in ("cat", "table") or self.needs_codes(node):
                roots.append(node)
        return roots


# ------------------------------------------------------------------------------------------------ graph classes


def base_class(model) -> type:
    return getattr(type(model), "__qcore_base__", type(model))


def _rebuild(base, graph, state):
    model = base.__new__(base)
    model.__dict__.update(state)
    install_graph(model, graph, base)
    return model


def install_graph(model: nn.Module, graph: torch.fx.Graph, base: type | None = None) -> nn.Module:
    """Make ``model`` run ``graph``: its class becomes a subclass of ``base`` (its own class) whose forward is
    the graph's code; the graph is kept as ``model._qcore_graph``."""
    base = base or base_class(model)
    graph.lint()
    code = graph.python_code(root_module="self")
    globs = dict(code.globals)
    exec(compile(code.src, f"<qcore graph of {base.__name__}>", "exec"), globs)  # noqa: S102 - fx's own code

    def __reduce_ex__(self, protocol):
        state = {k: v for k, v in self.__dict__.items()}
        return (_rebuild, (base, state.pop("_qcore_graph"), state))

    cls = type(base.__name__, (base,), {"forward": globs["forward"], "__qcore_base__": base,
                                        "__module__": base.__module__, "__qualname__": base.__qualname__,
                                        "__reduce_ex__": __reduce_ex__})
    model.__class__ = cls
    model.__dict__["_qcore_graph"] = graph
    return model


def is_graph_prepared(model) -> bool:
    return isinstance(model, nn.Module) and getattr(model, "_qcore_mode", None) == "prepared"


# ------------------------------------------------------------------------------------------------ prepare


def prepare(model: nn.Module, bits: int | None = None, observer: str = "histogram", symmetric: bool = False, *,
            activation_bits: int | None = None, include: Iterable[str] | str | None = None,
            exclude: Iterable[str] | str | None = None, weight_bits: int | None = None, inplace: bool = False,
            **options) -> nn.Module:
    """A copy of ``model`` with a qcore observer on the input of every ``nn.Linear`` and ``nn.Conv2d``.

    Run calibration batches through the result (``prepared(x)``; outputs are the float model's), then
    :func:`convert` it.  ``activation_bits``/``observer``/``symmetric``: the activation quantization (``linear``
    scheme, per tensor; affine uint8 by default; ``activation_bits`` None: the scheme's activation default, 8).
    ``weight_bits``: 2..8, symmetric per output channel (None: the scheme's weight default, 8).  ``bits`` is the
    deprecated alias of ``activation_bits`` (it meant weight bits in :func:`prepare_qat`).
    ``include``/``exclude``: glob patterns on qualified module names.  Layers with ``padding_mode`` other
    than ``"zeros"`` are left in float.

    Batch norm is not folded here: folding changes a convolution's weights, not its input, so the observers
    see the same activations either way; :func:`convert` folds a ``BatchNorm2d`` that follows a convolution
    into it before quantizing the weights.  Calibrate in ``eval()`` mode (a warning says so otherwise).
    """
    _check_module(model)
    if options:
        raise TypeError(f"prepare got unknown option(s) {sorted(options)}; it takes activation_bits, observer, "
                        "symmetric, include, exclude, weight_bits and inplace")
    bits = bits_alias(bits, activation_bits, "bits", "activation_bits", warn=True)
    linear = scheme_class(_ACT_SCHEME)  # activations and weights of static layers: the linear scheme
    bits = int(linear.defaults("activation")["bits"] if bits is None else bits)
    weight_bits = int(linear.defaults("weight")["bits"] if weight_bits is None else weight_bits)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits (activations) must be in 2..8, got {bits}")
    if not 2 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be in 2..8, got {weight_bits}")
    qcore.get_quantizer(_ACT_SCHEME, bits=bits, observer=observer, symmetric=bool(symmetric))  # unknown observer
    model = model if inplace else copy.deepcopy(model)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
        warnings.warn("prepare: the model has batch-norm layers in training mode; calibration batches would "
                      "normalise with batch statistics and update the running ones, which convert folds into "
                      "the convolutions: call model.eval() before calibrating", stacklevel=2)

    def make(name, child):
        if not name_selected(name, include, exclude):
            return None
        if type(child) is nn.Linear:
            return ObservedLinear.from_float(child, bits, observer, symmetric, weight_bits)
        if type(child) is nn.Conv2d and _conv_supported(child):
            return ObservedConv2d.from_float(child, bits, observer, symmetric, weight_bits)
        return None

    if type(model) in (nn.Linear, nn.Conv2d):
        new = make("", model)
        return new if new is not None else model
    if _swap(model, make) == 0:
        warnings.warn("prepare: no nn.Linear or nn.Conv2d module was selected; the model is unchanged", stacklevel=2)
        return model
    graphed = prepare_graph(model, bits, observer, bool(symmetric))
    return graphed if graphed is not None else model




def prepare_graph(model: nn.Module, bits, observer, symmetric) -> nn.Module | None:
    """Put value observers into the traced graph of ``model`` (its layers already Observed*); None if it does
    not trace.  The layers stop observing their own inputs: they share their input value's quantizer."""
    graph = _walk.trace(model)
    if graph is None:
        return None
    an = Analysis(model, graph)
    observers = nn.ModuleDict()
    for node in an.observed_roots():
        obs = ActivationObserver(bits, observer, symmetric)
        observers[node.name] = obs
        with graph.inserting_after(node):
            graph.call_module(f"{OBSERVERS}.{node.name}", (node,))
    for node, g in an.groups.items():
        if an.roles[node].kind != "layer":
            continue
        layer = model.get_submodule(node.target)
        src = an.root(an.roles[node].inputs[0])
        if src.name in observers:
            layer.input_quantizer = observers[src.name].input_quantizer
            layer.observe_input = False
    model.add_module(OBSERVERS, observers)
    model.__dict__["_qcore_mode"] = "prepared"
    return install_graph(model, graph)


# ------------------------------------------------------------------------------------------------ convert


def _describe(node, model) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(model.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"{node.name} (Tensor.{node.target})"
    return f"{node.name} ({getattr(node.target, '__name__', str(node.target))})"


def convert_graph(model: nn.Module) -> nn.Module:
    """The quantized model of a graph-prepared ``model`` (modified in place; the caller copies)."""
    graph = model._qcore_graph
    observers = model.get_submodule(OBSERVERS)
    params = {}
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target.startswith(OBSERVERS + "."):
            obs = observers[node.target.split(".", 1)[1]]
            params[node.args[0]] = obs.input_params()
            graph.erase_node(node)
    an = Analysis(model, graph)
    out = torch.fx.Graph()
    env: dict = {}      # old node -> new node
    codes: set = set()  # new nodes whose value is a QuantizedActivation
    dequantized: dict = {}  # new node (codes) -> its float value
    quantized: dict = {}    # old node (float) -> its codes
    ops = nn.Module()
    calls: dict = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    in_float = []
    used_modules = set()
    fused_residuals: dict = {}  # fused conv node -> the node of its residual codes

    def add_op(node, module, args):
        """A call of ``module`` for ``node``: in place of the node's own module when that is called only here."""
        if node.op == "call_module" and calls[node.target] == 1:
            _set_submodule(model, node.target, module)
            target = node.target
        else:
            name = node.name
            ops.add_module(name, module)
            target = f"{OPS}.{name}"
        used_modules.add(target)
        return out.call_module(target, tuple(args))

    def as_float(v):
        nv = env[v]
        if nv not in codes:
            return nv
        d = dequantized.get(nv)
        if d is None:
            name = f"{nv.name}_dequantize"
            ops.add_module(name, DequantizeActivation())
            d = dequantized[nv] = out.call_module(f"{OPS}.{name}", (nv,))
        return d

    def as_codes(v):
        nv = env[v]
        if nv in codes:
            return nv
        q = quantized.get(v)
        if q is None:  # a float value read by quantized ops: quantized once, with its observer's parameters
            scale, zp = params[an.root(v)]
            name = f"{nv.name}_quantize"
            ops.add_module(name, QuantizeActivation(scale, zp))
            q = quantized[v] = out.call_module(f"{OPS}.{name}", (nv,))
            codes.add(q)
        return q

    for node in graph.nodes:
        role = an.roles[node]
        g = an.member_of.get(node)
        if g is not None and g.head is not node:
            continue  # fused into its group (the group maps g.out)
        if node.op == "placeholder":
            env[node] = out.placeholder(node.target, type_expr=node.type, default_value=(
                node.args[0] if node.args else inspect.Signature.empty))
            continue
        if node.op == "output":
            env[node] = out.output(torch.fx.node.map_arg(node.args[0], lambda a: as_float(a) if a in env and
                                                         env[a] in codes else env[a]))
            continue
        if g is not None and role.kind == "layer" and any(cg is g for cg, _ in an.fused_adds.values()):
            continue  # computed where its addition is (the residual may come later in the graph)
        if g is not None and role.kind == "add" and node in an.fused_adds:
            cg, other = an.fused_adds[node]
            layer = model.get_submodule(cg.head.target)
            static = static_from_observed(layer, bn=cg.bn)
            static.activation = g.activation
            static.output_scale, static.output_zero_point = params[g.out]
            x = an.roles[cg.head].inputs[0]
            _set_submodule(model, cg.head.target, static)
            used_modules.add(cg.head.target)
            new = out.call_module(cg.head.target, (env[x], as_codes(other)))
            codes.add(new)
            fused_residuals[new] = env[other] if env[other] in codes else quantized[other]
            env[g.out] = new
            continue
        if g is not None and role.kind == "layer":
            layer = model.get_submodule(node.target)
            static = static_from_observed(layer, bn=g.bn)
            static.activation = g.activation
            x = role.inputs[0]
            arg = env[x]
            if arg in codes and not _codes_fit(static, an, x):
                arg = as_float(x)
            if g.out in params and an.needs_codes(g.out):
                static.output_scale, static.output_zero_point = params[g.out]
            _set_submodule(model, node.target, static)
            used_modules.add(node.target)
            new = out.call_module(node.target, (arg,))
            if static.output_scale is not None:
                codes.add(new)
            env[g.out] = new
            continue
        if g is not None and role.kind == "add":
            a, b = (as_codes(v) for v in role.inputs)
            scale, zp = params[g.out]
            new = add_op(node, QAdd(scale, zp, g.activation), (a, b))
            codes.add(new)
            env[g.out] = new
            continue
        kind = role.kind
        if kind in PASSTHROUGH and env[role.inputs[0]] in codes:
            x = env[role.inputs[0]]
            if kind == "identity":
                env[node] = x
                continue
            info = role.info
            module = {"clamp": lambda: QClamp(info["lo"], info["hi"]),
                      "max_pool2d": lambda: QMaxPool2d(**info),
                      "avg_pool2d": lambda: QAvgPool2d(**info),
                      "adaptive_avg_pool2d": lambda: QAdaptiveAvgPool2d(**info),
                      "flatten": lambda: QFlatten()}[kind]()
            new = add_op(node, module, (x,))
            codes.add(new)
            env[node] = new
            continue
        if kind == "cat":
            items = [as_codes(v) for v in role.inputs]
            scale, zp = params[node]
            new = add_op(node, QCat(scale, zp), items)
            codes.add(new)
            env[node] = new
            continue
        if kind == "table":
            x = as_codes(role.inputs[0])
            scale, zp = params[node]
            new = add_op(node, QTableActivation(role.info["function"], scale, zp), (x,))
            codes.add(new)
            env[node] = new
            continue
        if kind == "meta":
            env[node] = out.node_copy(node, lambda a: env[a])
            continue
        # a float op (or a passthrough op on a float value); layers left out by prepare's include/exclude are the
        # user's choice, not a missing kernel
        if kind not in PASSTHROUGH and not _excluded_layer(node, model):
            in_float.append(_describe(node, model))
        new = out.node_copy(node, lambda a: as_float(a) if env[a] in codes else env[a])
        if node.op == "call_module":
            used_modules.add(node.target)
        env[node] = new
    _set_borders(model, out, ops, codes, fused_residuals)
    model.add_module(OPS, ops)
    del model._modules[OBSERVERS]
    _drop_unused(model, graph, used_modules, an)
    model.__dict__["_qcore_mode"] = "converted"
    install_graph(model, out)
    if in_float:
        warnings.warn(f"convert: {len(in_float)} operation(s) have no quantized kernel and run in float "
                      f"(their inputs dequantized): {', '.join(in_float)}", stacklevel=4)
    return model


def _excluded_layer(node, model) -> bool:
    if node.op != "call_module":
        return False
    m = model.get_submodule(node.target)
    return type(m) is nn.Linear or (type(m) is nn.Conv2d and m.padding_mode == "zeros")


def _codes_fit(static, an, x) -> bool:
    """A static layer takes the codes of ``x`` as they are (else it dequantizes them)."""
    return isinstance(static, (StaticConv2d, StaticLinear))


def _set_submodule(model, target, module):
    *path, last = target.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, last, module)


def _set_borders(model, graph, ops, codes, fused_residuals):
    """Each op writing codes gets the border the convolutions that read them need (their largest padding); a
    convolution with a fused residual and the producer of that residual share one layout (the larger border)."""

    def module(node):
        return model.get_submodule(node.target) if not node.target.startswith(OPS + ".") else \
            ops.get_submodule(node.target.split(".", 1)[1])

    border = {}
    for node in graph.nodes:
        if node not in codes or node.op != "call_module":
            continue
        pad = (0, 0)
        for u in node.users:
            if u.op == "call_module":
                m = module(u)
                if isinstance(m, StaticConv2d) and u.args[0] is node:
                    pad = (max(pad[0], m.padding[0]), max(pad[1], m.padding[1]))
        border[node] = pad
    changed = True
    while changed:  # a residual and the output it is added into: the same border
        changed = False
        for conv, res in fused_residuals.items():
            if res not in border:
                continue
            both = (max(border[conv][0], border[res][0]), max(border[conv][1], border[res][1]))
            if border[conv] != both or border[res] != both:
                border[conv] = border[res] = both
                changed = True
    for node, pad in border.items():
        m = module(node)
        if isinstance(m, StaticConv2d):
            m.output_padding = tuple(pad)
        elif hasattr(m, "output_border"):
            m.output_border = tuple(pad)


def _drop_unused(model, graph, used, an):
    """Modules of the model no longer called (folded BatchNorm, fused activations) become ``nn.Identity``."""
    for node in graph.nodes:
        if node.op != "call_module" or node.target in used or node.target.startswith(OPS + "."):
            continue
        try:
            m = model.get_submodule(node.target)
        except AttributeError:
            continue
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d)) \
                or type(m) in _MODULES:
            _set_submodule(model, node.target, nn.Identity())


def convert_model(model: nn.Module, inplace: bool) -> nn.Module:
    model = model if inplace else copy.deepcopy(model)
    return convert_graph(model)
