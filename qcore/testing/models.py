"""Reference torch models shared by qcore's tests and benchmarks (needs torch; ``import qcore.testing`` does not
import this module).

:class:`CifarCNN` is the network of the static int8 target (DESIGN §6, ``benchmarks/bench_static.py``,
``tests/test_static.py``); :func:`torch_ao_static` quantizes it with torch.ao's eager static quantization, the
contender those compare with.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["CifarCNN", "torch_ao_static"]


class CifarCNN(nn.Module):
    """A CIFAR-size CNN: 3x32x32 input, three 3x3 convolutions with 32/64/64 channels each followed by a ReLU
    (the second and third with stride 2), one Linear (64*8*8 -> 10).  ``features`` is an ``nn.Sequential``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class _AoCifarCNN(nn.Module):
    """``CifarCNN`` with torch.ao's quant/dequant stubs around it."""

    def __init__(self, fp32: CifarCNN):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.features, self.fc = copy.deepcopy(fp32.features), copy.deepcopy(fp32.fc)

    def forward(self, x):
        x = self.features(self.quant(x))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def torch_ao_static(model: CifarCNN, calibration, engine: str = "fbgemm") -> nn.Module:
    """torch.ao eager static quantization of a :class:`CifarCNN` (a copy): conv+ReLU fused, the engine's default
    qconfig, calibrated on the batches of ``calibration``.  The quantized engine is left set to ``engine``
    (torch.ao's packed weights are made for the engine current at convert; set it again before running the
    result if it changed)."""
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation warnings
        ao = _AoCifarCNN(model).eval()
        ao.qconfig = tq.get_default_qconfig(engine)
        tq.fuse_modules(ao.features, [["0", "1"], ["2", "3"], ["4", "5"]], inplace=True)
        tq.prepare(ao, inplace=True)
        with torch.no_grad():
            for c in calibration:
                ao(c)
        tq.convert(ao, inplace=True)
    return ao
