"""Simulate an ensemble of driven, damped oscillators: the physical system the main job twins.

Each ensemble member integrates  x'' + 2*zeta*omega*x' + omega^2*x = amp*cos(drive*t)
with classic RK4 (step ``dt``) from random parameters and initial state, and records the state
(x, v) at every step. Output: one ``.npz`` with

    params      float32 (members, 6)       omega, zeta, amp, drive, x0, v0
    trajectory  float32 (members, steps, 2)  x(t), v(t)
    regime      int64   (members,)          0 underdamped-free, 1 underdamped-driven, 2 overdamped-ish
                                            (zeta > 0.35): a label for quick classification checks
    damping     float32 (members,)          zeta again, as its own array: a regression target

Usage: python jobs/oscillator_ensemble.py --out data/oscillators.npz [--members 20000] [--steps 200]
The file is written to a temporary name and renamed, so a killed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def simulate(members: int, steps: int, dt: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    omega = rng.uniform(0.5, 2.0, members)
    zeta = rng.uniform(0.01, 0.5, members)
    amp = np.where(rng.random(members) < 0.5, 0.0, rng.uniform(0.1, 1.0, members))
    drive = rng.uniform(0.5, 2.0, members)
    state = rng.uniform(-1.0, 1.0, (members, 2))
    params = np.stack([omega, zeta, amp, drive, state[:, 0], state[:, 1]], axis=1)

    def deriv(t, s):
        x, v = s[:, 0], s[:, 1]
        return np.stack([v, amp * np.cos(drive * t) - 2 * zeta * omega * v - omega**2 * x], axis=1)

    traj = np.empty((members, steps, 2), dtype=np.float32)
    t = 0.0
    for k in range(steps):
        traj[:, k] = state
        k1 = deriv(t, state)
        k2 = deriv(t + dt / 2, state + dt / 2 * k1)
        k3 = deriv(t + dt / 2, state + dt / 2 * k2)
        k4 = deriv(t + dt, state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += dt
    regime = np.where(zeta > 0.35, 2, np.where(amp > 0, 1, 0)).astype(np.int64)
    return {
        "params": params.astype(np.float32),
        "trajectory": traj,
        "regime": regime,
        "damping": zeta.astype(np.float32),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--members", type=int, default=20000, help="ensemble members (default 20000)")
    p.add_argument("--steps", type=int, default=200, help="time steps recorded per member (default 200)")
    p.add_argument("--dt", type=float, default=0.05, help="RK4 step (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.members < 1 or a.steps < 1:
        p.error("--members and --steps must be positive")
    data = simulate(a.members, a.steps, a.dt, a.seed)
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".part.npz"
    np.savez(tmp, **data)
    os.replace(tmp, out)
    print(f"wrote {out}: {a.members} members x {a.steps} steps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
