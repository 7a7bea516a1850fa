"""Autoregressive rollout of a trained field surrogate (``train.task = "field"``).

::

    from twinhpc.train.rollout import load_surrogate, rollout

    u = rollout("runs/plate_twin", u0, forcing, params)          # (n, T+1, *grid), physical units
    twin = load_surrogate("runs/plate_twin", checkpoint="best")   # load once, roll out many times
    u = twin.rollout(u0, forcing, params, batch_size=32)

A checkpoint of a field job records the fitted normalisation of its data and the model's
data-given structure (``extra.field``, written by the training run) besides the job and the
weights, so a checkpoint alone rolls out: no preprocessed dataset is opened. The rollout starts
from the given ``u[0]`` and applies the surrogate's one-step map
(:meth:`~twinhpc.train.field.FieldTask.step`) ``T`` times, each time on its own prediction, for
a batch of scenarios at once; inputs and outputs are in physical units (the dataset's), the
model runs in normalised units. One process, no collectives: rank-parallel callers give each
rank its own scenarios.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..config import Job
from ..errors import TwinError
from ..io.checkpoint import load_checkpoint, read_info
from ..preprocess.transform import Field
from .field import FieldTask


class Surrogate:
    """A trained field surrogate, loaded from a checkpoint (:func:`load_surrogate`).

    Attributes
    ----------
    job : Job
        The job the checkpoint was trained with.
    model : torch.nn.Module
        The model, in eval mode on ``device``.
    norm : Field
        The fitted normalisation (and the field names, the grid, T and P of the training data).
    task : FieldTask
        The one-step map.
    checkpoint : Path
        The checkpoint file.
    """

    def __init__(self, job: Job, model: torch.nn.Module, norm: Field, checkpoint: Path, device: torch.device):
        self.job, self.model, self.norm, self.checkpoint, self.device = job, model, norm, checkpoint, device
        self.task = FieldTask(norm)

    @property
    def grid(self) -> tuple[int, ...]:
        """The spatial grid the surrogate was trained on."""
        return self.norm.grid

    def _check(self, u0: np.ndarray, forcing, params, steps: int | None) -> int:
        """The number of steps to roll out, after checking the inputs' shapes against the training
        data's (a :class:`TwinError` naming the argument otherwise)."""
        n = len(u0)
        if u0.shape[1:] != self.grid:
            raise TwinError(f"rollout: u0 has shape {u0.shape}; the surrogate's grid is {self.grid}: (n, *grid)")
        if self.task.has_forcing:
            if forcing is None:
                raise TwinError(
                    f"rollout: the surrogate was trained with forcing {self.norm.fields['forcing'][0]!r}; give forcing"
                )
            if forcing.ndim != 2 + len(self.grid) or forcing.shape[0] != n or forcing.shape[2:] != self.grid:
                raise TwinError(f"rollout: forcing has shape {forcing.shape}; expected (n={n}, steps, *{self.grid})")
            if steps is not None and steps > forcing.shape[1]:
                raise TwinError(f"rollout: {steps} steps asked, but the forcing covers {forcing.shape[1]}")
            steps = forcing.shape[1] if steps is None else steps
        elif forcing is not None:
            raise TwinError("rollout: the surrogate was trained without forcing; give none")
        if self.task.params:
            if params is None or params.reshape(len(params), -1).shape != (n, self.task.params):
                got = None if params is None else params.shape
                raise TwinError(f"rollout: params has shape {got}; expected (n={n}, P={self.task.params})")
        elif params is not None:
            raise TwinError("rollout: the surrogate was trained without parameters; give none")
        if steps is None:
            raise TwinError("rollout: give steps (the surrogate has no forcing to count them)")
        return int(steps)

    def _batches(self, u0: np.ndarray, forcing: np.ndarray | None, params: np.ndarray | None, batch_size: int):
        """``(lo, hi, u, f, p)`` per batch of ``batch_size`` scenarios: their rows ``lo:hi`` of
        ``u0``, ``forcing`` and ``params`` (checked arrays), normalised, as tensors on the device
        (``None`` for a role the surrogate does not read)."""
        norm, device, size = self.norm, self.device, max(1, int(batch_size))

        def tensor(role: str, values: np.ndarray | None) -> torch.Tensor | None:
            return None if values is None else torch.from_numpy(norm.normalize(role, values)).to(device)

        for lo in range(0, len(u0), size):
            hi = min(lo + size, len(u0))
            p = None if params is None else params[lo:hi].reshape(hi - lo, -1)
            f = None if forcing is None else forcing[lo:hi]
            yield lo, hi, tensor("state", u0[lo:hi]), tensor("forcing", f), tensor("params", p)

    @torch.no_grad()
    def rollout(
        self,
        u0: np.ndarray,
        forcing: np.ndarray | None = None,
        params: np.ndarray | None = None,
        *,
        steps: int | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """The predicted trajectories of ``n`` scenarios, physical units.

        Parameters
        ----------
        u0 : the initial states (n, *grid).
        forcing : (n, ≥ steps, *grid), forcing[:, t] acting from t to t+1; required when the
            surrogate was trained with forcing, refused otherwise.
        params : (n, P) (or (n,) for P = 1); the same rule.
        steps : saved steps to predict (default: as many as the forcing covers).
        batch_size : scenarios advanced together.

        Returns
        -------
        numpy.ndarray
            float32 (n, steps + 1, *grid); row 0 is ``u0``.
        """
        u0 = np.asarray(u0)
        forcing = None if forcing is None else np.asarray(forcing)
        params = None if params is None else np.asarray(params)
        steps = self._check(u0, forcing, params, steps)
        out = np.empty((len(u0), steps + 1, *self.grid), np.float32)
        out[:, 0] = u0
        # the forcing up to one frame past the last step: a window of 3 reads it
        window = None if forcing is None else forcing[:, : steps + 1]
        for lo, hi, u, f, p in self._batches(u0, window, params, batch_size):
            for t in range(steps):
                u = self.task.step(self.model, u, self.task.context(f, t) if f is not None else None, p)
                out[lo:hi, t + 1] = self.task.physical(u).cpu().numpy()
        return out

    @torch.no_grad()
    def extremes(
        self,
        u0: np.ndarray,
        forcing: np.ndarray | None = None,
        params: np.ndarray | None = None,
        *,
        steps: int,
        batch_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The smallest and the largest value of each scenario's rollout of ``steps`` saved steps
        from ``u0`` (n, *grid) with one forcing frame held over every step (``forcing`` (n,
        *grid)), without keeping the trajectories: ``(low (n,), high (n,), diverged_at (n,))``,
        physical units (float64); ``diverged_at`` is the first step whose state is not finite
        (its scenario then stops there, low/high over the steps before), −1 for none."""
        u0 = np.asarray(u0)
        held = None if forcing is None else np.asarray(forcing)[:, None]
        params = None if params is None else np.asarray(params)
        self._check(u0, held, params, 1)
        n = len(u0)
        low, high = u0.reshape(n, -1).min(1).astype(np.float64), u0.reshape(n, -1).max(1).astype(np.float64)
        diverged = np.full(n, -1, np.int64)
        frame = None if held is None else held[:, 0]
        for lo, hi, u, f, p in self._batches(u0, frame, params, batch_size):
            if f is not None and self.task.window > 1:  # the frame held before and after, too
                f = f.unsqueeze(1).expand(-1, self.task.window, *f.shape[1:])
            live = np.arange(lo, hi)
            for t in range(1, int(steps) + 1):
                u = self.task.step(self.model, u, f, p)
                x = self.task.physical(u).flatten(1)
                finite = torch.isfinite(x).all(1).cpu().numpy()
                if not finite.all():
                    diverged[live[~finite]] = t
                    keep = torch.from_numpy(finite).to(u.device)
                    live, u, x = live[finite], u[keep], x[keep]
                    f = None if f is None else f[keep]
                    p = None if p is None else p[keep]
                    if not len(live):
                        break
                low[live] = np.minimum(low[live], x.min(1).values.cpu().numpy())
                high[live] = np.maximum(high[live], x.max(1).values.cpu().numpy())
        return low, high, diverged


def load_surrogate(run=None, checkpoint=None, *, device: str = "cpu") -> Surrogate:
    """The surrogate of a field job's checkpoint.

    Parameters
    ----------
    run : the run directory.
    checkpoint : ``"last"`` (default) or ``"best"`` checkpoint of ``run``, or a checkpoint file.
    device : ``cpu``, ``cuda`` or ``auto`` (as ``train.device``).

    Raises
    ------
    TwinError
        No such run or checkpoint, or a checkpoint of a job that is not a field task (naming it).
    """
    from .device import resolve_device
    from .model import build_model
    from .predict import find_checkpoint

    path, _ = find_checkpoint(run, checkpoint)
    info = read_info(path)
    record = info["extra"].get("field")
    if record is None or info.get("config") is None:
        raise TwinError(f"{path}: not a checkpoint of a field job (train.task = 'field'); it cannot be rolled out")
    job = Job.from_json(info["config"], where=str(path))
    norm = Field.from_state({k: np.asarray(v) for k, v in record["stats"].items()}, record["settings"])
    model = build_model(job, SimpleNamespace(model_defaults=record["model_defaults"], dataset_dir=path))
    load_checkpoint(path, model, restore_rng=False)
    where = resolve_device(device, where="rollout device")
    return Surrogate(job, model.to(where).eval(), norm, path, where)


def rollout(
    run,
    u0: np.ndarray,
    forcing: np.ndarray | None = None,
    params: np.ndarray | None = None,
    *,
    checkpoint=None,
    steps: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """:meth:`Surrogate.rollout` of the run's checkpoint (``checkpoint``: ``last``, ``best`` or a
    file); float32 (n, steps + 1, *grid) in physical units."""
    twin = load_surrogate(run, checkpoint, device=device)
    return twin.rollout(u0, forcing, params, steps=steps, batch_size=batch_size)
