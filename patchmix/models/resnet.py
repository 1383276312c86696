"""ImageNet ResNet-50 (He et al. 2016), written in the package (no torchvision).

Layer for layer the torchvision ``resnet50`` ("v1.5": stride on the 3x3 conv of the bottleneck, 1x1
projection shortcuts), so its state dict keys under ``backbone.`` match torchvision's apart from ``fc``
(here ``head.fc``): 25,557,032 parameters with the 1000-class image classifier.
``(N, 3, 224, 224) -> (N, 2048, 7, 7)``: at 224 pixels a 4x4 grid pools uneven 2-or-1-row cells
(the grid's floor rule, docs/semantics.md); 256-pixel inputs give an 8x8 map that divides evenly.

``last_stride=1`` is wsolevaluation's ResNet-50 for class activation maps (``wsol/resnet.py``: its ``layer4`` has
stride 1): ``(N, 3, 224, 224) -> (N, 2048, 14, 14)``. Only the stride of ``layer4.0.conv2`` and
``layer4.0.downsample.0`` changes, so every parameter keeps its name and shape and ImageNet weights load as they are.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNetImageNet"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + shortcut)


class ResNetImageNet(nn.Module):
    """Bottleneck ResNet for ImageNet; ``layers=(3, 4, 6, 3)`` is ResNet-50."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), in_channels: int = 3, zero_init_residual: bool = False,
                 last_stride: int = 2):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2 (the stride of the last stage), got {last_stride}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=False)):
            blocks = []
            for j in range(n):
                stride = (last_stride if i == len(layers) - 1 else 2) if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(cin, planes, stride))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.feature_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x
