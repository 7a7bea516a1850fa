"""The physics prior of a hybrid twin (``train.prior = "plate"``): the plate's linear physics
advanced one saved step in closed form, in torch, on the device and dtype of the batch.

:class:`PlatePrior` is :func:`twinhpc.kernels.heat_spectral.spectral_step_reference` (its
numpy reference; the derivation is in that module) on tensors: two DST-I matrix products on each
side of the interior field, the mode-wise amplification ``gⁿ`` and forcing gain ``(gⁿ − 1)/λ``
computed per scenario from its ``k`` and ``h``. It has no learned parameters; gradients flow
through it (it is linear in the state and the forcing), so unrolled training works unchanged.
"""

from __future__ import annotations

import torch

from ..config.simulate import DT_SAFETY
from ..kernels.heat import stable_dt
from ..kernels.heat_spectral import PlateConstants, dst_matrix, laplacian_eigenvalues


class PlatePrior:
    """One saved step of the plate's physics for a batch, in physical units.

    Parameters
    ----------
    constants : the plate's :class:`~twinhpc.kernels.heat_spectral.PlateConstants` (from the
        dataset's provenance; a checkpoint keeps them in its fitted statistics).
    """

    def __init__(self, constants: PlateConstants):
        self.c = constants
        self._sy = torch.from_numpy(dst_matrix(constants.H - 2))
        self._sx = torch.from_numpy(dst_matrix(constants.W - 2))
        lap = (
            laplacian_eigenvalues(constants.H - 2, constants.dy)[:, None]
            + laplacian_eigenvalues(constants.W - 2, constants.dx)[None, :]
        )
        self._lap = torch.from_numpy(lap)
        self._cache: dict = {}

    def _on(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (self._sy.to(device, dtype), self._sx.to(device, dtype), self._lap.to(device))
        return self._cache[key]

    def __call__(self, u: torch.Tensor, q: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``u`` (B, H, W) temperatures (K), ``q`` (B, H, W) the interval's mean source power
        density (W/m³), ``params`` (B, P) physical → the state one saved interval later (B, H, W),
        in ``u``'s dtype, edges at ``t_edge``."""
        c = self.c
        sy, sx, lap = self._on(u.device, u.dtype)
        p = params.double()
        k, h, t_inf, t_edge = (p[:, c.index[key]] for key in ("k", "h", "t_inf", "t_edge"))
        alpha, beta = k / c.rho_c, c.faces * h / (c.rho_c * c.thickness)
        # the mode-wise gains in float64 (gⁿ − 1 is small for the slow modes), then u's dtype
        n = torch.clamp(torch.ceil(c.dt_save / (DT_SAFETY * stable_dt(alpha, beta, c.dx, c.dy)) - 1e-9), min=c.every)
        lam = -alpha[:, None, None] * lap - beta[:, None, None]
        g = torch.pow(1.0 + (c.dt_save / n)[:, None, None] * lam, n[:, None, None])
        gain = ((g - 1.0) / lam).to(u.dtype)
        g = g.to(u.dtype)
        e = t_edge.to(u.dtype)[:, None, None]
        v = u[:, 1:-1, 1:-1] - e
        s = q[:, 1:-1, 1:-1] / c.rho_c - (beta[:, None, None] * (t_edge - t_inf)[:, None, None]).to(u.dtype)
        out = sy @ (g * (sy @ v @ sx) + gain * (sy @ s @ sx)) @ sx
        return torch.nn.functional.pad(out, (1, 1, 1, 1)) + e  # the edges: v = 0


def plate_prior(settings: dict | None) -> PlatePrior | None:
    """The prior a field transform's ``prior`` settings describe (None: none)."""
    if not settings:
        return None
    return PlatePrior(PlateConstants(**{k: v for k, v in settings.items() if k != "kind"}))
