"""CIFAR ResNets (32x32 inputs, 8x8 last feature map), written in the package.

* ``ResNetCIFAR``: He et al. 2016 ("Deep Residual Learning", section 4.2): 3 stages of ``n`` basic blocks
  with 16/32/64 channels, depth ``6n + 2``, identity shortcuts with zero-padded channels (option A), so
  ResNet-32 (``n = 5``) has the published 0.46M parameters.
* ``PreActResNetCIFAR``: He et al. 2016 ("Identity Mappings"): pre-activation blocks, basic for depth
  ``6n + 2`` (PreAct-ResNet-56: ``n = 9``, 0.85M) and bottleneck for ``9n + 2`` (PreAct-ResNet-164:
  ``n = 18``, 16/32/64 bottleneck widths with 4x expansion, 1.7M). Shortcuts are 1x1 projections where
  the shape changes, and the stack ends with BN + ReLU before pooling.

Each backbone maps ``(N, C, H, W)`` to the last feature map ``(N, F, H/4, W/4)``; ``feature_channels`` is ``F``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PreActResNetCIFAR", "ResNetCIFAR"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _PadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for CIFAR with option-A shortcuts; ``depth=32`` is ResNet-32."""

    def __init__(self, depth: int = 32, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNetCIFAR depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feature_channels = cin
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class PreActResNetCIFAR(nn.Module):
    """Pre-activation ResNet for CIFAR: basic blocks for depth ``6n + 2`` (``bottleneck=False``), bottleneck
    blocks for ``9n + 2``. ``depth=56`` is PreAct-ResNet-56, ``depth=164, bottleneck=True`` PreAct-ResNet-164."""

    def __init__(self, depth: int = 56, bottleneck: bool = False, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        per = 9 if bottleneck else 6
        if (depth - 2) % per:
            raise ValueError(f"PreActResNetCIFAR depth must be {per}n + 2 (bottleneck={bottleneck}), got {depth}")
        n = (depth - 2) // per
        block = PreActBottleneck if bottleneck else PreActBasicBlock
        self.conv1 = _conv3x3(in_channels, widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)  # final BN + ReLU of the pre-activation design
        self.feature_channels = cin
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.layers(self.conv1(x))))
