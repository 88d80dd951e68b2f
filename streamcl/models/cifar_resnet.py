"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56 for 32 x 32 inputs.

Written here because timm has no CIFAR ResNet: its ``resnet*`` models are the
ImageNet family (7 x 7 stem, four stages, 512-d features). The CIFAR family is
a 3 x 3 stem with 16 channels and three stages of ``n`` basic blocks with 16,
32 and 64 channels (depth ``6n + 2``; ResNet-32 has n = 5, about 0.46 M
parameters), global average pooling and a 64-d feature. Down-sampling
shortcuts are the paper's parameter-free option A (stride-2 subsampling and
zero channel padding), as in the class-incremental literature (WA, PODNet,
PyCIL) that reports ResNet-32 results on CIFAR-100.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CifarResNet", "BasicBlock", "cifar_resnet"]


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlock(nn.Module):
    """Two 3 x 3 conv-BN layers with an identity (or option-A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Feature extractor of a CIFAR ResNet: ``forward(x)`` returns the pooled ``(N, 64 * width)`` feature.

    :param depth: 6n + 2 (20, 32, 44, 56, 110).
    :param width: channel multiplier (1 = the paper's 16/32/64 channels).
    """

    def __init__(self, depth: int = 32, width: int = 1):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56 ...), got {depth}")
        n = (depth - 2) // 6
        c = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, c[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.in_planes = c[0]
        self.stage1 = self._stage(c[0], n, 1)
        self.stage2 = self._stage(c[1], n, 2)
        self.stage3 = self._stage(c[2], n, 2)
        self.num_features = c[2]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks: List[nn.Module] = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def cifar_resnet(depth: int = 32, width: int = 1) -> CifarResNet:
    """A CIFAR ResNet feature extractor (``depth`` 6n + 2); ResNet-32 by default."""
    return CifarResNet(depth=depth, width=width)
