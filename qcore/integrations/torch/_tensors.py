"""torch tensors <-> numpy arrays, and fake quantization with a straight-through gradient."""
from __future__ import annotations

import torch

import numpy as np

import qcore
from qcore.tensor import QTensor


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float32 C-contiguous numpy array; a view (no copy) when ``t`` already is CPU float32 contiguous."""
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        t = t.to(device="cpu", dtype=torch.float32).contiguous()
    return t.resolve_conj().resolve_neg().numpy()


def _to_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if out.device != like.device or out.dtype != like.dtype:
        out = out.to(device=like.device, dtype=like.dtype)
    return out


def _qtensor_of(weight: torch.Tensor, quantizer) -> QTensor:
    return quantizer.quantize(_numpy_view(weight))


class _FakeQuantFn(torch.autograd.Function):
    """Forward: ``fn`` (a numpy -> numpy fake quantization) on the values; backward: straight-through (identity)."""

    @staticmethod
    def forward(ctx, x, fn):
        return _to_torch(fn(_numpy_view(x)).reshape(tuple(x.shape)), x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(x: torch.Tensor, scheme: str = "linear", bits: int | None = None, **options) -> torch.Tensor:
    """``decode(encode(x))`` by the qcore scheme, as a tensor with a straight-through gradient.

    Options are passed to the scheme as given: a plain tensor, the scheme's own defaults (``bits`` None: its
    ``default_bits``).
    """
    q = qcore.get_quantizer(scheme, **({} if bits is None else {"bits": bits}), **options)
    return _FakeQuantFn.apply(x, lambda a: q.quantize(a).dequantize())
