"""ResNet-18 for 32×32 images (the CIFAR variant of He et al., 2016).

Unlike the ImageNet ResNet, the stem is a single 3×3 convolution with stride 1 and no max-pool,
so a 32×32 input keeps its resolution through the first stage: 32 → 16 → 8 → 4, then a global
average pool. With the defaults (3 input channels, width 64, 10 classes) it has 11,173,962
parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection; ``stride`` 2 halves H and W."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:  # a 1×1 projection where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem convolution, stages of :class:`BasicBlock`, global average pool and a linear head.

    Stage ``i`` has ``width * 2**i`` channels; every stage but the first starts with stride 2.
    """

    def __init__(self, in_channels: int, width: int, blocks: tuple[int, ...], classes: int, dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, channels = [], width
        for i, n in enumerate(blocks):
            out = width * 2**i
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(channels if j == 0 else out, out, stride if j == 0 else 1) for j in range(n)]
            channels = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.dropout(self.pool(x).flatten(1)))


def resnet18(in_channels: int = 3, width: int = 64, classes: int = 10, dropout: float = 0.0) -> ResNet:
    """ResNet-18 (BasicBlocks [2, 2, 2, 2]) for 32×32 images.

    Parameters
    ----------
    in_channels : channels of the input images (3 for RGB, 1 for grey).
    width : channels of the stem and the first stage; the stages have ``width``, ``2 width``,
        ``4 width`` and ``8 width`` channels (64-128-256-512 by default).
    classes : outputs (logits).
    dropout : dropout probability before the classifier (0: none, as in the original).

    Returns
    -------
    ResNet
        Maps ``(batch, in_channels, H, W)`` float images to ``(batch, classes)`` float logits.
        Built for H = W = 32; thanks to the global average pool other sizes work too.
    """
    return ResNet(in_channels, width, (2, 2, 2, 2), classes, dropout)
