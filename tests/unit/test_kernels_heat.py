"""The plate kernel (twinhpc.kernels.heat): against the exact solution of a Fourier mode, against
its numpy reference, and the stability limit."""

from __future__ import annotations

import numpy as np
import pytest

from twinhpc.kernels.heat import heat_run, heat_run_reference, stable_dt

L, ALPHA, BETA, TE = 0.1, 1e-5, 2e-3, 300.0


def fourier_case(n_nodes: int, m: int, n: int, a0: float, src: float, t_end: float, dt_factor: float = 0.2):
    """A plate of n_nodes² nodes, edges at TE = T_inf, starting from TE + a0 sin(mπx/L) sin(nπy/L),
    heated by a source of the same shape with rate ``src`` K/s. Returns (kernel field at t_end,
    mode, dx, dt, steps)."""
    dx = L / (n_nodes - 1)
    steps = int(np.ceil(t_end / (dt_factor * dx**2 / ALPHA)))
    dt = t_end / steps
    xs = np.arange(n_nodes) * dx
    mode = np.sin(m * np.pi * xs / L)[None, :] * np.sin(n * np.pi * xs / L)[:, None]
    u0 = TE + a0 * mode
    ax = ay = ALPHA * dt / dx**2
    one = np.ones(1)
    out = heat_run(
        u0[None],
        ax * one,
        ay * one,
        BETA * dt * one,
        TE * one,
        TE * one,
        (src * mode)[None, None],
        np.ones((1, steps, 1)),
        dt,
        1,
        steps,
    )
    return out[0, -1], mode, dx, dt, steps


def test_fourier_mode_decays_by_the_discrete_factor_to_round_off():
    """Without a source the mode stays a mode, multiplied per step by the scheme's amplification
    factor 1 - dt (4α/dx² sin²(mπdx/2L) + 4α/dy² sin²(nπdy/2L) + β)."""
    m, n, a0 = 2, 3, 5.0
    got, mode, dx, dt, steps = fourier_case(33, m, n, a0, 0.0, 20.0)
    lam = 4 * ALPHA / dx**2 * (np.sin(m * np.pi * dx / (2 * L)) ** 2 + np.sin(n * np.pi * dx / (2 * L)) ** 2) + BETA
    want = TE + a0 * (1 - dt * lam) ** steps * mode
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * a0)


def test_fourier_mode_converges_to_the_exact_solution_at_second_order():
    """With dt ∝ dx², the error against the PDE's exact solution
    T = TE + [a0 e^{-λt} + (s/λ)(1 - e^{-λt})] sin(mπx/L) sin(nπy/L), λ = απ²(m²+n²)/L² + β,
    falls by ~4 per halving of dx (a source of the mode's shape, so the source term is checked too)."""
    m, n, a0, s, t_end = 1, 2, 4.0, 0.05, 30.0
    lam = ALPHA * np.pi**2 * (m * m + n * n) / L**2 + BETA
    amp = a0 * np.exp(-lam * t_end) + s / lam * (1 - np.exp(-lam * t_end))
    errors = []
    for nodes in (9, 17, 33):  # dt = 0.05 dx²/α: the spatial error dominates the Euler one
        got, mode, *_ = fourier_case(nodes, m, n, a0, s, t_end, dt_factor=0.05)
        errors.append(np.abs(got - (TE + amp * mode)).max())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.8 < r < 4.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 3e-3 * amp


def random_batch(b=3, h=9, w=7, s=2, saves=4, every=5, seed=0):
    rng = np.random.default_rng(seed)
    dx, dy = 0.01, 0.012
    alpha, beta = rng.uniform(1e-5, 5e-5, b), rng.uniform(0, 0.02, b)
    dt = 0.8 * min(stable_dt(a, bt, dx, dy) for a, bt in zip(alpha, beta))
    return (
        rng.uniform(290, 320, (b, h, w)),
        alpha * dt / dx**2,
        alpha * dt / dy**2,
        beta * dt,
        rng.uniform(285, 300, b),
        rng.uniform(295, 310, b),
        rng.uniform(0, 0.5, (b, s, h, w)),
        rng.uniform(0, 2, (b, saves * every, s)),
        dt,
        saves,
        every,
    )


@pytest.mark.parametrize("parallel", [False, True])
def test_numba_kernel_equals_the_numpy_reference(parallel):
    args = random_batch()
    got = heat_run(*args, parallel=parallel)
    want = heat_run_reference(*args)
    assert got.shape == (3, 5, 9, 7)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    assert (got[:, :, 0, :] == args[5][:, None, None]).all() and (got[:, :, :, -1] == args[5][:, None, None]).all()


def test_a_scenario_does_not_depend_on_its_batch():
    args = random_batch()
    whole = heat_run(*args)
    alone = heat_run(*[a[1:2] if isinstance(a, np.ndarray) else a for a in args])
    assert np.array_equal(whole[1:2], alone)


def test_stable_dt_keeps_every_weight_non_negative_and_beyond_it_the_scheme_blows_up():
    """At 0.99 × the limit a checkerboard (the fastest mode) decays; at 1.2 × it grows."""
    dx = dy = 0.01
    alpha, beta = 5e-5, 0.01
    limit = stable_dt(alpha, beta, dx, dy)
    assert 1 - 2 * alpha * limit / dx**2 - 2 * alpha * limit / dy**2 - beta * limit == pytest.approx(0, abs=1e-12)
    h = w = 21
    board = 300 + ((np.add.outer(np.arange(h), np.arange(w)) % 2) * 2 - 1) * 1.0
    for factor, grows in ((0.99, False), (1.2, True)):
        dt = factor * limit
        one = np.ones(1)
        out = heat_run(
            board[None],
            alpha * dt / dx**2 * one,
            alpha * dt / dy**2 * one,
            beta * dt * one,
            300 * one,
            300 * one,
            np.zeros((1, 0, h, w)),
            np.zeros((1, 200, 0)),
            dt,
            1,
            200,
        )
        dev = np.abs(out[0, -1] - 300).max()
        assert bool(dev > 10) == grows, (factor, dev)


def test_bad_shapes_are_errors_naming_the_argument():
    args = list(random_batch())
    args[7] = args[7][:, :3]
    with pytest.raises(ValueError, match="^amps: expected shape"):
        heat_run(*args)
