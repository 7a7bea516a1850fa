"""The seed CNN: conv 32 3×3 → ReLU → max-pool 2 → dense 64 (ReLU) → dense 10, for 32×32×3 images.

With the defaults it has 462,410 parameters (conv 896, dense 460,864 and 650); the convolution
has no padding, so 32×32 inputs give 30×30 feature maps and 15×15 after pooling.
"""

from __future__ import annotations

from torch import nn


def seed_cnn(
    in_channels: int = 3, channels: int = 32, hidden: int = 64, classes: int = 10, input_size: int = 32
) -> nn.Sequential:
    """The seed CNN.

    Parameters
    ----------
    in_channels : channels of the input images (3 for RGB, 1 for grey).
    channels : filters of the 3×3 convolution.
    hidden : units of the hidden dense layer.
    classes : outputs (logits).
    input_size : height and width of the (square) input images; at least 4.

    Returns
    -------
    nn.Sequential
        Maps ``(batch, in_channels, input_size, input_size)`` float images to ``(batch, classes)``
        logits.
    """
    if input_size < 4:
        raise ValueError(f"input_size must be at least 4 (3×3 convolution, then 2×2 pooling), got {input_size}")
    pooled = (input_size - 2) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * pooled * pooled, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )
