"""Walking a torch model: the module check and the submodule swap shared by quantize_dynamic, prepare_qat,
convert (_model.py), prepare (_static.py) and apply_quantized (_apply.py).  Its own module so that those import
it without importing each other (tests/test_import_graph.py)."""
from __future__ import annotations

from typing import Callable

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
