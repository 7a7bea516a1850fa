"""The numbers of a twin's validation (twinhpc.train.twin_metrics): errors against hand
computations, the linear baseline on a system it can represent exactly, and the plate's energy
balance on the simulator's own trajectories (a physics check of the simulator as well)."""

from __future__ import annotations

import numpy as np
import pytest

from twinhpc.config import SimulateConfig
from twinhpc.errors import TwinError
from twinhpc.sim.ensemble import provenance
from twinhpc.sim.plate import Plate, draw_params
from twinhpc.train.twin_metrics import (
    LinearBaseline,
    PlatePhysics,
    energy_terms,
    excursion,
    horizons_of,
    persistence,
    residual_fraction,
    step_errors,
    summarize,
    summarize_full,
)


# -- errors ------------------------------------------------------------------------------------
def test_errors_match_hand_computations():
    true = np.zeros((2, 3, 2, 2))
    true[0, 1] = [[300.0, 302.0], [298.0, 300.0]]
    true[0, 2] = [[301.0, 301.0], [301.0, 301.0]]
    true[1, 1] = [[310.0, 310.0], [310.0, 310.0]]
    true[1, 2] = [[312.0, 308.0], [310.0, 310.0]]
    pred = true.copy()
    pred[0, 1] += [[1.0, 0.0], [0.0, -1.0]]  # sq 2, max 1
    pred[0, 2] += [[0.0, 0.0], [0.0, 3.0]]  # sq 9, max 3
    pred[1, 1] += [[2.0, 2.0], [2.0, 2.0]]  # sq 16, max 2
    # pred[1, 2] exact
    ref = np.array([296.0, 305.0])
    e = step_errors(pred, true, ref)
    assert e["sq"] == pytest.approx(np.array([[2.0, 9.0], [16.0, 0.0]]))
    assert e["max_abs"] == pytest.approx(np.array([[1.0, 3.0], [2.0, 0.0]]))
    norm01 = np.sqrt(300**2 + 302**2 + 298**2 + 300**2)
    assert e["nrmse"][0, 0] == pytest.approx(np.sqrt(2) / norm01, rel=1e-12)
    assert e["nrmse"][1, 0] == pytest.approx(4.0 / (2 * 310.0), rel=1e-12)
    # the rise: scenario 0 at t=1 is [[4, 6], [2, 4]] above 296 K: ‖·‖ = √72
    assert e["nrmse_rise"][0, 0] == pytest.approx(np.sqrt(2) / np.sqrt(72), rel=1e-12)  # = 1/6
    assert e["nrmse_rise"][0, 1] == pytest.approx(3.0 / (2 * 5.0), rel=1e-12)
    assert e["nrmse_rise"][1, 0] == pytest.approx(4.0 / (2 * 5.0), rel=1e-12)
    assert e["nrmse_rise"][1, 1] == 0.0
    # the rise's nRMSE is far larger than the absolute one: the offset dominates ‖true‖
    assert (e["nrmse_rise"][:, 0] > 20 * e["nrmse"][:, 0]).all()

    rows = {**e}
    at = summarize(rows, grid_values=4, columns=[0, 1])
    assert at["rmse"] == pytest.approx([np.sqrt((2 + 16) / 8), np.sqrt(9 / 8)])
    assert at["max_abs"] == pytest.approx([2.0, 3.0])
    assert at["nrmse_rise"] == pytest.approx([(1 / 6 + 0.4) / 2, (0.3 + 0.0) / 2])
    full = summarize_full(rows, grid_values=4)
    assert full["rmse"] == pytest.approx(np.sqrt(27 / 16)) and full["max_abs"] == 3.0
    assert full["nrmse_rise"] == pytest.approx((1 / 6 + 0.3 + 0.4 + 0.0) / 4)
    assert "nrmse_rise" not in step_errors(pred, true)  # without a reference temperature


def test_persistence_and_horizons():
    u0 = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    p = persistence(u0, 3)
    assert p.shape == (2, 4, 2, 2) and (p == u0[:, None]).all()
    assert horizons_of(50) == [1, 10, 50] and horizons_of(8) == [1, 8] and horizons_of(20, (5, 1, 5, 99)) == [1, 5, 20]
    with pytest.raises(TwinError, match="must agree"):
        step_errors(p, p[:, :2])


# -- the linear baseline --------------------------------------------------------------------------
def _linear_system(n: int, steps: int, seed: int):
    """Trajectories of ``a' = A a + B b + D p + c`` embedded in a 6×6 grid: the state in a
    5-dimensional affine subspace, the forcing in a 3-dimensional one."""
    rng = np.random.default_rng(0)  # the system; ``seed`` draws the scenarios
    q = np.linalg.qr(rng.standard_normal((36, 5)))[0]
    r = np.linalg.qr(rng.standard_normal((36, 3)))[0]
    a_mat = 0.9 * np.linalg.qr(rng.standard_normal((5, 5)))[0]  # spectral radius 0.9
    b_mat, d_mat, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), rng.standard_normal(5)
    u_mean, f_mean = 300 + rng.standard_normal(36), 5 + rng.standard_normal(36)
    g = np.random.default_rng(seed)
    params = g.uniform(-1, 1, (n, 2))
    a = g.standard_normal((n, 5))
    b = g.standard_normal((n, steps, 3))
    u = np.empty((n, steps + 1, 36))
    u[:, 0] = u_mean + a @ q.T
    for t in range(steps):
        a = a @ a_mat.T + b[:, t] @ b_mat.T + params @ d_mat.T + c
        u[:, t + 1] = u_mean + a @ q.T
    f = f_mean + b @ r.T
    return u.reshape(n, steps + 1, 6, 6), f.reshape(n, steps, 6, 6), params


def test_linear_baseline_recovers_a_linear_system_exactly():
    u, f, p = _linear_system(12, 10, seed=1)
    lin = LinearBaseline.fit(u, f, p, rank=5, forcing_rank=3)
    assert lin.rank == 5 and lin.forcing_modes.shape == (36, 3)
    uh, fh, ph = _linear_system(4, 30, seed=2)  # held-out scenarios, rolled out longer than trained
    pred = lin.rollout(uh[:, 0], fh, ph, steps=30)
    assert pred.shape == uh.shape
    assert np.abs(pred - uh).max() < 1e-3  # float32 output of ~300: round-off only
    rise = np.abs(uh - 300).max()
    assert np.abs(pred.astype(np.float64) - uh).max() / rise < 1e-5
    # fitted on fewer states than grid values (the method of snapshots): the same
    few = LinearBaseline.fit(u[:5, :7], f[:5, :6], p[:5], rank=5, forcing_rank=3)  # 35 states < 36 values
    assert np.abs(few.rollout(uh[:, 0], fh, ph, steps=30) - uh).max() < 1e-3
    # a rank below the system's cannot: the test would see a broken fit
    worse = LinearBaseline.fit(u, f, p, rank=4, forcing_rank=3).rollout(uh[:, 0], fh, ph, steps=30)
    assert np.abs(worse - uh).max() > 1e-2
    # and the forcing and params are needed
    blind = LinearBaseline.fit(u, None, None, rank=5).rollout(uh[:, 0], steps=30)
    assert np.abs(blind - uh).max() > 1e-2
    with pytest.raises(TwinError, match="grid"):
        lin.rollout(uh[:, 0, :3], fh, ph, steps=3)


# -- the energy balance ---------------------------------------------------------------------------
def _plate(dt_save: float, dt: float | None, steps: int, n: int = 3):
    cfg = SimulateConfig(grid=(12, 14), steps=steps, dt_save=dt_save, dt=dt)
    plate = Plate(cfg)
    params = np.stack([draw_params(cfg, i) for i in range(n)])
    runs = [plate.run(p) for p in params]
    u = np.stack([r.field for r in runs])
    f = np.stack([r.forcing for r in runs])
    phys = PlatePhysics.from_provenance(provenance(cfg), params.shape[1])
    return u, f, params, phys


def test_energy_balance_closes_exactly_on_single_solver_steps():
    # saved every solver step, the balance with the loss terms at the step's start (forward
    # Euler's own quadrature) holds to round-off: the scheme conserves energy discretely, with
    # the edge flux k d (dy/dx)(T_edge - T_1) the telescoped Laplacian leaves
    u, f, p, phys = _plate(dt_save=1.0, dt=1.0, steps=150)
    terms = energy_terms(u, f, p, phys, quadrature="left")
    scale = np.abs(terms["heat_in"]).max()
    assert scale > 0.5  # watts: the sources are on
    assert np.abs(terms["residual"]).max() < 1e-9 * max(scale, np.abs(terms["edges"]).max())
    assert np.abs(terms["edges"]).max() > 0.05 * scale  # the edge term matters ...
    broken = dict(terms, residual=terms["residual"] + terms["edges"])  # ... leaving it out breaks it
    assert np.nanmax(residual_fraction(broken)) > 0.05
    # so does a forcing off by 10 %
    off = energy_terms(u, 1.1 * f, p, phys, quadrature="left")
    assert np.nanmax(residual_fraction(off)) > 0.02


def test_energy_balance_on_saved_steps_is_second_order():
    # saved every few solver steps, the balance from the saved fields is an approximation: small
    # after the first interval (where the uniform start meets the edges), shrinking ~4x when the
    # saved interval halves
    coarse = energy_terms(*_plate(dt_save=4.0, dt=0.25, steps=40))
    fine = energy_terms(*_plate(dt_save=2.0, dt=0.25, steps=80))
    rc = residual_fraction(coarse)
    assert np.nanmean(rc[:, 5:]) < 2e-2
    # the same physical times: coarse interval t covers fine intervals 2t and 2t + 1
    c_err = np.abs(coarse["residual"][:, 5:]).mean()
    f_err = np.abs(fine["residual"][:, 10:]).mean()
    assert 2.5 < c_err / f_err < 6.0, (c_err, f_err)
    # the plain trapezoid keeps an error of (dt/2) dL/dt, whatever the saved interval
    plain = energy_terms(*_plate(dt_save=2.0, dt=0.25, steps=80), quadrature="trapezoid")
    assert np.abs(plain["residual"][:, 10:]).mean() > 2 * f_err


def test_physics_from_provenance():
    cfg = SimulateConfig(grid=(12, 14))
    prov = provenance(cfg)
    phys = PlatePhysics.from_provenance(prov, len(cfg.param_names))
    dy, dx = cfg.spacing
    assert (phys.dx, phys.dy, phys.thickness, phys.rho_c, phys.faces) == (dx, dy, cfg.thickness, cfg.rho_c, 2)
    assert [phys.k, phys.h, phys.t_inf, phys.t_edge] == [0, 1, 2, 3]
    assert PlatePhysics.from_provenance(None) is None
    with pytest.raises(TwinError, match="lists 29 parameters; the twin reads 3"):
        PlatePhysics.from_provenance(prov, 3)


# -- stability -----------------------------------------------------------------------------------
def test_excursion_is_the_share_of_the_span_width_beyond_it():
    span_low, span_high = np.array([290.0, 290.0, 290.0, 300.0]), np.array([310.0, 310.0, 310.0, 300.0])
    low, high = np.array([295.0, 280.0, 291.0, 300.0]), np.array([305.0, 310.0, 340.0, 300.003])
    got = excursion(low, high, span_low, span_high)
    # inside; 10 K below a 20 K span; 30 K above it; a span of width 0 counts as 1e-6 of 300 K
    assert got == pytest.approx([0.0, 0.5, 1.5, 0.003 / 3e-4])


class _Scale:
    """A field model whose increment is ``c`` times the state channel: u[t+1] = (1 + c) u[t]."""

    def __init__(self, c: float):
        self.c = c

    def __call__(self, x):
        return self.c * x[:, :1]


def _surrogate(c: float):
    import torch

    from twinhpc.preprocess.transform import Field
    from twinhpc.train.rollout import Surrogate

    stats = {"state_mean": 0.0, "state_std": 1.0, "step_mean": 0.0, "step_std": 1.0}
    norm = Field({"state": ("u", (5, 4, 4))}, stats)
    return Surrogate(None, _Scale(c), norm, None, torch.device("cpu"))


def test_extremes_follow_a_rollout_without_keeping_it_and_name_the_step_it_blew_up():
    u0 = np.stack([np.ones((4, 4)), np.zeros((4, 4)), -np.ones((4, 4))]).astype(np.float32)
    # doubling: 2^127 is the last finite float32 power of 2; scenario 1 stays 0
    low, high, diverged = _surrogate(1.0).extremes(u0, steps=200, batch_size=2)
    assert list(diverged) == [128, -1, 128]
    assert (low[0], low[1], high[1], high[2]) == (1.0, 0.0, 0.0, -1.0)
    assert high[0] == pytest.approx(2.0**127) and low[2] == pytest.approx(-(2.0**127))
    # halving: bounded, the extremes are u0's; the same as the kept trajectory's
    s = _surrogate(-0.5)
    low, high, diverged = s.extremes(u0, steps=20)
    traj = s.rollout(u0, steps=20)
    assert list(diverged) == [-1, -1, -1]
    assert np.allclose(low, traj.reshape(3, -1).min(1)) and np.allclose(high, traj.reshape(3, -1).max(1))
