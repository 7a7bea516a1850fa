"""The plate's spectral step (twinhpc.kernels.heat_spectral, the physics prior of a hybrid twin):
equal to the explicit solver when the sources are constant over the interval, stable where the
dataset's step would not be, its torch version (twinhpc.train.prior) equal to the numpy reference,
and the field task's step with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinhpc.kernels.heat import heat_run, stable_dt
from twinhpc.kernels.heat_spectral import (
    PlateConstants,
    dst_matrix,
    laplacian_eigenvalues,
    spectral_step_reference,
    substeps,
)
from twinhpc.preprocess.transform import Field
from twinhpc.train.field import FieldTask
from twinhpc.train.prior import PlatePrior, plate_prior

H, W = 11, 14
RHO_C, D = 3.6e6, 0.002
K_MAX, H_MAX = 60.0, 40.0


def constants(every: int = 12, dt_save: float = 5.0) -> PlateConstants:
    dx, dy = 0.1 / (W - 1), 0.08 / (H - 1)
    alpha, beta = K_MAX / RHO_C, 2 * H_MAX / (RHO_C * D)
    assert dt_save / every <= 0.9 * stable_dt(alpha, beta, dx, dy)
    return PlateConstants(
        H=H,
        W=W,
        dx=dx,
        dy=dy,
        dt=dt_save / every,
        dt_save=dt_save,
        rho_c=RHO_C,
        thickness=D,
        faces=2,
        index={"k": 2, "h": 0, "t_inf": 3, "t_edge": 1},  # not the plate's order: the index is used
    )


def scenarios(c: PlateConstants, b: int, seed: int = 0, k_high: float = K_MAX):
    """``b`` random scenarios: start fields, source power densities (W/m³), params (b, 5)."""
    rng = np.random.default_rng(seed)
    k, h = rng.uniform(15, k_high, b), rng.uniform(5, H_MAX, b)
    t_inf, t_edge = rng.uniform(288, 308, b), rng.uniform(293, 313, b)
    params = np.zeros((b, 5))
    params[:, [c.index["k"], c.index["h"], c.index["t_inf"], c.index["t_edge"]]] = np.stack([k, h, t_inf, t_edge], 1)
    params[:, 4] = rng.normal(size=b)  # a parameter the step does not read
    u = rng.uniform(290, 330, (b, H, W))
    u[:, [0, -1], :] = t_edge[:, None, None]
    u[:, :, [0, -1]] = t_edge[:, None, None]
    q = rng.uniform(0, 5e6, (b, H, W))
    return u, q, params


def solver(c: PlateConstants, u, q, params, every: int):
    """The explicit solver over one saved interval of ``every`` substeps, the sources constant."""
    k, h, t_inf, t_edge = (params[:, c.index[n]] for n in ("k", "h", "t_inf", "t_edge"))
    alpha, beta = c.coefficients(k, h)
    dt = c.dt_save / every
    shapes = (q / c.rho_c)[:, None]  # one source per scenario, its rate of temperature change
    amps = np.ones((len(u), every, 1))
    out = heat_run(u, alpha * dt / c.dx**2, alpha * dt / c.dy**2, beta * dt, t_inf, t_edge, shapes, amps, dt, 1, every)
    return out[:, 1]


def test_the_dst_diagonalises_the_second_difference():
    n, h = 9, 0.3
    s = dst_matrix(n)
    assert np.allclose(s @ s, np.eye(n), atol=1e-13) and np.allclose(s, s.T)
    second = (np.diag(-2 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)) / h**2
    assert np.allclose(s @ second @ s, np.diag(-laplacian_eigenvalues(n, h)), atol=1e-10)


def test_the_step_is_the_solver_when_the_sources_are_constant_over_the_interval():
    c = constants()
    u, q, p = scenarios(c, 6)
    step = spectral_step_reference(c, u, q, p)
    truth = solver(c, u, q, p, c.every)
    assert np.abs(step - truth).max() < 1e-9 * np.abs(truth).max()
    assert np.array_equal(step[:, 0], np.broadcast_to(p[:, [c.index["t_edge"]]], (6, W)))


def test_the_step_misses_what_the_sources_do_within_the_interval():
    """A source that is on for the first half of the interval only, given as its mean: the step
    differs from the solver (the heat spread for longer), and the difference is small."""
    c = constants()
    u, q, p = scenarios(c, 3, seed=1)
    k, h, t_inf, t_edge = (p[:, c.index[n]] for n in ("k", "h", "t_inf", "t_edge"))
    alpha, beta = c.coefficients(k, h)
    amps = np.zeros((3, c.every, 1))
    amps[:, : c.every // 2] = 2.0  # mean 1
    shapes = (q / c.rho_c)[:, None]
    truth = heat_run(
        u, alpha * c.dt / c.dx**2, alpha * c.dt / c.dy**2, beta * c.dt, t_inf, t_edge, shapes, amps, c.dt, 1, c.every
    )[:, 1]
    miss = np.abs(spectral_step_reference(c, u, q, p) - truth).max()
    change = np.abs(truth - u).max()
    assert 1e-6 * change < miss < 0.5 * change


def test_a_conductivity_above_the_simulated_range_takes_more_substeps_and_stays_stable():
    c = constants()
    u, q, p = scenarios(c, 4, seed=2, k_high=3 * K_MAX)
    alpha, beta = c.coefficients(p[:, c.index["k"]], p[:, c.index["h"]])
    n = substeps(c, alpha, beta)
    assert n.min() >= c.every and n.max() > c.every
    assert np.all(c.dt_save / n <= 0.9 * stable_dt(alpha, beta, c.dx, c.dy) + 1e-12)
    step = spectral_step_reference(c, u, q, p)
    for i in range(4):
        truth = solver(c, u[i : i + 1], q[i : i + 1], p[i : i + 1], int(n[i]))
        assert np.abs(step[i] - truth[0]).max() < 1e-9 * np.abs(truth).max()


def test_from_provenance_reads_the_plate_and_names_a_missing_parameter():
    prov = {
        "grid": {"H": H, "W": W, "dx": 0.01, "dy": 0.02},
        "dt": 0.5,
        "dt_save": 5.0,
        "constants": {
            "rho_c": RHO_C,
            "thickness": D,
            "faces": 2,
            "conductivity": "k",
            "convection_coefficient": "h",
            "ambient_temperature": "t_inf",
            "edge_temperature": "t_edge",
        },
        "params": [{"name": n} for n in ("k", "h", "t_inf", "t_edge", "t0")],
    }
    c = PlateConstants.from_provenance(prov)
    assert c.every == 10 and c.index == {"k": 0, "h": 1, "t_inf": 2, "t_edge": 3} and (c.dx, c.dy) == (0.01, 0.02)
    assert PlateConstants(**c.to_dict()) == c
    prov["constants"]["edge_temperature"] = "t_frame"
    with pytest.raises(ValueError, match="'t_frame'"):
        PlateConstants.from_provenance(prov)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-6)])
def test_the_torch_prior_equals_the_numpy_reference(dtype, tol):
    c = constants()
    u, q, p = scenarios(c, 5, seed=3, k_high=2 * K_MAX)
    ref = spectral_step_reference(c, u, q, p)
    out = PlatePrior(c)(torch.from_numpy(u).to(dtype), torch.from_numpy(q).to(dtype), torch.from_numpy(p))
    assert out.dtype == dtype and out.shape == u.shape
    assert np.abs(out.double().numpy() - ref).max() < tol * np.abs(ref).max()
    assert plate_prior(None) is None and plate_prior({"kind": "plate", **c.to_dict()}).c == c


def test_the_field_task_steps_from_the_prior_and_adds_the_model_s_correction():
    """With a prior, a model that outputs 0 gives the prior's step (plus the fitted mean of what
    it misses); its output counts in units of that misfit's std. Held nodes keep their value."""
    c = constants()
    u, q, p = scenarios(c, 3, seed=4)
    held = np.zeros((H, W))
    held[0] = 1.0
    stats = {
        "state_mean": 305.0,
        "state_std": 12.0,
        "step_mean": 0.01,
        "step_std": 0.05,
        "forcing_mean": 1e6,
        "forcing_std": 2e6,
        "params_mean": p.mean(0),
        "params_std": p.std(0) + 1.0,
        "held": held,
    }
    fields = {"state": ("field", (3, H, W)), "forcing": ("forcing", (2, H, W)), "params": ("params", (5,))}
    norm = Field(fields, stats, {"kind": "plate", **c.to_dict()})
    again = Field.from_state(*norm.state())
    assert again.prior == norm.prior
    task = FieldTask(again)
    x, f, pn = (
        torch.from_numpy((v - stats[f"{role}_mean"]) / stats[f"{role}_std"])  # float64, not normalize's float32
        for role, v in (("state", u), ("forcing", q), ("params", p))
    )

    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, inputs):
            return torch.full((inputs.shape[0], 1, *inputs.shape[2:]), self.value, dtype=torch.float64)

    for value in (0.0, 2.0):
        new = task.physical(task.step(Constant(value), x, f, pn)).numpy()
        expect = spectral_step_reference(c, u, q, p) + 0.01 + value * 0.05
        expect[:, 0] = u[:, 0]  # held
        assert np.abs(new - expect).max() < 1e-7  # the model output is cast to float32
