"""Walking a torch model: the module check and the submodule swap shared by quantize_dynamic, prepare_qat,
convert (_model.py), prepare (_static.py) and apply_quantized (_apply.py).  Its own module so that those import
it without importing each other (tests/test_import_graph.py)."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")


def _swap(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which ``make(name, child)`` returns a module; shared modules stay shared."""
    done: dict[int, nn.Module] = {}
    count = 0
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if id(child) in done:
                parent._modules[name] = done[id(child)]
                continue
            new = make(full, child)
            if new is not None:
                done[id(child)] = new
                parent._modules[name] = new
                count += 1
    return count


class _Tracer(torch.fx.Tracer):
    """torch.fx tracer keeping qcore's layers (observers, fake quantizers: not traceable) as leaves."""

    def is_leaf_module(self, m, qualname):
        return type(m).__module__.startswith("qcore.integrations") or super().is_leaf_module(m, qualname)


def trace(model: nn.Module):
    """The ``torch.fx`` graph of ``model`` (qcore's layers as leaves), or None if it does not trace."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any failure to trace means: the caller's fallback
        return None
