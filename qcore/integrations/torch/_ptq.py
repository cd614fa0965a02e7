"""Data-aware post-training quantization of torch models: GPTQ layer by layer, and Hessian collection.

``quantize_dynamic(model, ..., method="gptq", calibrate=fn)`` lands here (:func:`gptq_layers`).  ``fn(model)``
runs forward passes on calibration data.  Each selected ``nn.Linear`` gets ``H = mean(x x^T)`` of its inputs
(forward pre-hooks, ``X^T X`` accumulated by ``torch.addmm`` in float32) and is quantized by :func:`qcore.gptq`;
the layers are quantized **in order**, each one's Hessian measured with every earlier layer already quantized.

How the forward passes are organised (the cost is a few forward passes over the calibration data, not one per
layer):

* **Repeated blocks** (a transformer's ``nn.ModuleList`` of layers, found automatically: the ``ModuleList``
  holding most of the selected layers): one run of ``fn`` captures the inputs of the first block, every call
  (the other arguments — masks and the like — are kept by reference for every block).  Then block by block:
  the block is replayed on the captured inputs, once per *wave* of layers (the next layer in execution order
  plus every other layer fed the very same input tensor, such as query/key/value), stopping each replay as
  soon as the wave's layers have seen their inputs; the wave is quantized; at the end the quantized block's
  outputs become the next block's inputs.  Memory: the captured inputs (twice, in and out) plus one wave's
  Hessians.
* **Other layers** (outside the blocks, or a model without such a list): one run of ``fn`` per wave, with the
  layers quantized so far in place.

A layer that never runs during calibration is quantized by round to nearest, with a warning.

``collect_hessians(model, fn, path)`` runs ``fn`` once on the float model and writes every layer's Hessian, in
folds, to a Hessian file (:mod:`qcore.ptq.hessian`) — the ``--hessians`` file of ``qcore quantize``.
"""
from __future__ import annotations

import copy
import os
import sys
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

import qcore
from qcore.ptq.gptq import DEFAULT_DAMP, correct_for_input_shift
from qcore.ptq.hessian import DEFAULT_FOLDS, HessianAccumulator, HessianFolds, save_hessians

from .._common import name_selected


class _StopForward(Exception):
    """Raised inside a replay once the current wave has seen its inputs: the rest of the block is skipped."""


class Sources:
    """``calibrate=``: one calibration source or several, mixed with equal weight.

    A source is a function ``fn(model)`` running forward passes, or data: a tensor (``model(x)``), a dict of
    tensors (``model(**batch)``), a list of strings for a model with an ``encode`` method (sentence-transformers:
    ``model.encode(texts)``), or a list/tuple of such batches.  ``Sources(calibrate)(model)`` runs every source
    in turn; ``current`` is the index of the one running, which the Hessian hooks pass to
    :class:`qcore.ptq.HessianAccumulator` so that every source weighs the same in each layer's statistics
    whatever its size.
    """

    def __init__(self, calibrate):
        if isinstance(calibrate, Sources):
            self.items, self.current = calibrate.items, 0
            return
        items = list(calibrate) if isinstance(calibrate, list) and not _is_texts(calibrate) else [calibrate]
        if not items:
            raise ValueError("calibrate is an empty list; give a function fn(model) or data to run")
        for i, item in enumerate(items):
            if not (callable(item) or _is_data(item)):
                where = f"calibrate[{i}]" if len(items) > 1 else "calibrate"
                raise TypeError(f"{where} must be a function fn(model) running calibration forwards, or data "
                                f"(a tensor, a dict of tensors, a list of strings, or a list of such batches), "
                                f"got {type(item).__name__}")
        self.items = items
        self.current = 0

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, model: nn.Module) -> None:
        try:
            for i, item in enumerate(self.items):
                self.current = i
                item(model) if callable(item) else _run_data(model, item)
        finally:
            self.current = 0


def _is_texts(x) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x)


def _is_data(x) -> bool:
    if isinstance(x, torch.Tensor) or _is_texts(x):
        return True
    if isinstance(x, dict):
        return all(isinstance(v, torch.Tensor) for v in x.values())
    if isinstance(x, (list, tuple)) and x:
        return all(_is_data(b) and not isinstance(b, (list, tuple)) or _is_texts(b) for b in x)
    return False


def _run_data(model: nn.Module, data) -> None:
    if _is_texts(data):
        encode = getattr(model, "encode", None)
        if not callable(encode):
            raise TypeError(f"calibration texts need a model with an encode() method (sentence-transformers); "
                            f"{type(model).__name__} has none: pass a function fn(model) instead")
        encode(list(data), batch_size=64, show_progress_bar=False)
    elif isinstance(data, torch.Tensor):
        model(data)
    elif isinstance(data, dict):
        model(**data)
    else:
        for batch in data:
            _run_data(model, batch)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="layer", leave=False, file=sys.stderr)


def _targets(model: nn.Module, include, exclude) -> dict[str, nn.Linear]:
    out, seen = {}, set()
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and name_selected(name, include, exclude) and id(mod) not in seen:
            seen.add(id(mod))
            out[name] = mod
    return out


def _hidden_slot(args, kwargs):
    """Where a block call's hidden-state input is: ``0`` (first positional argument), a keyword, or None."""
    if args and isinstance(args[0], torch.Tensor):
        return 0
    for key in ("hidden_states", "input", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return key
    return None


def _get_hidden(slot, args, kwargs):
    return args[0] if slot == 0 else kwargs[slot]


def _with_hidden(slot, args, kwargs, h):
    if slot == 0:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, slot: h}


def _main_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return None


def _input_of(block: nn.Module, name: str, args, kwargs) -> torch.Tensor:
    """The input of ``block``'s submodule ``name`` when ``block(*args, **kwargs)`` runs (stopped right there)."""
    seen = []

    def hook(mod, a):
        seen.append(a[0])
        raise _StopForward

    handle = block.get_submodule(name).register_forward_pre_hook(hook)
    try:
        block(*args, **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"float targets: layer {name!r} did not run in the float copy of its block")
    return seen[0]


def _with_weight(lin: nn.Linear, w: np.ndarray) -> nn.Linear:
    """A stand-in for ``lin`` with weight ``w`` (its bias shared): the layer the quantizer fits, ``lin`` untouched."""
    out = nn.Linear(lin.in_features, lin.out_features, bias=False, device="meta")
    out.weight = nn.Parameter(torch.from_numpy(w).to(lin.weight.dtype), requires_grad=False)
    out.bias = lin.bias
    return out


def _find_blocks(model: nn.Module, targets: dict[str, nn.Linear]):
    """``(list_name, [(block_name, block)])`` of the ModuleList holding most target layers (or None)."""
    best, best_n = None, 1
    tnames = list(targets)
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        prefix = f"{name}." if name else ""
        n = sum(1 for t in tnames if t.startswith(prefix))
        if n > best_n:
            best, best_n = (name, mod), n
    if best is None:
        return None
    name, ml = best
    prefix = f"{name}." if name else ""
    return name, [(f"{prefix}{i}", blk) for i, blk in enumerate(ml)]


class _InputShift:
    """Streaming ``E = mean((x_f - x_q) x_q^T)`` of one wave: float-model inputs ``x_f`` against the partly
    quantized model's ``x_q`` of the same calibration rows (:func:`qcore.ptq.correct_for_input_shift`).  Every
    calibration source weighs the same, as in :class:`qcore.ptq.HessianAccumulator`."""

    def __init__(self):
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def update(self, x_f: torch.Tensor, x_q: torch.Tensor, source: int) -> None:
        if x_f.shape != x_q.shape:
            raise ValueError(f"float-model and quantized-model inputs differ in shape: {tuple(x_f.shape)} vs "
                             f"{tuple(x_q.shape)} (a calibration forward that is not deterministic?)")
        xq = x_q.detach().reshape(-1, x_q.shape[-1]).float()
        d = x_f.detach().reshape(-1, x_f.shape[-1]).float() - xq
        if source not in self.sums:
            self.sums[source] = torch.zeros(xq.shape[1], xq.shape[1], dtype=torch.float32)
            self.counts[source] = 0
        self.sums[source].addmm_(d.T, xq)
        self.counts[source] += xq.shape[0]

    def value(self) -> np.ndarray | None:
        means = [self.sums[s].double().numpy() / self.counts[s] for s in sorted(self.sums) if self.counts[s]]
        return sum(means) / len(means) if means else None


class _Layerwise:
    """The sequential GPTQ driver (see the module docstring)."""

    def __init__(self, model, targets, quantize_layer, calibrate, progress, float_targets: float | None = None):
        self.model = model
        # None: each layer fitted to its own outputs on quantized inputs; a damping: to the float model's outputs
        self.float_targets = float_targets
        self.targets = dict(targets)  # name -> nn.Linear, not yet quantized
        self.quantize_layer = quantize_layer  # (name, linear, H or None) -> new module
        self.calibrate = Sources(calibrate)
        self.bar = _progress(len(targets), progress, "gptq")
        self.parent = {}
        for pname, parent in model.named_modules():
            for cname, child in parent._modules.items():
                if child is not None:
                    full = f"{pname}.{cname}" if pname else cname
                    self.parent[full] = (parent, cname)

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _corrected(self, names: list[str], h: HessianAccumulator, shift: _InputShift) -> dict[str, np.ndarray]:
        """Float-target weights of a wave's layers (they share ``h``): corrected together, so ``H + lam I`` is
        factored once per wave, not once per layer."""
        e = shift.value()
        if e is None:
            return {}
        ws = [self.targets[n].weight.detach().float().cpu().numpy() for n in names]
        corrected = correct_for_input_shift(np.concatenate(ws), e, h.value(), damp=self.float_targets)
        return dict(zip(names, np.split(corrected, np.cumsum([w.shape[0] for w in ws])[:-1])))

    def _replace(self, names: Iterable[str], hess: dict[str, HessianAccumulator], shift: _InputShift | None = None):
        names = list(names)
        fitted = [n for n in names if hess.get(n) is not None and hess[n].count > 0]
        corrected = self._corrected(fitted, hess[fitted[0]], shift) if shift is not None and fitted else {}
        for name in names:
            lin = self.targets.pop(name)
            h = hess.get(name)
            if h is None or h.count == 0:
                warnings.warn(f"gptq: layer {name!r} did not run during calibration; rounded to nearest",
                              stacklevel=4)
                new = self.quantize_layer(name, lin, None, None)
            else:
                fit = _with_weight(lin, corrected[name]) if name in corrected else lin
                new = self.quantize_layer(name, fit, h.value(), h.abs_mean())
            if name == "":
                self.model = new
            else:
                parent, cname = self.parent[name]
                for pn, (p, cn) in self.parent.items():  # the same Linear registered under several names
                    if p._modules.get(cn) is lin:
                        p._modules[cn] = new
                parent._modules[cname] = new
            if self.bar is not None:
                self.bar.update()
                self.bar.set_postfix_str(name[-40:])

    def _wave_hooks(self, names: list[str], stop_after_wave: bool):
        """Hooks on ``names``.  On the first call (``state["calls"] == 0``) the first of them to run leads the
        wave and every other one fed the very same tensor joins it (they share one Hessian); on later calls a
        replay stops (``_StopForward``) once every wave member has run."""
        state = {"leader_x": None, "wave": [], "seen": set(), "shared": None, "calls": 0}
        handles = []

        def pre(name):
            def hook(mod, args):
                x = args[0] if args else None
                if not isinstance(x, torch.Tensor):
                    return None
                wave = state["wave"]
                if state["calls"] == 0 and name not in wave:
                    if state["leader_x"] is None:
                        state["leader_x"] = x
                        state["shared"] = HessianAccumulator()
                        wave.append(name)
                    elif x is state["leader_x"]:
                        wave.append(name)
                if name in wave:
                    if name == wave[0]:
                        state["shared"].update(x, source=self.calibrate.current)
                        state["x"] = x
                    state["seen"].add(name)
                    if stop_after_wave and state["calls"] > 0 and len(state["seen"]) == len(wave):
                        raise _StopForward
                return None
            return hook

        for n in names:
            handles.append(self._module(n).register_forward_pre_hook(pre(n)))
        return state, handles

    def _module(self, name):
        return self.model if name == "" else self.model.get_submodule(name)

    # -- drivers --------------------------------------------------------------------------------------------
    def run_waves_with_calibrate(self, names: list[str]) -> None:
        """One ``calibrate`` run per wave, until ``names`` are all quantized."""
        names = [n for n in names if n in self.targets]
        while names:
            state, handles = self._wave_hooks(names, stop_after_wave=False)
            # every call is a "first call" here: one fn run may hold many forwards; decide on the first
            try:
                with torch.no_grad():
                    self.calibrate(self.model)
            finally:
                for hd in handles:
                    hd.remove()
            wave = state["wave"]
            if not wave:  # none of them ran
                self._replace(names, {})
                return
            self._replace(wave, {n: state["shared"] for n in wave})
            names = [n for n in names if n in self.targets]

    def run(self) -> nn.Module:
        try:
            found = _find_blocks(self.model, self.targets)
            if found is not None and not self._run_blocks(found):
                found = None
            self.run_waves_with_calibrate(list(self.targets))
        finally:
            if self.bar is not None:
                self.bar.close()
        return self.model

    def _capture(self, blocks):
        """One calibrate run: per block, its calls' (args, kwargs) with the hidden input of block 0 kept."""
        calls = [[] for _ in blocks]
        sources = []  # the calibration source of each call
        chain_ok = [True] * len(blocks)
        last_out = [None]
        handles = []

        def pre(i):
            def hook(mod, args, kwargs):
                slot = _hidden_slot(args, kwargs)
                if slot is None:
                    chain_ok[i] = False
                    return None
                h = _get_hidden(slot, args, kwargs)
                if i > 0 and not (last_out[0] is h or (last_out[0] is not None and last_out[0].shape == h.shape
                                                        and torch.equal(last_out[0], h))):
                    chain_ok[i] = False
                a, k = _with_hidden(slot, args, kwargs, h if i == 0 else None)
                calls[i].append((slot, a, k))
                if i == 0:
                    sources.append(self.calibrate.current)
                return None
            return hook

        def post(i):
            def hook(mod, args, kwargs, out):
                last_out[0] = _main_output(out)
                return None
            return hook

        for i, (_, blk) in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(blk.register_forward_hook(post(i), with_kwargs=True))
        try:
            with torch.no_grad():
                self.calibrate(self.model)
        finally:
            for hd in handles:
                hd.remove()
        n = len(calls[0])
        ok = n > 0 and all(chain_ok) and all(len(c) == n for c in calls)
        self.call_sources = sources
        return calls, ok

    def _run_blocks(self, found) -> bool:
        list_name, blocks = found
        inside = {i: [n for n in self.targets if n.startswith(bname + ".")] for i, (bname, _) in enumerate(blocks)}
        if not any(inside.values()):
            return False
        # layers outside the blocks that run before the first block (e.g. an input projection) come first
        order = self._execution_order()
        first_block = min((order[n] for i in inside for n in inside[i] if n in order), default=None)
        before = [n for n in self.targets if not any(n in v for v in inside.values())
                  and n in order and first_block is not None and order[n] < first_block]
        hidden_f = None
        if before:
            if self.float_targets is not None:  # the float model's inputs of block 0, before those layers change
                calls_f, ok = self._capture(blocks)
                hidden_f = [_get_hidden(slot, a, k) for slot, a, k in calls_f[0]] if ok else None
            self.run_waves_with_calibrate(sorted(before, key=order.get))
        calls, ok = self._capture(blocks)
        if not ok:
            return False
        hidden = [_get_hidden(slot, a, k) for slot, a, k in calls[0]]
        # float targets: the float model's block inputs travel beside the quantized ones, through a float copy
        # of each block taken before any of its layers is replaced (one block's copy at a time)
        if self.float_targets is None:
            hidden_f = None
        elif hidden_f is None or [h.shape for h in hidden_f] != [h.shape for h in hidden]:
            hidden_f = list(hidden)
        for i, (bname, blk) in enumerate(blocks):
            names = [n for n in inside[i] if n in self.targets]
            float_blk = copy.deepcopy(blk) if hidden_f is not None else None
            while names:
                state, handles = self._wave_hooks(names, stop_after_wave=True)
                shift = _InputShift() if float_blk is not None else None
                try:
                    with torch.no_grad():
                        for c, (slot, a, k) in enumerate(calls[i]):
                            state["calls"] = c
                            state["seen"] = set()
                            state["x"] = None
                            self.calibrate.current = self.call_sources[c]
                            aa, kk = _with_hidden(slot, a, k, hidden[c])
                            try:
                                blk(*aa, **kk)
                            except _StopForward:
                                pass
                            if shift is not None and state["x"] is not None:
                                x_f = _input_of(float_blk, state["wave"][0][len(bname) + 1:],
                                                *_with_hidden(slot, a, k, hidden_f[c]))
                                shift.update(x_f, state["x"], self.call_sources[c])
                finally:
                    self.calibrate.current = 0
                    for hd in handles:
                        hd.remove()
                wave = state["wave"]
                if not wave:
                    self._replace(names, {})
                    break
                self._replace(wave, {n: state["shared"] for n in wave}, shift)
                names = [n for n in names if n in self.targets]
            blk = self._module(bname)
            if i + 1 < len(blocks):
                with torch.no_grad():
                    outs, outs_f = [], []
                    for c, (slot, a, k) in enumerate(calls[i]):
                        aa, kk = _with_hidden(slot, a, k, hidden[c])
                        outs.append(_main_output(blk(*aa, **kk)))
                        if hidden_f is not None:
                            aa, kk = _with_hidden(slot, a, k, hidden_f[c])
                            outs_f.append(_main_output(float_blk(*aa, **kk)))
                hidden = outs
                hidden_f = outs_f if hidden_f is not None else None
        return True

    def _execution_order(self) -> dict[str, int]:
        """First-call order of the target layers, from one calibrate run (only when needed: cheap models)."""
        # cheap shortcut: module registration order matches execution order in the usual models; a run of
        # ``calibrate`` just for this would cost a full forward pass, so it is taken from registration order
        return {n: i for i, n in enumerate(self.targets)}


def gptq_layers(model: nn.Module, calibrate: Callable[[nn.Module], object], quantize_layer, *,
                include=None, exclude=None, progress: bool = True, float_targets: float | None = None) -> nn.Module:
    """Quantize the selected ``nn.Linear`` layers of ``model`` in place, in order, with their calibration Hessians.

    ``quantize_layer(name, linear, H)`` returns the replacement module (``H`` is ``None`` for a layer that never
    ran).  ``float_targets`` (a damping, see :func:`qcore.ptq.correct_for_input_shift`): layers inside repeated
    blocks are given the weight that reproduces the float model's outputs from their quantized-model inputs.
    Returns the model.
    """
    calibrate = Sources(calibrate)
    targets = _targets(model, include, exclude)
    if not targets:
        warnings.warn("quantize_dynamic: no nn.Linear module was selected; the model is unchanged", stacklevel=3)
        return model
    return _Layerwise(model, targets, quantize_layer, calibrate, progress, float_targets).run()


#: ``gptq_options`` keys: :func:`qcore.gptq`'s options, and ``float_targets`` (the driver's)
GPTQ_OPTIONS = ("block_size", "damp", "act_order", "clip_search", "float_targets")
#: fit each layer to the float model's outputs (docs/ptq.md, "Float targets"): better on every pair measured
DEFAULT_FLOAT_TARGETS = True


def check_gptq_options(gptq_options) -> tuple[dict, float | None]:
    """``(options for qcore.gptq, the driver's float-targets damping or None)`` from ``gptq_options``."""
    gopts = dict(gptq_options or {})
    unknown = set(gopts) - set(GPTQ_OPTIONS)
    if unknown:
        raise TypeError(f"unknown gptq_options {', '.join(sorted(unknown))}; they are {', '.join(GPTQ_OPTIONS)}")
    on = gopts.pop("float_targets", DEFAULT_FLOAT_TARGETS)
    if not isinstance(on, (bool, np.bool_)):
        raise TypeError(f"gptq_options['float_targets'] must be True or False, got {on!r}")
    return gopts, (float(gopts.get("damp", DEFAULT_DAMP)) if on else None)


def quantize_calibrated(model: nn.Module, scheme: str, wopts: dict, calibrate, *, method: str = "gptq",
                        include=None, exclude=None, gptq_options=None, awq: bool = False,
                        progress: bool = True) -> nn.Module:
    """``quantize_dynamic``'s calibrated path (``method="gptq"`` and/or ``awq=True``)."""
    from ._modules import QLinear
    from ._tensors import _numpy_view

    gopts, float_targets = check_gptq_options(gptq_options)
    quantizer = qcore.get_quantizer(scheme, **wopts)
    if isinstance(quantizer, qcore.Planner):  # pragma: no cover - _model sends planners to _ptq_mixed
        raise TypeError("a planner goes through quantize_mixed")
    if awq and method != "gptq" and set(gopts) - {"clip_search"}:
        raise TypeError("with awq=True and method='rtn' only gptq_options={'clip_search': ...} applies")

    def quantize_layer(name, lin, h, abs_mean=None):
        w = _numpy_view(lin.weight)
        if h is None:
            return QLinear(lin.in_features, lin.out_features, quantizer.quantize(w), lin.bias)
        if not awq:
            return QLinear(lin.in_features, lin.out_features, qcore.gptq(w, h, quantizer, **gopts), lin.bias)
        from qcore.ptq.awq import awq as awq_quantize

        from ._awq import AWQLinear

        if method == "gptq":
            qt, s = awq_quantize(w, h, quantizer, act_scale=abs_mean, gptq=True, gptq_options=gopts)
        else:
            qt, s = awq_quantize(w, h, quantizer, act_scale=abs_mean, clip_search=bool(gopts.get("clip_search")))
        return AWQLinear(lin.in_features, lin.out_features, qt, lin.bias, s)

    return gptq_layers(model, calibrate, quantize_layer, include=include, exclude=exclude, progress=progress,
                       float_targets=float_targets)


def collect_hessians(model: nn.Module, fn: Callable[[nn.Module], object], path: str | os.PathLike | None = None, *,
                     include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
                     prefix: str = "", folds: int = DEFAULT_FOLDS) -> dict[str, HessianFolds]:
    """Run ``fn(model)`` once (``fn`` may also be calibration data, or a list of sources mixed with equal weight:
    see :class:`Sources`) and return (and write to ``path``, a ``.safetensors`` Hessian file) the input
    statistics of every selected ``nn.Linear`` as :class:`qcore.ptq.HessianFolds` — ``H = mean(x x^T)`` in
    ``folds`` folds (samples dealt round-robin, see :mod:`qcore.ptq.hessian`), plus the mean ``|x|`` —, keyed
    ``"<prefix><layer name>.weight"``: the name of the layer's weight in the model's own state dict, so
    ``qcore quantize --hessians`` matches it to the weight.  ``np.asarray(hs[name])`` is the mean over all folds.

    Layers that never ran are left out.  Memory: ``folds`` float32 ``K x K`` matrices per layer (every layer
    keeps its own, even layers fed the same tensor such as query/key/value).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sources = Sources(fn)
    targets = _targets(model, include, exclude)
    hess: dict[str, HessianAccumulator] = {}
    handles = []

    def pre(name):
        def hook(mod, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                if name not in hess:
                    hess[name] = HessianAccumulator(folds)
                hess[name].update(x, source=sources.current)
        return hook

    HessianAccumulator(folds)  # a bad ``folds`` fails here, before any forward pass
    for name, mod in targets.items():
        handles.append(mod.register_forward_pre_hook(pre(name)))
    try:
        with torch.no_grad():
            sources(model)
    finally:
        for hd in handles:
            hd.remove()
    out = {f"{prefix}{name}.weight" if name else f"{prefix}weight": h.folds()
           for name, h in hess.items() if h.count}
    if path is not None:
        save_hessians(path, out)
    return out


__all__ = ["collect_hessians", "gptq_layers", "Sources"]
