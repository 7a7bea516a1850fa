"""A run's trained twin and the plate it was trained on.

:func:`load_twin` loads a field job's checkpoint (:func:`twinhpc.train.rollout.load_surrogate`)
and finds the simulator's ``[simulate]`` table: from ``--job`` when it has one, else from the
provenance of the dataset the run was trained on (``provenance.simulate.table`` of its
manifest, written by ``twinhpc simulate``). The table gives the plate (grid, sensors, constants),
the parameter names in the order of the params vector, and the trained ranges.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import SimulateConfig, load_job
from ..data.format import MANIFEST, Manifest
from ..errors import TwinError
from ..sim.plate import Plate, param_table


@dataclass
class Twin:
    """A trained surrogate with its plate.

    Attributes
    ----------
    surrogate : :class:`twinhpc.train.rollout.Surrogate`
    cfg : the ``[simulate]`` table of the data it was trained on, with ``device = "cpu"``: the
        twin's commands run the simulator on the machine that runs the twin, whatever the data
        was simulated on.
    params : ``[{"name", "unit", "low", "high"}, ...]``: the params vector, with the trained ranges.
    dataset : the dataset directory the run was trained on (None when not found).
    ranges_from : where the ranges were read (a manifest or a job file).
    """

    surrogate: object
    cfg: SimulateConfig
    params: list[dict]
    dataset: Path | None
    ranges_from: str
    run: Path

    @property
    def names(self) -> list[str]:
        return [p["name"] for p in self.params]

    def plate(self, steps: int | None = None, params: np.ndarray | None = None) -> Plate:
        """The simulator's plate, with ``steps`` saved steps instead of the table's; with
        ``params``, a solver step that is stable for them too (a scenario's ``k`` or ``h`` above
        the trained range lowers the stability limit: the ranges of the table are widened to
        include them and ``dt`` is chosen again, as ``simulate`` chooses it)."""
        table = self.cfg.to_dict()
        if steps is not None:
            table["steps"] = int(steps)
        if params is not None:
            names = self.names
            ranges = dict(table["ranges"])
            widened = False
            for key in ("k", "h"):
                v = float(params[names.index(key)])
                low, high = ranges[key]
                if not low <= v <= high:
                    ranges[key] = [min(low, v), max(high, v)]
                    widened = True
            if widened:
                table["ranges"], table["dt"] = ranges, None
        return Plate(SimulateConfig.from_dict(table))

    def stepper(self) -> Stepper:
        return Stepper(self.surrogate)


class Stepper:
    """One saved step of the surrogate at a time, in physical units (numpy float64 in and out):
    ``u[t+1] = step(u[t], forcing[t], params[t])`` for a batch of states (n, H, W); with a
    forcing window of 3 (``window``) the forcing is ``forcing[t−1], forcing[t], forcing[t+1]``
    (n, 3, H, W)."""

    def __init__(self, surrogate):
        self.s = surrogate
        self.norm, self.task, self.device = surrogate.norm, surrogate.task, surrogate.device
        self.window = self.task.window

    @torch.no_grad()
    def __call__(self, u: np.ndarray, forcing: np.ndarray | None, params: np.ndarray | None) -> np.ndarray:
        norm, dev = self.norm, self.device
        x = torch.from_numpy(norm.normalize("state", np.asarray(u, np.float32))).to(dev)
        f = (
            torch.from_numpy(norm.normalize("forcing", np.asarray(forcing, np.float32))).to(dev)
            if self.task.has_forcing
            else None
        )
        p = (
            torch.from_numpy(norm.normalize("params", np.asarray(params, np.float32).reshape(len(u), -1))).to(dev)
            if self.task.params
            else None
        )
        return self.task.physical(self.task.step(self.s.model, x, f, p)).cpu().numpy()


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` threads inside the block (0: unchanged), its setting restored after."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _manifest_simulate(dataset: Path) -> dict | None:
    path = dataset / MANIFEST
    if not path.is_file():
        return None
    return Manifest.load(dataset).provenance.get("simulate")


def _dataset_candidates(run: Path, name: str) -> list[Path]:
    p = Path(name)
    if p.is_absolute():
        return [p]
    # relative to the working directory, then to the folder above runs/ (where train ran)
    return [p, run.absolute().parent.parent / p]


def load_twin(run, checkpoint=None, job=None, *, device: str = "cpu") -> Twin:
    """The trained twin of the run directory ``run`` (``checkpoint``: last, best or a file).

    Raises
    ------
    TwinError
        Naming the folder: no such folder, no checkpoint in it, a checkpoint of a job that is
        not a field task, a surrogate whose grid or parameters do not match the plate; or no
        ``[simulate]`` table to be found (neither ``job`` nor the run's dataset has one).
    """
    from ..train.rollout import load_surrogate

    run = Path(run)
    if checkpoint in (None, "last", "best") and not run.is_dir():
        raise TwinError(f"{run}: no such run folder (give the run directory of `twinhpc train` on a field job)")
    try:
        surrogate = load_surrogate(run, checkpoint, device=device)
    except TwinError as e:
        raise TwinError(f"{run}: no trained twin: {e}") from None
    dataset = None
    for cand in _dataset_candidates(run, surrogate.job.data.dataset):
        if (cand / MANIFEST).is_file():
            dataset = cand
            break
    table, where = None, None
    if job is not None:
        j = load_job(job)
        if j.simulate is None:
            raise TwinError(f"{job}: no [simulate] table (the twin needs the plate it was trained on)")
        cfg, where = j.simulate, str(job)
        table = param_table(cfg)
    else:
        prov = _manifest_simulate(dataset) if dataset is not None else None
        if prov is None:
            raise TwinError(
                f"{run}: its dataset {surrogate.job.data.dataset!r} (from the checkpoint's job) has no "
                "provenance.simulate, or is not there; give --job JOB.toml with the [simulate] table it was "
                "simulated from"
            )
        cfg = SimulateConfig.from_dict(prov["table"])
        table, where = prov["params"], str(dataset / MANIFEST)
    if tuple(cfg.grid) != tuple(surrogate.grid):
        raise TwinError(
            f"{run}: the twin's grid {tuple(surrogate.grid)} is not the plate's {tuple(cfg.grid)} ({where})"
        )
    if surrogate.task.params not in (0, len(table)):
        raise TwinError(
            f"{run}: the twin takes {surrogate.task.params} parameters, the plate has {len(table)} ({where})"
        )
    cfg = replace(cfg, device="cpu")
    return Twin(surrogate, cfg, [dict(p) for p in table], dataset, where, run)


def read_test_scenario(twin: Twin, index: int, split: str = "test") -> tuple[np.ndarray, str]:
    """The parameters of sample ``index`` of the twin's dataset's ``split`` (float64, P) and a
    description of where they came from."""
    from ..data.shards import open_shard

    if twin.dataset is None:
        raise TwinError(f"--scenario-index: the dataset of {twin.run} is not found (run where it was trained)")
    manifest = Manifest.load(twin.dataset)
    if split not in manifest.split_names:
        raise TwinError(
            f"--scenario-index: {twin.dataset} has no split {split!r} (it has {', '.join(manifest.split_names)})"
        )
    info = manifest.split(split)
    if not 0 <= index < info.count:
        raise TwinError(
            f"--scenario-index {index}: the {split} split of {twin.dataset} has {info.count} scenarios "
            f"(0..{info.count - 1})"
        )
    left = index
    for shard in info.shards:
        if left < shard.count:
            with open_shard(twin.dataset / shard.file) as f:
                return np.asarray(f["params"][left], np.float64), f"{split} scenario {index} of {twin.dataset}"
        left -= shard.count
    raise AssertionError("unreachable")
