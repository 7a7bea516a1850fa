"""The numbers of a twin's validation, in numpy: rollout errors, the plate's energy balance and
the two baselines (docs/twin.md, "Validating the twin").

::

    err = step_errors(pred, true, reference=t_inf)     # per scenario and step: nrmse, nrmse_rise, sq, max_abs
    phys = PlatePhysics.from_provenance(manifest.provenance["simulate"], param_names)
    terms = energy_terms(u, forcing, params, phys)    # W per scenario and step; residual among them
    lin = LinearBaseline.fit(u_train, f_train, p_train, rank=32)
    u_lin = lin.rollout(u0, forcing, params, steps=50)

Every function takes trajectories ``(n, T+1, *grid)`` in physical units (the state at the saved
times 0..T), forcing ``(n, T, *grid)`` (acting from t to t+1) and params ``(n, P)``, and returns
per-step arrays ``(n, T)``: column ``t - 1`` is the saved time ``t``. No torch, no MPI: the
validation (:mod:`.twin_validation`) and ``benchmarks/twin.py`` share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TwinError
from ..kernels.heat_spectral import PlateConstants

#: the horizons (saved steps) reported by default, clipped to the trajectories' length
HORIZONS = (1, 10, 50)
#: the models compared: the twin and the two baselines
MODELS = ("twin", "persistence", "linear")


# -- errors ------------------------------------------------------------------------------------
def step_errors(pred: np.ndarray, true: np.ndarray, reference: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Errors of ``pred`` against ``true`` (both ``(n, T+1, *grid)``) at each saved time
    ``t = 1..T``, per scenario: float64 ``(n, T)`` arrays

    - ``nrmse``: ``‖pred − true‖₂ / ‖true‖₂`` over the grid (PDEBench's definition);
    - ``nrmse_rise`` (with ``reference``, ``(n,)``: a temperature per scenario, e.g. the ambient
      ``T∞``): ``‖pred − true‖₂ / ‖true − reference‖₂``, the error relative to the rise above it;
    - ``sq``: ``Σ (pred − true)²`` over the grid (for the RMSE);
    - ``max_abs``: ``max |pred − true|`` over the grid.
    """
    if pred.shape != true.shape or pred.ndim < 3:
        raise TwinError(f"step_errors: pred {pred.shape} and true {true.shape} must agree as (n, T+1, *grid)")
    p = np.asarray(pred[:, 1:], np.float64)
    t = np.asarray(true[:, 1:], np.float64)
    grid = tuple(range(2, p.ndim))
    err = p - t
    sq = (err * err).sum(axis=grid)
    out = {
        "nrmse": np.sqrt(sq) / np.sqrt((t * t).sum(axis=grid)),
        "sq": sq,
        "max_abs": np.abs(err).max(axis=grid),
    }
    if reference is not None:
        ref = np.asarray(reference, np.float64).reshape(len(t), *([1] * (t.ndim - 1)))
        rise = t - ref
        out["nrmse_rise"] = np.sqrt(sq) / np.sqrt((rise * rise).sum(axis=grid))
    return out


# -- the plate's energy balance -----------------------------------------------------------------
class PlatePhysics(PlateConstants):
    """What the plate's energy balance needs, from a ``twinhpc simulate`` manifest
    (``provenance.simulate``, docs/twin.md): the fields of
    :class:`~twinhpc.kernels.heat_spectral.PlateConstants` (node spacing ``dx``, ``dy`` (m),
    ``thickness`` (m), ``rho_c`` (J/(m³·K)), ``faces`` (2), the saved interval ``dt_save`` and the
    solver's step ``dt`` (s)), and as attributes the positions in the params vector of the
    conductivity ``k``, the convection coefficient ``h``, the ambient ``t_inf`` and the edge
    temperature ``t_edge``."""

    @property
    def k(self) -> int:
        return int(self.index["k"])

    @property
    def h(self) -> int:
        return int(self.index["h"])

    @property
    def t_inf(self) -> int:
        return int(self.index["t_inf"])

    @property
    def t_edge(self) -> int:
        return int(self.index["t_edge"])

    @classmethod
    def from_provenance(cls, simulate: dict | None, params: int | None = None) -> PlatePhysics | None:
        """The physics of a ``provenance.simulate`` record, or ``None`` when there is none (a
        dataset not written by ``twinhpc simulate``). ``params``: the length of the params
        vector the twin reads (checked against the record's list)."""
        if not simulate or "constants" not in simulate:
            return None
        names = [p["name"] for p in simulate["params"]]
        if params is not None and params != len(names):
            raise TwinError(f"the dataset's provenance lists {len(names)} parameters; the twin reads {params}")
        try:
            return super().from_provenance(simulate)
        except (KeyError, ValueError) as e:
            raise TwinError(f"the dataset's provenance.simulate is incomplete: {e}") from None


def energy_terms(
    u: np.ndarray, forcing: np.ndarray, params: np.ndarray, phys: PlatePhysics, quadrature: str = "solver"
) -> dict[str, np.ndarray]:
    """The plate's energy balance over each saved interval ``t → t+1``, in watts, per scenario:
    float64 ``(n, T)`` arrays

    - ``heat_in``: the sources, ``d dA Σ q[t]`` (``q``: the interval's mean power density);
    - ``edges``: conducted in through the fixed-temperature edges, ``k d (dy/dx) Σ (T_edge − T₁)``
      along the left and right edges plus ``k d (dx/dy) Σ (T_edge − T₁)`` along the top and
      bottom (``T₁``: the first interior node);
    - ``faces``: lost by convection, ``faces · h dA Σ (T − T∞)``;
    - ``stored``: the change of stored heat, ``ρc d dA Σ (T[t+1] − T[t]) / dt_save``;
    - ``residual``: ``heat_in + edges − faces − stored``.

    Sums run over the interior nodes (the edge nodes are the boundary condition), ``dA = dx dy``.
    ``edges`` and ``faces`` are linear in ``T``; their mean over the interval is taken from their
    values ``L(t)``, ``L(t+1)`` at its ends as ``(1+w)/2 L(t) + (1−w)/2 L(t+1)``, by
    ``quadrature``: ``"trapezoid"`` (``w = 0``: second order in ``dt_save``), ``"left"`` (``w =
    1``: forward Euler's own, exact when ``dt_save`` is one solver step) or ``"solver"`` (``w =
    dt / dt_save``: what forward Euler's substeps sum to, to second order in ``dt_save`` — the
    trapezoid alone leaves an error ``(dt/2) dL/dt`` that does not shrink with ``dt_save``).
    The edge temperature is the scenario's ``T_edge``, whatever ``u`` holds on its edges.
    """
    if u.ndim != 4:
        raise TwinError(f"energy balance: a plate's trajectories are (n, T+1, H, W), got {u.shape}")
    if forcing.shape != (u.shape[0], u.shape[1] - 1, *u.shape[2:]):
        raise TwinError(f"energy balance: forcing {forcing.shape} does not fit trajectories {u.shape}")
    weights = {"trapezoid": 0.0, "left": 1.0, "solver": min(1.0, phys.dt / phys.dt_save)}
    if quadrature not in weights:
        raise TwinError(f"energy balance: quadrature must be one of {', '.join(weights)}, got {quadrature!r}")
    w = weights[quadrature]
    u = np.asarray(u, np.float64)
    p = np.asarray(params, np.float64).reshape(len(u), -1)
    k, h = p[:, phys.k, None], p[:, phys.h, None]
    t_inf, t_edge = p[:, phys.t_inf, None, None, None], p[:, phys.t_edge, None]
    d, area = phys.thickness, phys.dx * phys.dy
    inner = u[:, :, 1:-1, 1:-1] - t_inf  # the rise θ of the interior nodes
    mean = 0.5 * (1 + w) * inner[:, :-1] + 0.5 * (1 - w) * inner[:, 1:]
    # T at the first interior node of each edge, as a rise: T_edge − T₁ = (T_edge − T∞) − θ₁
    edge_rise = t_edge - p[:, phys.t_inf, None]
    sides = (edge_rise[..., None] - mean[:, :, :, 0]).sum(-1) + (edge_rise[..., None] - mean[:, :, :, -1]).sum(-1)
    ends = (edge_rise[..., None] - mean[:, :, 0, :]).sum(-1) + (edge_rise[..., None] - mean[:, :, -1, :]).sum(-1)
    terms = {
        "heat_in": d * area * np.asarray(forcing, np.float64)[:, :, 1:-1, 1:-1].sum(axis=(-2, -1)),
        "edges": k * d * ((phys.dy / phys.dx) * sides + (phys.dx / phys.dy) * ends),
        "faces": phys.faces * h * area * mean.sum(axis=(-2, -1)),
        "stored": phys.rho_c * d * area * (inner[:, 1:] - inner[:, :-1]).sum(axis=(-2, -1)) / phys.dt_save,
    }
    terms["residual"] = terms["heat_in"] + terms["edges"] - terms["faces"] - terms["stored"]
    return terms


def residual_fraction(terms: dict[str, np.ndarray]) -> np.ndarray:
    """``|residual|`` of each interval as a fraction of the scenario's mean heat input over its
    intervals, ``(n, T)`` (a per-interval ratio would divide by zero while the sources are off)."""
    scale = terms["heat_in"].mean(axis=1, keepdims=True)
    return np.abs(terms["residual"]) / np.where(scale > 0, scale, np.nan)


# -- baselines ----------------------------------------------------------------------------------
def persistence(u0: np.ndarray, steps: int) -> np.ndarray:
    """The persistence baseline: ``u[t] = u[0]`` for ``t = 0..steps``; float32 ``(n, steps+1, *grid)``."""
    u0 = np.asarray(u0, np.float32)
    return np.broadcast_to(u0[:, None], (len(u0), steps + 1, *u0.shape[1:])).copy()


def _pod(x: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(G,)`` and the leading ``rank`` POD modes ``(G, r)`` of the rows of ``x``: the
    eigenvectors of the covariance ``XᵀX`` (``G × G``), or, with fewer rows than grid values, by
    the method of snapshots from ``XXᵀ``; modes of a zero eigenvalue are left out."""
    mean = x.mean(axis=0)
    c = x - mean
    snapshots = c.shape[0] < c.shape[1]
    values, vectors = np.linalg.eigh(c @ c.T if snapshots else c.T @ c)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    r = int(min(rank, int((values > max(values[0], 0.0) * 1e-12).sum()) if values.size and values[0] > 0 else 0))
    if snapshots:
        modes = c.T @ vectors[:, :r] / np.sqrt(values[:r])
        return mean, modes
    return mean, vectors[:, :r].copy()


@dataclass
class LinearBaseline:
    """The linear baseline: ``a[t+1] = A a[t] + B b[t] + D z + c`` in reduced coordinates, fitted
    by least squares on training trajectories (DMD with inputs).

    ``a = Φᵀ (u − ū)``: the state's coordinates in its ``rank`` leading POD modes ``Φ`` (mean
    ``ū``) over every training state; ``b = Ψᵀ (f − f̄)``: the forcing's in its own POD modes;
    ``z``: the standardised params. ``W = [A B D c]ᵀ`` solves ``min ‖[a b z 1] W − a'‖₂`` over
    every training pair ``(t, t+1)``. A rollout starts from ``a[0] = Φᵀ (u[0] − ū)`` and returns
    ``ū + Φ a[t]``.
    """

    state_mean: np.ndarray  # (G,)
    state_modes: np.ndarray  # (G, r)
    forcing_mean: np.ndarray | None  # (G,)
    forcing_modes: np.ndarray | None  # (G, rf)
    params_mean: np.ndarray | None  # (P,)
    params_std: np.ndarray | None  # (P,)
    weights: np.ndarray  # (r + rf + P + 1, r)
    grid: tuple[int, ...]

    @classmethod
    def fit(
        cls,
        u: np.ndarray,
        forcing: np.ndarray | None = None,
        params: np.ndarray | None = None,
        *,
        rank: int = 32,
        forcing_rank: int | None = None,
    ) -> LinearBaseline:
        """Fit on training trajectories ``u`` (n, T+1, *grid), ``forcing`` (n, T, *grid) or
        ``None``, ``params`` (n, P) or ``None``; ``forcing_rank`` defaults to ``rank``."""
        if u.ndim < 3 or u.shape[1] < 2:
            raise TwinError(f"linear baseline: need trajectories (n, T+1 >= 2, *grid), got {u.shape}")
        n, frames, grid = u.shape[0], u.shape[1], tuple(u.shape[2:])
        x = np.asarray(u, np.float64).reshape(n * frames, -1)
        s_mean, s_modes = _pod(x, rank)
        a = ((x - s_mean) @ s_modes).reshape(n, frames, -1)
        columns = [a[:, :-1]]
        f_mean = f_modes = p_mean = p_std = None
        if forcing is not None:
            y = np.asarray(forcing, np.float64).reshape(n * (frames - 1), -1)
            f_mean, f_modes = _pod(y, forcing_rank or rank)
            columns.append(((y - f_mean) @ f_modes).reshape(n, frames - 1, -1))
        if params is not None:
            pv = np.asarray(params, np.float64).reshape(n, -1)
            p_mean, p_std = pv.mean(axis=0), pv.std(axis=0)
            p_std = np.where(p_std > 0, p_std, 1.0)
            columns.append(np.broadcast_to(((pv - p_mean) / p_std)[:, None], (n, frames - 1, pv.shape[1])))
        columns.append(np.ones((n, frames - 1, 1)))
        z = np.concatenate(columns, axis=-1).reshape(n * (frames - 1), -1)
        target = a[:, 1:].reshape(n * (frames - 1), -1)
        weights = np.linalg.lstsq(z, target, rcond=None)[0]
        return cls(s_mean, s_modes, f_mean, f_modes, p_mean, p_std, weights, grid)

    @property
    def rank(self) -> int:
        return int(self.state_modes.shape[1])

    def rollout(
        self, u0: np.ndarray, forcing: np.ndarray | None = None, params: np.ndarray | None = None, *, steps: int
    ) -> np.ndarray:
        """Trajectories float32 ``(n, steps+1, *grid)`` from ``u0`` (n, *grid); row 0 is ``u0``."""
        n = len(u0)
        if tuple(u0.shape[1:]) != self.grid:
            raise TwinError(f"linear baseline: u0 has shape {u0.shape}; it was fitted on the grid {self.grid}")
        out = np.empty((n, steps + 1, *self.grid), np.float32)
        out[:, 0] = u0
        a = (np.asarray(u0, np.float64).reshape(n, -1) - self.state_mean) @ self.state_modes
        fixed = []
        if self.params_mean is not None:
            if params is None:
                raise TwinError("linear baseline: fitted with params; give them")
            fixed.append((np.asarray(params, np.float64).reshape(n, -1) - self.params_mean) / self.params_std)
        fixed.append(np.ones((n, 1)))
        for t in range(steps):
            cols = [a]
            if self.forcing_modes is not None:
                if forcing is None:
                    raise TwinError("linear baseline: fitted with forcing; give it")
                cols.append(
                    (np.asarray(forcing[:, t], np.float64).reshape(n, -1) - self.forcing_mean) @ self.forcing_modes
                )
            a = np.concatenate([*cols, *fixed], axis=1) @ self.weights
            out[:, t + 1] = (self.state_mean + a @ self.state_modes.T).reshape(n, *self.grid)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays (to send to other ranks)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


# -- summaries ----------------------------------------------------------------------------------
def horizons_of(steps: int, horizons=HORIZONS) -> list[int]:
    """The horizons clipped to ``steps`` (1..steps), each once, ascending."""
    return sorted({min(max(1, int(h)), steps) for h in horizons})


def summarize(rows: dict[str, np.ndarray], grid_values: int, columns: list[int]) -> dict[str, np.ndarray]:
    """One model's figures at the given step ``columns`` (0-based: column ``t - 1`` is horizon
    ``t``) from its per-scenario, per-step arrays (``nrmse``, ``sq``, ``max_abs`` and, when
    present, ``nrmse_rise`` and ``energy_residual``): float64 arrays of ``len(columns)``:
    ``nrmse``/``nrmse_rise``/``energy_residual`` averaged over scenarios, ``rmse`` over every
    value, ``max_abs`` the largest."""
    n = len(rows["sq"])
    out = {"rmse": np.sqrt(rows["sq"][:, columns].sum(axis=0) / (n * grid_values))}
    out["max_abs"] = rows["max_abs"][:, columns].max(axis=0)
    for name in ("nrmse", "nrmse_rise", "energy_residual"):
        if name in rows:
            out[name] = np.nanmean(rows[name][:, columns], axis=0)
    return out


def summarize_full(rows: dict[str, np.ndarray], grid_values: int) -> dict[str, float]:
    """One model's figures over the full rollout (every step of every scenario)."""
    n, steps = rows["sq"].shape
    out = {
        "rmse": float(np.sqrt(rows["sq"].sum() / (n * steps * grid_values))),
        "max_abs": float(rows["max_abs"].max()),
    }
    for name in ("nrmse", "nrmse_rise", "energy_residual"):
        if name in rows:
            out[name] = float(np.nanmean(rows[name]))
    return out


def excursion(low: np.ndarray, high: np.ndarray, span_low: np.ndarray, span_high: np.ndarray) -> np.ndarray:
    """How far each rollout's values ``[low, high]`` (n,) went beyond the span ``[span_low,
    span_high]`` (n,) that bounds them, as a share of the span's width (0: inside it); a width of
    0 counts as 10⁻⁶ of the span's magnitude (at least 10⁻⁶)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    span_low, span_high = np.asarray(span_low, np.float64), np.asarray(span_high, np.float64)
    width = np.maximum(span_high - span_low, 1e-6 * np.maximum(np.abs(span_high), 1.0))
    beyond = np.maximum(np.maximum(high - span_high, span_low - low), 0.0)
    return beyond / width
