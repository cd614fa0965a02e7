"""What ``convert`` fuses into the static int8 layers: a following ``BatchNorm2d`` (folded into the convolution's
weights and bias), a following ReLU (into the epilogue), and which static layer hands its output as uint8 codes
to the next one.

The pattern is read from the model's ``forward`` by ``torch.fx`` symbolic tracing when the model traces
(``F.relu(self.bn(self.conv(x)))``, ``torch.relu``, ``x.relu()``, ``nn.ReLU(inplace=True)`` modules called
anywhere); the graph only guides the fusion — the converted model keeps its class and its ``forward``.  A model
that does not trace (data-dependent control flow, ...) falls back to the order of the children of every
``nn.Sequential``.  Either way a layer is fused only with what consumes its output alone:

* ``layer -> BatchNorm2d`` (Conv2d only): the BN module is called once, on this output only; its running
  statistics are folded (``torch.nn.utils.fusion.fuse_conv_bn_weights``, as torch.ao does) and it becomes
  ``nn.Identity``;
* ``-> relu``: the ReLU goes into the epilogue; an ``nn.ReLU`` module whose every call is fused becomes
  ``nn.Identity``; a functional ``F.relu`` stays in ``forward`` and is a no-op on what the layer returns
  (its output is already non-negative);
* ``-> (nn.Identity) -> next static layer`` of the same kind, nothing else reading the value in between: the
  producer writes the consumer's uint8 input codes (``QuantizedActivation``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._qat import QATConv2d, QATLinear
from . import _walk
from ._static import ObservedConv2d, ObservedLinear, _StaticBase

_LAYERS = (ObservedLinear, ObservedConv2d, QATLinear, QATConv2d)
_CONVS = (ObservedConv2d, QATConv2d)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_RELU_METHODS = ("relu", "relu_")


@dataclass
class Site:
    """One quantizable layer of the prepared model and what follows it."""

    layer: nn.Module
    bn: nn.BatchNorm2d | None = None
    relu: bool = False
    relu_module: nn.Module | None = None     # the nn.ReLU module applied (None: a functional relu)
    consumer: nn.Module | None = None         # the prepared layer that alone reads the (BN/ReLU'd) output
    slots: list = field(default_factory=list)  # ("bn" | "relu", parent, key): slots to drop (module order)


@dataclass
class FusionPlan:
    method: str                                # "fx" or "module order"
    sites: dict = field(default_factory=dict)  # id(layer) -> Site
    relu_calls: dict = field(default_factory=dict)  # id(nn.ReLU module) -> (module, number of calls) (fx)

    def site(self, layer) -> Site | None:
        return self.sites.get(id(layer))


def _foldable_bn(bn, layer) -> bool:
    return (type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == layer.out_channels)


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _takes_only(user, node) -> bool:
    """``user``'s first argument is ``node`` and no other argument mentions it."""
    if not user.args or user.args[0] is not node:
        return False
    seen = []
    torch.fx.node.map_arg((tuple(user.args[1:]), dict(user.kwargs)), seen.append)
    return node not in seen


def plan_fx(model: nn.Module) -> FusionPlan | None:
    graph = _walk.trace(model)
    if graph is None:
        return None
    plan = FusionPlan("fx")
    module_of, calls = {}, {}
    for node in graph.nodes:
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            module_of[node] = m
            calls[id(m)] = calls.get(id(m), 0) + 1
    for node, m in module_of.items():
        if type(m) is nn.ReLU:
            plan.relu_calls[id(m)] = (m, calls[id(m)])

    def is_relu(u):
        if u.op == "call_function" and u.target in _RELU_FUNCTIONS:
            return True
        if u.op == "call_method" and u.target in _RELU_METHODS:
            return True
        return u.op == "call_module" and type(module_of[u]) is nn.ReLU

    for node, m in module_of.items():
        if not isinstance(m, _LAYERS) or calls[id(m)] != 1:
            continue
        site, cur = Site(m), node
        u = _only_user(cur)
        if (isinstance(m, _CONVS) and u is not None and u.op == "call_module" and _foldable_bn(module_of[u], m)
                and calls[id(module_of[u])] == 1 and _takes_only(u, cur) and len(u.args) == 1):
            site.bn, cur = module_of[u], u
            u = _only_user(cur)
        if u is not None and is_relu(u) and _takes_only(u, cur):
            site.relu, cur = True, u
            site.relu_module = module_of.get(u)
            u = _only_user(cur)
        while u is not None and u.op == "call_module" and type(module_of[u]) is nn.Identity and _takes_only(u, cur):
            cur, u = u, _only_user(u)
        if (u is not None and u.op == "call_module" and isinstance(module_of[u], _LAYERS)
                and calls[id(module_of[u])] == 1 and len(u.args) == 1 and not u.kwargs and u.args[0] is cur):
            site.consumer = module_of[u]
        plan.sites[id(m)] = site
    return plan


def plan_module_order(model: nn.Module) -> FusionPlan:
    """Fusion from the order of the children of every ``nn.Sequential`` (models that do not trace)."""
    plan = FusionPlan("module order")
    count: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        count[id(m)] = count.get(id(m), 0) + 1
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules.keys())
        for i, k in enumerate(keys):
            m = seq._modules[k]
            if not isinstance(m, _LAYERS) or count[id(m)] != 1:
                continue
            site, j = Site(m), i + 1
            nxt = seq._modules[keys[j]] if j < len(keys) else None
            if isinstance(m, _CONVS) and nxt is not None and _foldable_bn(nxt, m) and count[id(nxt)] == 1:
                site.bn = nxt
                site.slots.append(("bn", seq, keys[j]))
                j += 1
                nxt = seq._modules[keys[j]] if j < len(keys) else None
            if nxt is not None and type(nxt) is nn.ReLU:
                site.relu, site.relu_module = True, nxt
                site.slots.append(("relu", seq, keys[j]))
                j += 1
            while j < len(keys) and type(seq._modules[keys[j]]) is nn.Identity:
                j += 1
            if j < len(keys) and isinstance(seq._modules[keys[j]], _LAYERS) and count[id(seq._modules[keys[j]])] == 1:
                site.consumer = seq._modules[keys[j]]
            plan.sites[id(m)] = site
    return plan


def plan_fusion(model: nn.Module) -> FusionPlan:
    """The fusion plan of a prepared / QAT model: from ``torch.fx`` when it traces, else from module order."""
    return plan_fx(model) or plan_module_order(model)


def _replace_everywhere(model: nn.Module, targets: dict) -> None:
    """Replace, in every parent, each child whose id is in ``targets`` by ``nn.Identity``."""
    for parent in list(model.modules()):
        for k, c in list(parent._modules.items()):
            if c is not None and id(c) in targets:
                parent._modules[k] = nn.Identity()


def apply_fusion(model: nn.Module, plan: FusionPlan, made: dict) -> None:
    """After the swap (``made``: id(prepared layer) -> its new module): set fused ReLUs, drop folded BNs and
    fused ReLU modules, and link producers to consumers.  BN folding itself happened when the static module
    was built (``static_from_observed`` / ``static_from_qat`` with ``bn=``)."""
    static = {k: v for k, v in made.items() if isinstance(v, _StaticBase)}
    drop: dict[int, nn.Module] = {}
    fused_relu_calls: dict[int, int] = {}
    blocked = set()  # a BN that could not be folded stays between the layer and what follows
    for key, site in plan.sites.items():
        new = static.get(key)
        if new is None:
            continue
        if site.bn is not None and not getattr(new, "folded_bn", False):
            blocked.add(key)
            continue
        new.relu = site.relu
        if plan.method == "module order":
            for _, parent, k in site.slots:
                parent._modules[k] = nn.Identity()
        else:
            if site.bn is not None:
                drop[id(site.bn)] = site.bn
            if site.relu_module is not None:
                fused_relu_calls[id(site.relu_module)] = fused_relu_calls.get(id(site.relu_module), 0) + 1
    for rid, (mod, n) in plan.relu_calls.items():
        if fused_relu_calls.get(rid, 0) == n:  # every call of this nn.ReLU follows a fused layer
            drop[rid] = mod
    if drop:
        _replace_everywhere(model, drop)
    for key, site in plan.sites.items():
        new = static.get(key)
        if new is None:
            continue
        nxt = static.get(id(site.consumer)) if site.consumer is not None and key not in blocked else None
        if (nxt is not None and type(nxt) is type(new) and nxt.activation_bits == 8 and not nxt.activation_signed):
            new._link(nxt)
        else:
            new._link(None)
