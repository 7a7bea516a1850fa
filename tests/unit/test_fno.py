"""The field models' building blocks: the FNO's spectral convolution against a direct DFT in numpy
(explicit sums of complex exponentials, no FFT), the grid channels and padding, the modes a grid
can hold, and the U-Net on grids that are not multiples of its pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinhpc.errors import TwinError
from twinhpc.models import build
from twinhpc.models.fno import Pointwise, SpectralConv


def weights(layer: SpectralConv) -> list[np.ndarray]:
    """The layer's complex weights as numpy arrays (in, out, *modes)."""
    return [p.detach().double().numpy()[..., 0] + 1j * p.detach().double().numpy()[..., 1] for p in layer.weights]


def spectral_1d_reference(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y[b, o, n] = (1/N) Re(Σ_k c_k Y[b, o, k] e^{2πikn/N}) with Y[k] = Σ_i X[b, i, k] W[i, o, k],
    X[k] = Σ_n v[n] e^{−2πikn/N} for the kept k < m, c_0 = 1 and c_k = 2 (the conjugate
    frequencies of a real signal)."""
    n_points, m = v.shape[-1], w.shape[-1]
    n = np.arange(n_points)
    k = np.arange(m)
    forward = np.exp(-2j * np.pi * np.outer(k, n) / n_points)  # (m, N)
    x_hat = np.einsum("bin,kn->bik", v, forward)
    y_hat = np.einsum("bik,iok->bok", x_hat, w)
    c = np.where(k == 0, 1.0, 2.0)
    return np.real(np.einsum("bok,kn->bon", y_hat * c, forward.conj())) / n_points


def spectral_2d_reference(v: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """The 2-D spectral convolution as a direct sum: frequencies kx ∈ {0 … mx−1} (weights
    ``w_pos``) and kx ∈ {H−mx … H−1} (``w_neg``) along the first axis, ky ∈ {0 … my−1} along the
    last; y = (1/HW) Re Σ c_ky Y[kx, ky] e^{2πi(kx a/H + ky b/W)}, c_0 = 1, c_ky = 2 otherwise."""
    h, wd = v.shape[-2:]
    mx, my = w_pos.shape[-2:]
    a, b = np.arange(h), np.arange(wd)
    out = np.zeros((v.shape[0], w_pos.shape[1], h, wd))
    for kxs, w in ((np.arange(mx), w_pos), (np.arange(h - mx, h), w_neg)):
        ex = np.exp(-2j * np.pi * np.outer(kxs, a) / h)  # (mx, H)
        ey = np.exp(-2j * np.pi * np.outer(np.arange(my), b) / wd)  # (my, W)
        x_hat = np.einsum("nirc,xr,yc->nixy", v, ex, ey)
        y_hat = np.einsum("nixy,ioxy->noxy", x_hat, w) * np.where(np.arange(my) == 0, 1.0, 2.0)
        out += np.real(np.einsum("noxy,xr,yc->norc", y_hat, ex.conj(), ey.conj()))
    return out / (h * wd)


def test_the_1d_spectral_convolution_is_the_direct_dft_computation():
    torch.manual_seed(0)
    layer = SpectralConv(3, 2, (5,)).double()
    v = torch.randn(4, 3, 17, dtype=torch.float64)
    got = layer(v).detach().double().numpy()
    want = spectral_1d_reference(v.numpy(), weights(layer)[0])
    assert got.shape == (4, 2, 17)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("h, w, modes", [(12, 10, (3, 4)), (9, 16, (4, 2))])
def test_the_2d_spectral_convolution_is_the_direct_dft_computation(h, w, modes):
    torch.manual_seed(1)
    layer = SpectralConv(2, 3, modes)
    v = torch.randn(2, 2, h, w)
    got = layer(v).detach().double().numpy()
    want = spectral_2d_reference(v.double().numpy(), *weights(layer))
    assert got.shape == (2, 3, h, w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_spectral_convolution_keeps_only_its_modes():
    """A pure frequency above the kept modes is mapped to zero, one inside is not."""
    torch.manual_seed(2)
    layer = SpectralConv(1, 1, (4,))
    n = torch.arange(32, dtype=torch.float32)
    assert layer(torch.cos(2 * torch.pi * 6 * n / 32)[None, None]).abs().max() < 1e-5
    assert layer(torch.cos(2 * torch.pi * 3 * n / 32)[None, None]).abs().max() > 1e-3


def test_modes_that_do_not_fit_the_grid_are_a_twin_error_naming_them():
    model = build("fno2d", modes_x=8, modes_y=4)
    with pytest.raises(TwinError, match=r"model 'fno2d': modes \(8, 4\) need a grid of at least 16 × 6 points"):
        model(torch.randn(1, 1, 12, 12))
    model(torch.randn(1, 1, 16, 6))  # just fits
    with pytest.raises(
        TwinError, match=r"model 'fno1d' reads 1-D fields \(batch, channels, x\), got a tensor of shape"
    ):
        build("fno1d", modes=4)(torch.randn(1, 1, 8, 8))


def test_fno2d_modes_per_axis_and_padding_keep_the_grid():
    model = build("fno2d", in_channels=3, out_channels=2, modes=5, modes_y=3, width=6, layers=2, padding=4)
    assert model.spectral[0].modes == (5, 3)
    assert tuple(model.spectral[0].weights[0].shape) == (6, 6, 5, 3, 2)
    assert model(torch.randn(2, 3, 10, 14)).shape == (2, 2, 10, 14)


@pytest.mark.parametrize("dims", [1, 2])
def test_the_pointwise_map_is_a_1x1_convolution_with_its_parameters(dims):
    torch.manual_seed(0)
    conv = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(5, 3, 1)
    layer = Pointwise(dims, 5, 3)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in conv.state_dict().items()}
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, *(7, 4)[:dims])
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)


def test_the_grid_channels_are_the_coordinates_in_the_unit_interval():
    model = build("fno2d", modes=2, width=4, layers=1)
    grid = model.coordinates(torch.zeros(2, 1, 3, 5))
    assert grid.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(grid[0, 0, :, 0], [0, 0.5, 1])
    np.testing.assert_allclose(grid[1, 1, 0, :], [0, 0.25, 0.5, 0.75, 1])
    assert build("fno2d", grid=False, modes=2).lift.in_channels == 1
    assert build("fno2d", modes=2).lift.in_channels == 3


def test_unet2d_keeps_any_grid_and_its_features_double_per_stage():
    model = build("unet2d", in_channels=4, out_channels=1, base_channels=6, depth=2)
    assert model(torch.randn(2, 4, 13, 7)).shape == (2, 1, 13, 7)
    assert [block[0].out_channels for block in model.down] == [6, 12, 24]
    assert build("unet2d", depth=0)(torch.randn(1, 1, 5, 5)).shape == (1, 1, 5, 5)
