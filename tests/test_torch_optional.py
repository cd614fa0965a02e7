"""qcore.integrations.torch is an optional extra: without PyTorch its import says how to install it.

Kept apart from tests/test_torch.py, which is skipped as a whole when torch is missing: this one runs either way
(it simulates the absence of torch).
"""
from __future__ import annotations

import importlib
import sys

import pytest


def test_import_without_torch_says_how_to_install(monkeypatch):
    import qcore.integrations as integ

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "qcore.integrations.torch", raising=False)
    monkeypatch.delattr(integ, "torch", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("qcore.integrations.torch")
    msg = str(info.value)
    assert 'pip install "qcore[torch]"' in msg and "torch==2.13.0" in msg
    with pytest.raises(ImportError, match="qcore\\[torch\\]"):
        from qcore.integrations import torch as _  # noqa: F401
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    import qcore as q2  # the core itself never needs torch

    assert q2.quantize([1.0, 2.0]).bits == 8
