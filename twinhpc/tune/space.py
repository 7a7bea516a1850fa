"""Search spaces: checking a sweep's parameters against its job, and choosing each trial's values.

::

    check_space(job)                        # every choice and bound validated like --set
    chooser = sampler(job.sweep)            # GridSampler | RandomSampler | TPESampler
    params = chooser.sample(index, history) # the values of trial `index`

A sampler is a function of the trial's index, the sweep's seed and the history (the trials
before it, with their reports), never of hidden state: a sweep loaded from sweep.h5 samples
exactly what the one that saved it would have sampled.

- :class:`GridSampler`: the cartesian product of every parameter's grid points, in the order
  the space lists them, the last key varying fastest; trial ``i`` takes point ``i``.
- :class:`RandomSampler`: trial ``i`` draws from ``numpy.random.default_rng([seed, i])``, each
  parameter in order: the same trials for the same seed, whatever ran or failed before.
- :class:`TPESampler`: Optuna's ``TPESampler``, seeded per trial from ``[seed, i]``, asked once
  per trial on an in-memory study built from the history (completed trials with their final
  metric, paused/stopped/running ones that reported as pruned with their rung metrics, failed
  ones as failed, running ones without reports as running, which Optuna's constant liar
  counts); nothing is stored but sweep.h5, never SQLite or a journal file.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import models
from ..config import Job, JobFileError, Param, SweepConfig, check_structure, override
from ..config.fields import did_you_mean

#: the Optuna release the TPE sampler is tested with
OPTUNA_VERSION = "5.0.0"


# -- checking ---------------------------------------------------------------------------------
def base_job(job: Job) -> Job:
    """``job`` without its ``[sweep]`` table: what each trial's values are applied to."""
    return dataclasses.replace(job, sweep=None)


def check_space(job: Job) -> None:
    """Check every parameter of ``job.sweep`` against the job: each choice, both bounds and every
    grid point of a range is applied to the job like a ``--set`` item and validated; a
    ``model.structure`` key must be a parameter of the model's builder and a value of its type
    (read from the builder's source, without importing torch).

    Raises
    ------
    JobFileError
        Naming ``sweep.space."<key>"``, the value and what is wrong with it.
    """
    if job.sweep is None:
        raise JobFileError("sweep", "missing: the job has no [sweep] table")
    base = base_job(job)
    for p in job.sweep.params:
        parts = p.key.split(".")
        if parts[:2] == ["model", "structure"] and len(parts) == 3:
            _check_structure_key(job.model.name, p)
        for value in p.candidates():
            try:
                override(base, {p.key: value}, where=p.label)
            except JobFileError as e:
                what = e.problem if e.key == p.key else f"{e.key}: {e.problem}"
                raise JobFileError(p.label, f"value {value!r} is not valid: {what}") from None


def _check_structure_key(model: str, p: Param) -> None:
    name = p.key.split(".")[2]
    params = models.signature(model).parameters
    named = {n: q for n, q in params.items() if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)}
    if name not in named:
        if any(q.kind is q.VAR_KEYWORD for q in params.values()):
            return
        raise JobFileError(
            p.label,
            f"model {model!r} has no structure key {name!r}{did_you_mean(name, named)}; "
            f"its keys are: {', '.join(named) or '(none)'}",
        )

    def stub(**kwargs: Any) -> None:
        """A builder with the one parameter, for :func:`check_structure`."""

    stub.__signature__ = inspect.Signature([named[name]])  # type: ignore[attr-defined]
    for value in p.candidates():
        try:
            check_structure(stub, {name: value})
        except JobFileError as e:
            raise JobFileError(p.label, f"value {value!r} is not valid: {e.problem}") from None


# -- sampling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """What a sampler may learn from an earlier trial.

    Attributes
    ----------
    params : its values, by key.
    status : its status (:data:`twinhpc.tune.asha.STATUSES`).
    metrics : epochs → metric at each rung it reported at, in order.
    """

    params: Mapping[str, Any]
    status: str
    metrics: Mapping[int, float]


class Sampler:
    """Chooses the values of trial ``index`` (see the module docstring)."""

    def __init__(self, sweep: SweepConfig, direction: str = "min"):
        self.params = sweep.params
        self.seed = sweep.seed
        self.direction = direction

    def sample(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        raise NotImplementedError


class GridSampler(Sampler):
    """Point ``index`` of the grid (mixed radix: the last key varies fastest)."""

    def sample(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        points = [p.grid_points() for p in self.params]
        size = math.prod(len(x) for x in points)
        if not 0 <= index < size:
            raise IndexError(f"grid point {index} of a grid of {size}")
        out: dict[str, Any] = {}
        for p, values in reversed(list(zip(self.params, points))):
            index, digit = divmod(index, len(values))
            out[p.key] = values[digit]
        return {p.key: out[p.key] for p in self.params}


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.kind == "choice":
        return p.choices[int(rng.integers(len(p.choices)))]
    if p.kind == "uniform":
        return float(rng.uniform(p.low, p.high))
    if p.kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
    low, high = int(p.low), int(p.high)
    if p.log:  # uniform in [log low, log (high + 1)), floored: each integer gets its log-width
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
    return int(rng.integers(low, high + 1))


class RandomSampler(Sampler):
    """Independent draws from ``numpy.random.default_rng([seed, index])``."""

    def sample(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        return {p.key: _draw(p, rng) for p in self.params}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class TPESampler(Sampler):
    """Optuna's TPE on an in-memory study rebuilt from the history for every trial."""

    def __init__(self, sweep: SweepConfig, direction: str = "min"):
        super().__init__(sweep, direction)
        try:
            import optuna
        except ImportError:
            raise JobFileError(
                "sweep.strategy", f'"tpe" needs Optuna, which is not installed (pip install optuna=={OPTUNA_VERSION})'
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        d = optuna.distributions
        self._dists: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "choice":  # by index: a choice may be an array or a table
                self._dists[p.key] = d.CategoricalDistribution(list(range(len(p.choices))))
            elif p.kind == "int":
                self._dists[p.key] = d.IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                self._dists[p.key] = d.FloatDistribution(p.low, p.high, log=p.kind == "loguniform")

    def _encode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for p in self.params:
            value = params[p.key]
            if p.kind == "choice":
                value = next(i for i, c in enumerate(p.choices) if _same(c, value))
            out[p.key] = value
        return out

    def _frozen(self, seen: Observation) -> Any:
        """The history entry as an Optuna ``FrozenTrial``."""
        optuna = self._optuna
        state = optuna.trial.TrialState
        finite = {e: m for e, m in seen.metrics.items() if not math.isnan(m)}
        kwargs: dict[str, Any] = {"params": self._encode(seen.params), "distributions": self._dists}
        if seen.status == "completed" and seen.metrics and not math.isnan(list(seen.metrics.values())[-1]):
            kwargs.update(state=state.COMPLETE, value=list(seen.metrics.values())[-1], intermediate_values=finite)
        elif seen.status == "failed" or (seen.metrics and not finite):
            kwargs.update(state=state.FAIL)
        elif finite:
            kwargs.update(state=state.PRUNED, intermediate_values=finite)
        else:
            kwargs.update(state=state.RUNNING)
        return optuna.trial.create_trial(**kwargs)

    def sample(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        optuna = self._optuna
        seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=optuna.samplers.TPESampler(seed=seed),
            direction="minimize" if self.direction == "min" else "maximize",
        )
        for seen in history:
            study.add_trial(self._frozen(seen))
        asked = study.ask(self._dists).params
        out: dict[str, Any] = {}
        for p in self.params:
            value = asked[p.key]
            if p.kind == "choice":
                out[p.key] = p.choices[int(value)]
            elif p.kind == "int":
                out[p.key] = int(value)
            else:
                out[p.key] = float(value)
        return out


def sampler(sweep: SweepConfig, direction: str = "min") -> Sampler:
    """The sampler of ``sweep.strategy``; ``direction`` (``"min"``/``"max"``) is TPE's."""
    kinds: dict[str, type[Sampler]] = {"grid": GridSampler, "random": RandomSampler, "tpe": TPESampler}
    return kinds[sweep.strategy](sweep, direction)
