"""One saved step of the plate's linear physics in closed form: the spectral step a hybrid twin
starts from (``train.prior = "plate"``, docs/surrogates.md), in numpy.

The solver (:mod:`twinhpc.kernels.heat`) advances the interior nodes ``n`` forward-Euler
substeps of ``dt`` per saved step. With ``v = T − T_edge`` on the interior (zero on the held
edges) one substep is affine::

    v' = (I + dt A) v + dt s,     A = α Δ_h − β I,     s = q/ρc − β (T_edge − T∞)

with ``Δ_h`` the 5-point Laplacian of zero Dirichlet edges. The orthonormal DST-I matrices
``S_y`` (H−2 points) and ``S_x`` (W−2) diagonalise ``Δ_h``: mode ``(i, j)`` has the eigenvalue
``λᵢⱼ = −α (4/dy² sin²(iπ/2(H−1)) + 4/dx² sin²(jπ/2(W−1))) − β``, and the ``n`` substeps of a
constant ``s`` sum to::

    v̂(t+Δ) = gⁿ v̂ + (gⁿ − 1)/λ ŝ,      g = 1 + dt λ,      v̂ = S_y v S_xᵀ  (S symmetric, S² = I)

This is exactly what the solver computes when the sources are constant over the saved
interval; the dataset's ``forcing[t]`` is the mean of the applied ``q`` over the interval, so
the step differs from the solver only by the sources' variation within the interval (a ramp,
a switch-on, the load's oscillation). Cost per field: four (H−2)- and (W−2)-square matrix
products, against ``n`` stencil sweeps for the solver.

A scenario whose ``k`` or ``h`` lies above the range the dataset was simulated for would make
``|g| > 1`` at the dataset's ``dt``; the substeps are then taken again per scenario as the
simulator takes them (:func:`substeps`), so the step stays stable for every scenario.

:func:`spectral_step_reference` is the float64 reference of the torch step
(:class:`twinhpc.train.prior.PlatePrior`), which the tests compare with it and with the solver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..config.simulate import DT_SAFETY
from .heat import stable_dt

#: the parameters the step reads, by their role in ``provenance.simulate.constants``
ROLES = {
    "k": "conductivity",
    "h": "convection_coefficient",
    "t_inf": "ambient_temperature",
    "t_edge": "edge_temperature",
}


@dataclass(frozen=True)
class PlateConstants:
    """What the spectral step needs of a plate dataset (``provenance.simulate`` of its manifest).

    Attributes
    ----------
    H, W : grid nodes, edges included; dx, dy : node spacing (m).
    dt : the solver's substep (s); dt_save : the saved interval (s), a whole number of ``dt``.
    rho_c : density × heat capacity (J/(m³ K)); thickness : d (m); faces : convecting faces (2).
    index : the positions of ``k``, ``h``, ``t_inf``, ``t_edge`` in the params vector.
    """

    H: int
    W: int
    dx: float
    dy: float
    dt: float
    dt_save: float
    rho_c: float
    thickness: float
    faces: int
    index: dict

    @classmethod
    def from_provenance(cls, simulate: dict) -> PlateConstants:
        """From ``provenance.simulate`` of a ``twinhpc simulate`` manifest.

        Raises
        ------
        KeyError, ValueError
            A key the provenance lacks (its message names it), or a parameter role whose name is
            not in its params list.
        """
        grid, const = simulate["grid"], simulate["constants"]
        names = [p["name"] for p in simulate["params"]]
        index = {}
        for key, role in ROLES.items():
            name = const.get(role, key)  # the plate's own parameter names by default
            if name not in names:
                raise ValueError(f"constants.{role} names parameter {name!r}, which is not among {names}")
            index[key] = names.index(name)
        return cls(
            H=int(grid["H"]),
            W=int(grid["W"]),
            dx=float(grid["dx"]),
            dy=float(grid["dy"]),
            dt=float(simulate["dt"]),
            dt_save=float(simulate["dt_save"]),
            rho_c=float(const["rho_c"]),
            thickness=float(const["thickness"]),
            faces=int(const.get("faces", 2)),
            index=index,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def every(self) -> int:
        """The solver's substeps per saved interval."""
        return max(1, round(self.dt_save / self.dt))

    def coefficients(self, k, h) -> tuple[np.ndarray, np.ndarray]:
        """``α = k/ρc`` and ``β = faces·h/(ρc d)`` (1/s), float64 arrays."""
        k, h = np.asarray(k, np.float64), np.asarray(h, np.float64)
        return k / self.rho_c, self.faces * h / (self.rho_c * self.thickness)


def dst_matrix(n: int) -> np.ndarray:
    """The orthonormal DST-I matrix of ``n`` points, ``sqrt(2/(n+1)) sin(π i j/(n+1))``
    (``i, j = 1..n``): symmetric and its own inverse."""
    j = np.arange(1, n + 1)
    return np.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(j, j) / (n + 1))


def laplacian_eigenvalues(n: int, spacing: float) -> np.ndarray:
    """``4/spacing² sin²(jπ/2(n+1))``, ``j = 1..n``: minus the eigenvalues of the 1-D second
    difference of ``n`` interior points between two zero edges, in the order of
    :func:`dst_matrix`."""
    return 4.0 / spacing**2 * np.sin(np.pi * np.arange(1, n + 1) / (2 * (n + 1))) ** 2


def substeps(c: PlateConstants, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Forward-Euler substeps per saved interval for each scenario: the dataset's ``every``, or
    for a scenario whose step would be unstable at that ``dt`` (``k`` or ``h`` above the
    simulated range), the smallest count whose step is ≤ ``DT_SAFETY`` × its stability limit,
    as ``twinhpc simulate`` chooses it (int64, the shape of ``alpha``)."""
    n = np.ceil(c.dt_save / (DT_SAFETY * stable_dt(alpha, beta, c.dx, c.dy)) - 1e-9).astype(np.int64)
    return np.maximum(n, c.every)


def spectral_step_reference(c: PlateConstants, u: np.ndarray, q: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The spectral step of a batch: ``u`` (B, H, W) temperatures (K), ``q`` (B, H, W) the mean
    source power density over the interval (W/m³), ``params`` (B, P) → the state one saved
    interval later (B, H, W) float64, edges at ``t_edge``."""
    u, q, p = (np.asarray(a, np.float64) for a in (u, q, params))
    if u.ndim != 3 or u.shape[1:] != (c.H, c.W) or q.shape != u.shape or p.ndim != 2 or len(p) != len(u):
        raise ValueError(
            f"spectral step: expected u, q of shape (B, {c.H}, {c.W}) and params (B, P), "
            f"got {u.shape}, {q.shape}, {p.shape}"
        )
    k, h, t_inf, t_edge = (p[:, c.index[key]] for key in ("k", "h", "t_inf", "t_edge"))
    alpha, beta = c.coefficients(k, h)
    n = substeps(c, alpha, beta)
    sy, sx = dst_matrix(c.H - 2), dst_matrix(c.W - 2)
    lam = (
        -alpha[:, None, None]
        * (laplacian_eigenvalues(c.H - 2, c.dy)[:, None] + laplacian_eigenvalues(c.W - 2, c.dx)[None, :])
        - beta[:, None, None]
    )
    g = (1.0 + (c.dt_save / n)[:, None, None] * lam) ** n[:, None, None]
    e = t_edge[:, None, None]
    v = u[:, 1:-1, 1:-1] - e
    s = q[:, 1:-1, 1:-1] / c.rho_c - beta[:, None, None] * (e - t_inf[:, None, None])
    out = sy @ (g * (sy @ v @ sx) + (g - 1.0) / lam * (sy @ s @ sx)) @ sx
    return np.pad(out, ((0, 0), (1, 1), (1, 1))) + e  # the edges: v = 0
