"""The field task (``train.task = "field"``): a model that advances a simulated field by one saved
step, trained on scenarios (docs/surrogates.md).

A sample of the dataset is a scenario: its state trajectory ``u`` (T+1, *grid), its forcing ``f``
(T, *grid) and its parameters ``p`` (P,), normalised by the fitted statistics of
:class:`~twinhpc.preprocess.transform.Field`. One step of the surrogate is :meth:`FieldTask.step`::

    x = [u[t], f[t], p₁ … p_P]                  channels (n, 1 + 1 + P, *grid); p broadcast
    u[t+1] = u[t] + (model(x) · σ_Δ + μ_Δ) / σ_u  in normalised units

With ``train.forcing_window = 3`` the forcing channels are ``f[t−1], f[t], f[t+1]``
(:meth:`FieldTask.context`: the trajectory's first and last frame stand in beyond its ends).

With ``train.prior = "plate"`` (a hybrid twin) ``u[t]`` in that sum is replaced by the plate's
physics advanced one step in closed form from ``u[t]``, ``f[t]`` and ``p``
(:class:`~twinhpc.train.prior.PlatePrior`), and ``σ_Δ``, ``μ_Δ`` are the statistics of what
that step misses: the model learns the correction to the known physics.

The model predicts the *increment* of the state over one step, in units of its training std
(``σ_Δ``, ``μ_Δ``: the fitted std and mean of ``u[t+1] − u[t]``; ``σ_u``: the state's std): the
increment of one saved step is small beside the state, so a model that outputs 0 is persistence
(u[t+1] = u[t]) and learns only the change, with an output of order 1. The nodes the fitted
statistics mark ``held`` (no step of any training scenario changed them: a Dirichlet boundary)
keep their input value, so a rollout cannot drift there.

Training (:meth:`FieldTask.forward`): every start time ``t = 0 … T−k`` of every scenario of the
batch is a chain, all stacked as one batch of ``n·(T−k+1)``; each chain is rolled out ``k =
train.unroll`` steps from the true ``u[t]``, its own predictions fed back (the gradient flows
through the whole unroll), and the loss is the MSE of the normalised predicted states
``u[t+1] … u[t+k]`` against the true ones. ``k = 1`` is one-step training. With ``train.noise``
= s the start state of every chain gets Gaussian noise of std s (normalised units; not on held
nodes) while the targets stay the true states: the model learns to pull a perturbed state back
toward the trajectory, which keeps long rollouts, fed their own errors, from growing them.
With ``train.first_step_weight`` = w the chains that start at ``u[0]`` count w times in the
loss (a weighted mean): a rollout starts with that step, from the plate at rest as its sources
switch on, and it is one chain in ``T`` of the others.

Metrics: the nRMSE of PDEBench, ``‖pred − true‖₂ / ‖true‖₂`` over the grid for each sample and
predicted step, in physical units, averaged over samples and steps; and the RMSE in physical
units. Validation (:func:`infer_field`) is one-step: every ``t`` of every scenario from the true
``u[t]``; its loss is the one-step MSE of the normalised state.
"""

from __future__ import annotations

import numpy as np
import torch

from ..preprocess.transform import Field
from .prior import plate_prior

#: the statistics of one batch that add up over batches and ranks (see :meth:`FieldTask.stats`)
STATS = ("n_steps", "sum_nrmse", "n_values", "sum_sq_err")


class FieldTask:
    """A field task's step, training objective and metrics, from its fitted statistics.

    Parameters
    ----------
    norm : the fitted :class:`~twinhpc.preprocess.transform.Field` (the preprocessed data's
        transform, or the one a checkpoint records).
    unroll : steps of unrolled training (``train.unroll``).
    noise : std of the noise on each chain's start state in training (``train.noise``).
    first_step_weight : weight in the loss of the chains that start at ``u[0]``
        (``train.first_step_weight``).
    """

    def __init__(self, norm: Field, unroll: int = 1, noise: float = 0.0, first_step_weight: float = 1.0):
        self.norm, self.unroll, self.noise = norm, int(unroll), float(noise)
        self.first_step_weight = float(first_step_weight)
        st = norm.stats
        self.state_mean, self.state_std = float(st["state_mean"]), float(st["state_std"])
        self.step_mean, self.step_std = float(st["step_mean"]), float(st["step_std"])
        self.has_forcing = "forcing" in norm.fields
        self.params = norm.params_count
        held = st.get("held")
        self._held = None if held is None else torch.from_numpy(np.asarray(held) > 0)
        self.prior = plate_prior(norm.prior)
        self.window = norm.forcing_window if self.has_forcing else 1
        if self.prior is not None:
            self.forcing_mean, self.forcing_std = float(st["forcing_mean"]), float(st["forcing_std"])
            self._params_mean = torch.from_numpy(np.asarray(st["params_mean"], np.float64))
            self._params_std = torch.from_numpy(np.asarray(st["params_std"], np.float64))

    def held(self, device: torch.device) -> torch.Tensor | None:
        """The held nodes (bool, *grid) on ``device``; None when no node is held."""
        if self._held is not None and self._held.device != device:
            self._held = self._held.to(device)
        return self._held

    # -- one step -----------------------------------------------------------------------------
    def context(self, forcing: torch.Tensor, t: int) -> torch.Tensor:
        """The forcing a step from ``t`` reads, from a trajectory ``forcing`` (n, T, *grid): frame
        ``t`` (n, *grid), or with a window of 3 the frames ``t−1, t, t+1`` (n, 3, *grid), the
        trajectory's first and last frame standing in beyond its ends."""
        if self.window == 1:
            return forcing[:, t]
        last = forcing.shape[1] - 1
        return forcing[:, [max(t - 1, 0), t, min(t + 1, last)]]

    def contexts(self, forcing: torch.Tensor) -> torch.Tensor:
        """:meth:`context` of every ``t`` of the trajectory: (n, T, *grid), or (n, T, 3, *grid)."""
        if self.window == 1:
            return forcing
        before = torch.cat([forcing[:, :1], forcing[:, :-1]], dim=1)
        after = torch.cat([forcing[:, 1:], forcing[:, -1:]], dim=1)
        return torch.stack([before, forcing, after], dim=2)

    def inputs(self, u: torch.Tensor, f: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        """The model input ``(n, channels, *grid)``: the state ``u`` (n, *grid), the forcing ``f``
        when the task has one ((n, *grid), or its window (n, 3, *grid): :meth:`context`), and each
        parameter of ``p`` (n, P) as a constant channel."""
        channels = [u.unsqueeze(1)]
        if self.has_forcing:
            channels.append(f if f.dim() > u.dim() else f.unsqueeze(1))
        if self.params:
            grid = u.shape[1:]
            channels.append(p.reshape(p.shape[0], -1, *([1] * len(grid))).expand(-1, -1, *grid))
        return torch.cat(channels, dim=1)

    def step(self, model, u: torch.Tensor, f: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        """The normalised state one saved step after ``u`` (n, *grid): ``u`` (with a prior: the
        prior's step from ``u``) plus the model's increment, scaled from its units (``σ_Δ``,
        ``μ_Δ``) to the state's."""
        out = model(self.inputs(u, f, p))[:, 0].float()
        base = u if self.prior is None else self.prior_step(u, f, p)
        new = base + (out * self.step_std + self.step_mean) / self.state_std
        held = self.held(u.device)
        return new if held is None else torch.where(held, u, new)

    def prior_step(self, u: torch.Tensor, f: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The prior's step from the normalised ``u`` with the normalised forcing ``f`` and params
        ``p``, normalised: the physics in physical units, between the two scalings."""
        if self._params_mean.device != p.device:  # moved once, not every step
            self._params_mean, self._params_std = self._params_mean.to(p.device), self._params_std.to(p.device)
        pm, ps = self._params_mean, self._params_std
        if f.dim() > u.dim():  # a window: the step's own frame is the middle one
            f = f[:, f.shape[1] // 2]
        phys = self.prior(
            u * self.state_std + self.state_mean,
            f * self.forcing_std + self.forcing_mean,
            p.double() * ps + pm,
        )
        return (phys - self.state_mean) / self.state_std

    # -- training -----------------------------------------------------------------------------
    def chains(self, x: dict[str, torch.Tensor], k: int):
        """The start states, the forcing and params per chain, and the true states of the ``k``
        steps after each start: every start ``t = 0 … T−k`` of every scenario, stacked
        scenario-major. Returns ``(u0 (m, *grid), forcing (m, k, *grid) or None, params (m, P) or
        None, true (m, k, *grid))`` with ``m = n·(T−k+1)``."""
        state = x["state"]
        n, frames = state.shape[:2]
        starts = frames - k  # T + 1 − k
        window = state.unfold(1, k + 1, 1)  # (n, starts, *grid, k+1)
        window = window.movedim(-1, 2).reshape(n * starts, k + 1, *state.shape[2:])
        forcing = None
        if self.has_forcing:
            ctx = self.contexts(x["forcing"])  # (n, T, [3,] *grid)
            forcing = ctx.unfold(1, k, 1).movedim(-1, 2).reshape(n * starts, k, *ctx.shape[2:])
        params = x["params"].repeat_interleave(starts, dim=0) if self.params else None
        return window[:, 0], forcing, params, window[:, 1:]

    def forward(self, model, x: dict[str, torch.Tensor], k: int | None = None):
        """``(pred, true, loss)``: the ``k`` (default ``unroll``) predicted normalised states of
        every chain ``(m, k, *grid)``, the true ones, and the mean squared error between them."""
        k = self.unroll if k is None else k
        u, forcing, params, true = self.chains(x, k)
        if self.noise > 0 and model.training:
            jitter = torch.randn_like(u) * self.noise
            held = self.held(u.device)
            u = u + (jitter if held is None else jitter.masked_fill(held, 0.0))
        preds = []
        for j in range(k):
            u = self.step(model, u, forcing[:, j] if forcing is not None else None, params)
            preds.append(u)
        pred = torch.stack(preds, dim=1)
        err = (pred - true) ** 2
        if self.first_step_weight == 1.0:
            return pred, true, err.mean()
        starts = x["state"].shape[1] - k  # chains per scenario, scenario-major: start 0 first
        weight = torch.ones(err.shape[0], device=err.device, dtype=err.dtype)
        weight[::starts] = self.first_step_weight
        per_chain = err.reshape(err.shape[0], -1).mean(dim=1)
        return pred, true, (weight * per_chain).sum() / weight.sum()

    # -- metrics ------------------------------------------------------------------------------
    def physical(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised states in physical units (float64)."""
        return u.double() * self.state_std + self.state_mean

    def per_step(self, pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per predicted state (every axis but the grid's): the nRMSE ``‖pred − true‖₂ / ‖true‖₂``
        and the sum of squared errors, both in physical units (float64)."""
        grid = tuple(range(pred.dim() - len(self.norm.grid), pred.dim()))
        err = (pred.double() - true.double()) * self.state_std
        sq = (err * err).sum(dim=grid)
        norm = self.physical(true).square().sum(dim=grid).sqrt()
        return sq.sqrt() / norm, sq

    def stats(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Sufficient statistics of a batch of predictions, float64 that add up over batches and
        ranks (:data:`STATS`): predicted states, Σ nRMSE, grid values, Σ squared error."""
        with torch.no_grad():
            nrmse, sq = self.per_step(pred, true)
            values = float(np.prod(self.norm.grid)) * nrmse.numel()
            return torch.stack(
                [
                    torch.tensor(float(nrmse.numel()), dtype=torch.float64, device=pred.device),
                    nrmse.sum(),
                    torch.tensor(values, dtype=torch.float64, device=pred.device),
                    sq.sum(),
                ]
            )


def metric_from_field_stats(name: str, stats: np.ndarray) -> float:
    """``nrmse`` or ``rmse`` of the batches whose :meth:`FieldTask.stats` were summed into
    ``stats``; NaN when none was seen."""
    n_steps, sum_nrmse, n_values, sum_sq = (float(v) for v in stats)
    if n_steps == 0:
        return float("nan")
    return sum_nrmse / n_steps if name == "nrmse" else float(np.sqrt(sum_sq / n_values))


@torch.no_grad()
def infer_field(model, loader, transform, task: FieldTask, *, bf16: bool = False) -> dict[str, np.ndarray]:
    """This rank's one-step errors over its share of a split (the loader's epoch 0), per sample
    (scenario): ``index``, ``loss`` (the MSE of the normalised state over its T steps),
    ``nrmse`` (the mean over its steps), ``sq_err`` (Σ squared physical error) and ``values``
    (grid values predicted). The model's predictions are not kept: a split of trajectories can
    be far larger than its errors."""
    from .device import to_device
    from .evaluate import EVAL_EPOCH, autocast

    was_training = model.training
    model.eval()
    loader.set_epoch(EVAL_EPOCH)
    order = loader.indices(EVAL_EPOCH)
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"loss": [], "nrmse": [], "sq_err": [], "values": []}
    for batch in loader:
        x, _ = transform(batch)
        x = to_device(x, device)
        n = x["state"].shape[0]
        with autocast(bf16, device):
            pred, true, _ = task.forward(model, x, k=1)
        pred, true = pred.reshape(n, -1, *task.norm.grid), true.reshape(n, -1, *task.norm.grid)
        nrmse, sq = task.per_step(pred, true)
        grid = tuple(range(2, pred.dim()))
        parts["loss"].append(((pred.float() - true) ** 2).mean(dim=(1, *grid)).cpu().numpy().astype(np.float32))
        parts["nrmse"].append(nrmse.mean(dim=1).cpu().numpy())
        parts["sq_err"].append(sq.sum(dim=1).cpu().numpy())
        parts["values"].append(np.full(n, float(np.prod(true.shape[1:]))))
    model.train(was_training)
    result = {k: np.concatenate(v) for k, v in parts.items() if v}
    result["index"] = order[: len(result.get("loss", ()))].astype(np.int64)
    return result


def field_report(rows: dict[str, np.ndarray]) -> dict:
    """The one-step report of merged :func:`infer_field` rows: ``task="field"``, ``n``
    (scenarios), ``mse`` (of the normalised state), ``nrmse`` and ``rmse`` (physical units)."""
    return {
        "task": "field",
        "n": int(len(rows["index"])),
        "mse": float(rows["loss"].astype(np.float64).mean()),
        "nrmse": float(rows["nrmse"].mean()),
        "rmse": float(np.sqrt(rows["sq_err"].sum() / rows["values"].sum())),
    }
