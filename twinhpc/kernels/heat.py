"""Explicit time stepping of the 2-D heat equation of a thin plate, for a batch of scenarios.

The equation (docs/twin.md) on an H×W grid of nodes, edges held at ``t_edge``::

    dT/dt = alpha (d²T/dx² + d²T/dy²) - beta (T - t_inf) + sum_s amp_s(t) shape_s(x, y)

is advanced with forward Euler and the 5-point Laplacian. Per scenario ``b``, with
``ax = alpha dt / dx²``, ``ay = alpha dt / dy²`` and ``bd = beta dt``, an interior node becomes::

    T' = T + ax (T[i, j-1] - 2T + T[i, j+1]) + ay (T[i-1, j] - 2T + T[i+1, j]) - bd (T - t_inf)
           + dt sum_s amp[b, n, s] shape[b, s, i, j]

and the edge nodes stay at ``t_edge[b]``. :func:`heat_run` takes ``steps = saves * every`` such
steps and keeps every ``every``-th state; :func:`heat_run_reference` is the same arithmetic in
vectorised numpy, in the same order (the tests compare the two), and :func:`stable_dt` is the
largest step the scheme allows. Scenarios of a batch never mix, so a scenario's result does not
depend on the batch it was run in.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import serial_and_parallel


def stable_dt(alpha: float, beta: float, dx: float, dy: float) -> float:
    """The largest stable (and monotone) step: ``1 / (2 alpha (1/dx² + 1/dy²) + beta)``.

    At that step the weight of a node's own value in its update, ``1 - 2ax - 2ay - bd``, is 0;
    any smaller step keeps every weight non-negative, so the update is a convex combination of
    the neighbours, the ambient and the edge temperature plus the source term (no overshoot, no
    growth: the discrete maximum principle). Von Neumann's condition alone would allow up to
    twice the ``beta`` part; the monotone bound is the one enforced.
    """
    return 1.0 / (2.0 * alpha * (1.0 / dx**2 + 1.0 / dy**2) + beta)


def _check(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every):
    if u0.ndim != 3 or u0.shape[1] < 3 or u0.shape[2] < 3:
        raise ValueError(f"u0: expected a (B, H, W) array with H, W >= 3, got shape {u0.shape}")
    b, h, w = u0.shape
    for name, a in (("ax", ax), ("ay", ay), ("bd", bd), ("t_inf", t_inf), ("t_edge", t_edge)):
        if a.shape != (b,):
            raise ValueError(f"{name}: expected shape ({b},), got {a.shape}")
    if shapes.ndim != 4 or shapes.shape[0] != b or shapes.shape[2:] != (h, w):
        raise ValueError(f"shapes: expected shape ({b}, S, {h}, {w}), got {shapes.shape}")
    if amps.shape != (b, saves * every, shapes.shape[1]):
        raise ValueError(f"amps: expected shape ({b}, {saves * every}, {shapes.shape[1]}), got {amps.shape}")
    if not dt > 0 or saves < 0 or every < 1:
        raise ValueError(f"dt, saves, every: expected dt > 0, saves >= 0, every >= 1, got {dt}, {saves}, {every}")


def _as_f64(*arrays):
    return [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]


def _run(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every, out):
    nb, h, w = u0.shape
    ns = shapes.shape[1]
    for b in prange(nb):
        cur = u0[b].copy()
        new = np.empty_like(cur)
        for i in range(h):
            for j in range(w):
                if i == 0 or j == 0 or i == h - 1 or j == w - 1:
                    cur[i, j] = t_edge[b]
                    new[i, j] = t_edge[b]
        out[b, 0] = cur
        n = 0
        for k in range(saves):
            for _ in range(every):
                for i in range(1, h - 1):
                    for j in range(1, w - 1):
                        c = cur[i, j]
                        src = 0.0
                        for s in range(ns):
                            src += amps[b, n, s] * shapes[b, s, i, j]
                        new[i, j] = (
                            c
                            + ax[b] * (cur[i, j - 1] - 2.0 * c + cur[i, j + 1])
                            + ay[b] * (cur[i - 1, j] - 2.0 * c + cur[i + 1, j])
                            - bd[b] * (c - t_inf[b])
                            + dt * src
                        )
                cur, new = new, cur
                n += 1
            out[b, k + 1] = cur
    return out


_run_serial, _run_parallel = serial_and_parallel(_run)


def heat_run(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every, *, parallel=False):
    """Advance a batch of plates ``saves * every`` explicit steps; every ``every``-th state kept.

    Parameters
    ----------
    u0 : (B, H, W) initial temperatures; the edge nodes are set to ``t_edge`` first.
    ax, ay, bd : (B,) ``alpha dt / dx²``, ``alpha dt / dy²``, ``beta dt`` per scenario.
    t_inf, t_edge : (B,) ambient and edge temperature per scenario.
    shapes : (B, S, H, W) source shapes (the rate of temperature change per unit amplitude).
    amps : (B, saves * every, S) the sources' amplitudes at the start of each step.
    dt : the step (s); saves : states kept after the first; every : steps between two kept.
    parallel : scenarios of the batch on Numba's thread pool (one thread per scenario).

    Returns
    -------
    (B, saves + 1, H, W) float64: the initial state (edges set) and the kept states.

    Raises
    ------
    ValueError
        A shape or value that does not fit, naming the argument.
    """
    u0, ax, ay, bd, t_inf, t_edge, shapes, amps = _as_f64(u0, ax, ay, bd, t_inf, t_edge, shapes, amps)
    _check(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every)
    out = np.empty((u0.shape[0], saves + 1, *u0.shape[1:]), np.float64)
    run = _run_parallel if parallel else _run_serial
    return run(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, float(dt), int(saves), int(every), out)


def heat_run_reference(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every):
    """:func:`heat_run` in vectorised numpy (the whole batch per step), the same arithmetic in
    the same order."""
    u0, ax, ay, bd, t_inf, t_edge, shapes, amps = _as_f64(u0, ax, ay, bd, t_inf, t_edge, shapes, amps)
    _check(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every)
    e = t_edge[:, None, None]
    cur = u0.copy()
    cur[:, 0, :] = cur[:, -1, :] = e[:, 0]
    cur[:, :, 0] = cur[:, :, -1] = e[:, 0]
    out = np.empty((u0.shape[0], saves + 1, *u0.shape[1:]), np.float64)
    out[:, 0] = cur
    a_x, a_y, b_d, t_a = ax[:, None, None], ay[:, None, None], bd[:, None, None], t_inf[:, None, None]
    n = 0
    for k in range(saves):
        for _ in range(every):
            c = cur[:, 1:-1, 1:-1]
            src = np.zeros_like(c)
            for s in range(shapes.shape[1]):
                src += amps[:, n, s, None, None] * shapes[:, s, 1:-1, 1:-1]
            new = cur.copy()
            new[:, 1:-1, 1:-1] = (
                c
                + a_x * (cur[:, 1:-1, :-2] - 2.0 * c + cur[:, 1:-1, 2:])
                + a_y * (cur[:, :-2, 1:-1] - 2.0 * c + cur[:, 2:, 1:-1])
                - b_d * (c - t_a)
                + dt * src
            )
            cur = new
            n += 1
        out[:, k + 1] = cur
    return out
