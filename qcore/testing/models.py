"""Reference torch models shared by qcore's tests and benchmarks (needs torch; ``import qcore.testing`` does not
import this module).

:class:`CifarCNN` is the network of the static int8 target (DESIGN §6, ``benchmarks/bench_static.py``,
``tests/test_static.py``); :func:`torch_ao_static` quantizes it with torch.ao's eager static quantization, the
contender those compare with.  :func:`resnet18` and :func:`mobilenet_v2` build the two real CNNs of issue 23 in
their standard (torchvision) layer configurations, written here — nothing is downloaded, and torchvision is not
needed — with seeded weights and batch-norm statistics set from seeded images (:func:`set_batch_norm_statistics`),
so activations have the scale of a trained network; :func:`torch_ao_fx` quantizes any of them with torch.ao's FX
graph mode, the contender for real CNNs.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["CifarCNN", "torch_ao_static", "ResNet18", "MobileNetV2", "resnet18", "mobilenet_v2",
           "set_batch_norm_statistics", "torch_ao_fx"]


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


# ------------------------------------------------------------------------------------------------ real CNNs


def _conv_bn(cin, cout, k, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, a residual addition, ReLU after the add."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016; torchvision's ``resnet18`` layer for layer): 7x7 stride-2 stem, 3x3 max pooling,
    four stages of two basic blocks (64, 128, 256, 512 channels), adaptive average pooling, one Linear."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection; a residual
    addition when the stride is 1 and the channel count is kept."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018; torchvision's ``mobilenet_v2``, width 1.0, layer for layer)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def set_batch_norm_statistics(model: nn.Module, batches) -> nn.Module:
    """Set every BatchNorm's running statistics to the mean/variance of its input over ``batches`` (cumulative,
    ``momentum=None``), and give each BN a seeded scale in [0.5, 1.5) and shift in [-0.2, 0.2) — a random
    network whose activations are normalised like a trained one's.  Returns ``model`` in eval mode."""
    g = torch.Generator().manual_seed(1234)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=g) * 0.4 - 0.2)
        model.train()
        for x in batches:
            model(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _seeded(cls, num_classes, seed, image_size):
    torch.manual_seed(seed)
    model = cls(num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    return set_batch_norm_statistics(model, [torch.randn(8, 3, image_size, image_size, generator=g)
                                             for _ in range(2)])


def resnet18(num_classes: int = 1000, seed: int = 0, image_size: int = 112) -> ResNet18:
    """A seeded :class:`ResNet18` in eval mode, batch-norm statistics set on seeded ``image_size`` images."""
    return _seeded(ResNet18, num_classes, seed, image_size)


def mobilenet_v2(num_classes: int = 1000, seed: int = 0, image_size: int = 112) -> MobileNetV2:
    """A seeded :class:`MobileNetV2` in eval mode, batch-norm statistics set on seeded ``image_size`` images."""
    return _seeded(MobileNetV2, num_classes, seed, image_size)


def torch_ao_fx(model: nn.Module, calibration, engine: str = "x86") -> nn.Module:
    """torch.ao FX graph mode static quantization of ``model`` (a copy): ``prepare_fx`` with
    ``get_default_qconfig_mapping(engine)``, the batches of ``calibration``, ``convert_fx``.  The quantized engine
    is left set to ``engine`` (set it again before running the result if it changed)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    calibration = list(calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation warnings
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(engine),
                              example_inputs=(calibration[0],))
        with torch.no_grad():
            for c in calibration:
                prepared(c)
        return convert_fx(prepared)
