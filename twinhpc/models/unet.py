"""A U-Net-style CNN for 2-D fields (after Ronneberger et al., 2015): an encoder of ``depth``
down-sampling stages, a decoder of as many up-sampling stages with skip connections, and a 1×1
convolution to the output channels; input and output on the same grid.

Each stage is a block of two 3×3 convolutions (zero padding 1), each followed by GroupNorm and
GELU; stage ``i`` of the encoder has ``base_channels · 2**i`` channels and halves the grid with
2×2 average pooling, the decoder doubles it with a 2×2 transposed convolution and concatenates the
encoder's features of that resolution. A grid whose sides are not multiples of ``2**depth`` is
padded at its end (replicating the edge) and cropped back after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TwinError


def _block(in_channels: int, channels: int) -> nn.Sequential:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.GroupNorm(groups, channels),
        nn.GELU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.GroupNorm(groups, channels),
        nn.GELU(),
    )


class UNet(nn.Module):
    """Maps ``(batch, in_channels, H, W)`` float32 fields to ``(batch, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int, depth: int) -> None:
        super().__init__()
        if min(in_channels, out_channels, base_channels) < 1 or depth < 0:
            raise TwinError(
                f"model 'unet2d': in_channels, out_channels and base_channels must be 1 or more and depth 0 or "
                f"more, got {in_channels}, {out_channels}, {base_channels}, {depth}"
            )
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList(_block(a, b) for a, b in zip([in_channels, *widths[:-1]], widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.merge = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in range(depth))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise TwinError(f"model 'unet2d' reads 2-D fields (batch, channels, x, y), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        unit = 2**self.depth
        pad_h, pad_w = -h % unit, -w % unit
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)[..., :h, :w]


def unet2d(in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 3) -> UNet:
    """A U-Net for 2-D fields.

    Parameters
    ----------
    in_channels : input channels (a field job: the state, the forcing, one per parameter).
    out_channels : output channels (a field job: 1, the state's increment).
    base_channels : channels of the first stage; stage ``i`` has ``base_channels · 2**i``.
    depth : down-sampling stages (0: a plain CNN of one block).

    Returns
    -------
    UNet
        Maps ``(batch, in_channels, H, W)`` float32 to ``(batch, out_channels, H, W)``, any H, W.
    """
    return UNet(in_channels, out_channels, base_channels, depth)
