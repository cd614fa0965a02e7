"""``AWQLinear``: a :class:`QLinear` holding an activation-aware scaled weight (see ``qcore.ptq.awq``)."""
from __future__ import annotations

import numpy as np
import torch

from ._modules import QLinear


class AWQLinear(QLinear):
    """A :class:`QLinear` whose weight is ``Q(W * s)`` (AWQ, ``s`` per input channel): the input is divided by
    ``s`` (the buffer ``input_scale``) before the quantized product, so in float the layer is ``x @ W.T``.

    The scale is kept in the module rather than folded into the layer before it: that is correct whatever
    precedes the layer (an activation function, attention), at the cost of one elementwise division per call.
    """

    def __init__(self, in_features: int, out_features: int, weight, bias, input_scale):
        super().__init__(in_features, out_features, weight, bias)
        s = torch.as_tensor(np.asarray(input_scale, np.float32)).reshape(-1).clone()
        if s.shape != (int(in_features),):
            raise ValueError(f"input_scale must have shape ({in_features},), got {tuple(s.shape)}")
        if not (torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError("input_scale must be finite and > 0")
        self.register_buffer("input_scale", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"AWQLinear expects input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        return super().forward(x / self.input_scale.to(x.dtype))


__all__ = ["AWQLinear"]
