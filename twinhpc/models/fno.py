"""Fourier neural operators in 1-D and 2-D (Li et al., "Fourier Neural Operator for Parametric
Partial Differential Equations", ICLR 2021).

The network maps input fields sampled on a regular grid to output fields on the same grid::

    v₀ = P(a(x), x)                         lifting: a pointwise linear map to ``width`` channels
    v_{l+1} = σ(W_l v_l + K_l v_l)          ``layers`` Fourier layers (σ = GELU, none after the last)
    u = Q(v_L)                              projection: pointwise ``width → projection → out``

``W_l`` is a pointwise (1×1) convolution and ``K_l`` the spectral convolution
(:class:`SpectralConv`): the real FFT of ``v_l`` over the grid, the lowest ``modes`` frequencies
of each grid dimension multiplied by learned complex matrices (channels in × channels out, one
per kept frequency), the other frequencies set to zero, and the inverse FFT. The weights hold
the real and imaginary parts in a last axis of 2 (plain float32 parameters, so that the
gradient all-reduce, the optimizers and the checkpoints see real tensors only).

With ``grid = true`` the grid coordinates (in [0, 1] per dimension) are appended to the input
channels before the lifting, as in the paper. ``padding`` appends that many grid points of
zeros at the end of every grid dimension before the Fourier layers and removes them after: the
FFT treats the domain as periodic, and the padding gives a non-periodic problem room.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TwinError


class SpectralConv(nn.Module):
    """The spectral convolution of one Fourier layer over the last ``len(modes)`` axes (1 or 2).

    Parameters
    ----------
    in_channels, out_channels : channels of the input and the output.
    modes : frequencies kept per grid dimension. In 1-D the ``modes[0]`` lowest of the real FFT;
        in 2-D ``modes[0]`` along the first grid axis, on both ends of its full FFT (the lowest
        positive and negative frequencies), and ``modes[1]`` of the last axis's real FFT.
    name : the model's name, for error messages.

    Attributes
    ----------
    weights : nn.ParameterList
        One float32 tensor ``(in, out, *modes, 2)`` (real, imaginary) in 1-D; two in 2-D (for the
        positive and the negative frequencies of the first axis).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: tuple[int, ...], name: str = "fno") -> None:
        super().__init__()
        if len(modes) not in (1, 2) or any(m < 1 for m in modes):
            raise TwinError(f"model {name!r}: modes must be 1 or more per grid dimension, got {modes}")
        self.in_channels, self.out_channels, self.modes, self.name = in_channels, out_channels, tuple(modes), name
        scale = 1.0 / (in_channels * out_channels)
        corners = 1 if len(modes) == 1 else 2
        self.weights = nn.ParameterList(
            nn.Parameter(scale * torch.rand(in_channels, out_channels, *modes, 2)) for _ in range(corners)
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        dims = len(self.modes)
        grid = v.shape[-dims:]
        self._check_grid(grid)
        w = [torch.view_as_complex(p) for p in self.weights]
        # the transforms run on the kept frequencies only: the real FFT of the last axis is cut to
        # its kept columns before the first axis is transformed (2-D), and the inverse real FFT
        # pads the missing columns with zeros itself; the same as rfftn / irfftn of the full
        # spectrum with the other frequencies zeroed, for about half the FFT work
        spectrum = torch.fft.rfft(v.to(self.weights[0].dtype), dim=-1)[..., : self.modes[-1]]  # bf16: no FFT
        if dims == 1:
            out = torch.einsum("bix,iox->box", spectrum, w[0])
            return torch.fft.irfft(out, n=grid[-1], dim=-1)
        mx = self.modes[0]
        spectrum = torch.fft.fft(spectrum, dim=-2)
        low = torch.einsum("bixy,ioxy->boxy", spectrum[..., :mx, :], w[0])
        high = torch.einsum("bixy,ioxy->boxy", spectrum[..., -mx:, :], w[1])
        middle = low.new_zeros(*low.shape[:2], grid[0] - 2 * mx, low.shape[-1])
        out = torch.fft.ifft(torch.cat([low, middle, high], dim=-2), dim=-2)
        return torch.fft.irfft(out, n=grid[-1], dim=-1)

    def _check_grid(self, grid) -> None:
        """The kept modes must fit the grid: ``modes[-1]`` ≤ n//2 + 1 frequencies of the real FFT
        of the last axis, and in 2-D ``2 modes[0]`` ≤ the points of the first axis."""
        last = grid[-1] // 2 + 1
        if self.modes[-1] > last or (len(grid) == 2 and 2 * self.modes[0] > grid[0]):
            wanted = (
                f"{2 * self.modes[0]} × {2 * (self.modes[1] - 1)}" if len(grid) == 2 else f"{2 * (self.modes[0] - 1)}"
            )
            raise TwinError(
                f"model {self.name!r}: modes {self.modes} need a grid of at least {wanted} points "
                f"(padding included), but the input's grid is {tuple(grid)}; lower the modes"
            )


class Pointwise(nn.Module):
    """A 1×1 convolution over a 1-D or 2-D grid, computed as one matrix product over channels
    (on CPUs about 1.4× as fast as ``nn.Conv2d`` with a 1×1 kernel, forward and backward).

    Its parameters, their initialisation and their state-dict names (``weight`` of shape
    ``(out, in, 1[, 1])``, ``bias``) are those of ``nn.Conv1d`` / ``nn.Conv2d(in, out, 1)``.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(in_channels, out_channels, 1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oi,bi...->bo...", self.weight.flatten(1), x)
        return y + self.bias.view(-1, *[1] * (x.dim() - 2))


class FNO(nn.Module):
    """Lifting, Fourier layers and projection over a 1-D or 2-D grid (see the module docstring).

    Maps ``(batch, in_channels, *grid)`` float32 fields to ``(batch, out_channels, *grid)``.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        width: int,
        modes: tuple[int, ...],
        layers: int,
        projection: int,
        grid: bool,
        padding: int,
        name: str,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, width, layers, projection) < 1 or padding < 0:
            raise TwinError(
                f"model {name!r}: in_channels, out_channels, width, layers and projection must be 1 or more "
                f"and padding 0 or more, got {in_channels}, {out_channels}, {width}, {layers}, {projection}, {padding}"
            )
        self.dims, self.grid, self.padding, self.name = dims, grid, padding, name
        self.lift = Pointwise(dims, in_channels + (dims if grid else 0), width)
        self.spectral = nn.ModuleList(SpectralConv(width, width, modes, name) for _ in range(layers))
        self.pointwise = nn.ModuleList(Pointwise(dims, width, width) for _ in range(layers))
        self.project = nn.Sequential(
            Pointwise(dims, width, projection), nn.GELU(), Pointwise(dims, projection, out_channels)
        )

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The grid coordinates of ``x``'s grid, in [0, 1] per dimension, as ``dims`` channels."""
        grid = x.shape[2:]
        axes = [torch.linspace(0, 1, n, device=x.device, dtype=x.dtype) for n in grid]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(mesh).expand(x.shape[0], self.dims, *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 + self.dims:
            shape = "(batch, channels, x)" if self.dims == 1 else "(batch, channels, x, y)"
            raise TwinError(
                f"model {self.name!r} reads {self.dims}-D fields {shape}, got a tensor of shape {tuple(x.shape)}"
            )
        if self.grid:
            x = torch.cat([x, self.coordinates(x)], dim=1)
        v = self.lift(x)
        if self.padding:
            v = F.pad(v, [0, self.padding] * self.dims)
        for i, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            v = spectral(v) + pointwise(v)
            if i < len(self.spectral) - 1:
                v = F.gelu(v)
        if self.padding:
            v = v[(..., *[slice(0, -self.padding)] * self.dims)]
        return self.project(v)


def fno1d(
    in_channels: int = 1,
    out_channels: int = 1,
    width: int = 64,
    modes: int = 16,
    layers: int = 4,
    projection: int = 128,
    grid: bool = True,
    padding: int = 0,
) -> FNO:
    """A 1-D Fourier neural operator.

    Parameters
    ----------
    in_channels : input channels (a field job: the state, the forcing, one per parameter).
    out_channels : output channels (a field job: 1, the state's increment).
    width : channels of the Fourier layers.
    modes : lowest frequencies kept by each spectral convolution (at most ``x // 2 + 1``).
    layers : Fourier layers.
    projection : hidden channels of the projection.
    grid : append the grid coordinate as an input channel.
    padding : grid points of zeros appended before the Fourier layers (removed after).

    Returns
    -------
    FNO
        Maps ``(batch, in_channels, x)`` float32 to ``(batch, out_channels, x)``.
    """
    return FNO(1, in_channels, out_channels, width, (modes,), layers, projection, grid, padding, "fno1d")


def fno2d(
    in_channels: int = 1,
    out_channels: int = 1,
    width: int = 32,
    modes: int = 12,
    modes_x: int | None = None,
    modes_y: int | None = None,
    layers: int = 4,
    projection: int = 128,
    grid: bool = True,
    padding: int = 0,
) -> FNO:
    """A 2-D Fourier neural operator.

    Parameters
    ----------
    in_channels, out_channels, width, layers, projection, grid, padding : as for :func:`fno1d`.
    modes : frequencies kept per grid dimension, unless ``modes_x`` / ``modes_y`` say otherwise.
    modes_x : frequencies kept along the first grid axis (rows, height H), on both ends of its
        spectrum: ``2 modes_x ≤ H``.
    modes_y : lowest frequencies of the real FFT along the last axis (columns, width W):
        ``modes_y ≤ W // 2 + 1``.

    Returns
    -------
    FNO
        Maps ``(batch, in_channels, H, W)`` float32 to ``(batch, out_channels, H, W)``.
    """
    kept = (modes if modes_x is None else int(modes_x), modes if modes_y is None else int(modes_y))
    return FNO(2, in_channels, out_channels, width, kept, layers, projection, grid, padding, "fno2d")
