"""MobileNetV2 (Sandler et al. 2018) with CIFAR strides, written in the package.

The paper (section 4.1): "we set the first, third, and fourth blocks' stride sizes to 1 instead of 2". We read
"blocks" as the five stride-2 stages of the ImageNet network in order (stem conv, 24, 32, 64 and 160
channels): the stem, the 32- and the 64-channel stages run at stride 1, the 24- and 160-channel stages keep
stride 2. A 32x32 input then ends in an 8x8 map of 1280 channels, the same 8x8 as the CIFAR ResNets, so grid
sizes 1, 2, 4 and 8 pool whole feature cells. Pass ``strides`` to choose another reading (the widely used
``kuangliu/pytorch-cifar`` variant is ``(1, 1, 2, 2, 1, 2, 1)`` with a stride-1 stem: 4x4 map).
Parameter count does not depend on the strides (2.24M with 10 classes).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MobileNetV2CIFAR"]

# (expansion t, output channels c, repeats n) per stage of Table 2 of the MobileNetV2 paper
_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
PAPER_CIFAR_STRIDES = (1, 2, 1, 1, 1, 2, 1)  # per stage; the stem has stride 1
IMAGENET_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # with a stride-2 stem


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2CIFAR(nn.Module):
    """MobileNetV2 feature extractor: ``(N, C, H, W) -> (N, 1280, H/4, W/4)`` with the default strides."""

    def __init__(self, in_channels: int = 3, strides: tuple[int, ...] = PAPER_CIFAR_STRIDES, stem_stride: int = 1,
                 last_channels: int = 1280):
        super().__init__()
        if len(strides) != len(_STAGES):
            raise ValueError(f"strides needs one entry per stage ({len(_STAGES)}), got {strides}")
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, stem_stride)]
        cin = 32
        for (t, c, n), s in zip(_STAGES, strides, strict=True):
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.feature_channels = last_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
