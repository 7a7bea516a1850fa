"""The table ``[sweep]``: a search space over job keys, the search strategy, the budget and the
early-stopping scheduler (ASHA) of a hyper-parameter sweep; a frozen dataclass (see :mod:`.fields`).

``[sweep.space]`` maps a dotted job key to its distribution, one sub-table per key::

    [sweep.space."optim.lr"]
    loguniform = [1e-4, 1e-1]

    [sweep.space."model.structure.hidden"]
    int = [32, 256]
    log = true

:func:`parse_space` reads it into :class:`Param` objects. The table checks what it can alone
(the form of each distribution, the strategy against the space, the budget); whether each key
names a key of the job, and the metric and epochs against ``[train]``, are checked by
:class:`~twinhpc.config.schema.Job`; whether each value is valid for its key (and model
structure keys against the model's builder) by :func:`twinhpc.tune.space.check_space`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .fields import JobFileError, Table, did_you_mean, key, toml_type_name
from .training import EarlyStopping

#: the distributions of a searched key (exactly one per key)
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
#: every key a parameter's sub-table may hold
SPEC_KEYS = (*DISTRIBUTIONS, "log", "grid")
#: job keys a sweep sets itself and so cannot search
RESERVED = {
    "train.epochs": "the epochs are the sweep's resource: set sweep.max_epochs (and sweep.min_epochs)",
    "train.out": "the sweep puts each trial's run in SWEEP/trials/<id>",
}


@dataclass(frozen=True)
class Param:
    """One searched key and its distribution.

    Attributes
    ----------
    key : the dotted job key, e.g. ``"optim.lr"``.
    kind : ``"choice"``, ``"uniform"``, ``"loguniform"`` or ``"int"``.
    choices : the values of a ``choice`` (any TOML values), else empty.
    low, high : the bounds of a range (inclusive), else 0.
    log : an ``int`` range sampled uniformly in log space.
    grid : explicit points of a range for strategy ``grid``; ``None`` if not given.
    """

    key: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    grid: tuple[Any, ...] | None = None

    @property
    def label(self) -> str:
        """How errors name the parameter: ``sweep.space."optim.lr"``."""
        return space_label(self.key)

    def grid_points(self) -> tuple[Any, ...]:
        """The values strategy ``grid`` takes: the choices, the ``grid`` points, or every integer
        of an ``int`` range.

        Raises
        ------
        JobFileError
            For a ``uniform``/``loguniform`` range without ``grid`` points, naming the key.
        """
        if self.kind == "choice":
            return self.choices
        if self.grid is not None:
            return self.grid
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1))
        raise JobFileError(
            self.label,
            f'a {self.kind} range has no grid: give its points with grid = [...] for strategy "grid"',
        )

    def candidates(self) -> tuple[Any, ...]:
        """Values to validate against the job: the choices, or the bounds and any grid points."""
        if self.kind == "choice":
            return self.choices
        bounds = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return bounds + (self.grid or ())

    @property
    def column_type(self) -> str:
        """The type of the parameter's column in sweep.h5: ``float``, ``int``, ``bool``, ``str``,
        or ``json`` (a choice of mixed types, integers and numbers included, or of arrays and
        tables, stored as JSON text so that each value reads back as it was written)."""
        if self.kind in ("uniform", "loguniform"):
            return "float"
        if self.kind == "int":
            return "int"
        kinds = {_scalar_kind(v) for v in self.choices}
        if len(kinds) == 1 and (only := next(iter(kinds))) is not None:
            return only
        return "json"  # mixed (even 0 and 0.5: JSON keeps each value's type), arrays, tables

    def to_dict(self) -> dict[str, Any]:
        """The parameter's sub-table as a job file writes it."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            out["log"] = True
        if self.grid is not None:
            out["grid"] = list(self.grid)
        return out


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


def space_label(dotted: str) -> str:
    """``sweep.space."optim.lr"``: a searched key as errors name it (the form of its TOML header)."""
    return f'sweep.space."{dotted}"'


def _number(label: str, name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        what = "an integer" if integer else "a number"
        raise JobFileError(f"{label}.{name}", f"must be {what}, got {toml_type_name(value)} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise JobFileError(f"{label}.{name}", f"must be finite, got {value!r}")
    return value


def _param(dotted: str, spec: Mapping[str, Any]) -> Param:
    label = space_label(dotted)
    for name in spec:
        if name not in SPEC_KEYS:
            raise JobFileError(
                f"{label}.{name}",
                f"unknown key{did_you_mean(name, SPEC_KEYS)}; a parameter has: {', '.join(SPEC_KEYS)}",
            )
    kinds = [k for k in DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        problem = "has none" if not kinds else f"has {len(kinds)} ({', '.join(kinds)})"
        raise JobFileError(label, f"needs exactly one distribution of {', '.join(DISTRIBUTIONS)}; {problem}")
    kind = kinds[0]
    value = spec[kind]
    if kind == "choice":
        for extra in ("log", "grid"):
            if extra in spec:
                raise JobFileError(f"{label}.{extra}", "applies to ranges only, not to choice")
        if not isinstance(value, list) or not value:
            raise JobFileError(f"{label}.choice", f"must be a non-empty array, got {toml_type_name(value)} {value!r}")
        seen: set[str] = set()
        for v in value:
            text = json.dumps(v, sort_keys=True)
            if text in seen:
                raise JobFileError(f"{label}.choice", f"lists {v!r} twice")
            seen.add(text)
        return Param(dotted, kind, choices=tuple(value))
    integer = kind == "int"
    if not isinstance(value, list) or len(value) != 2:
        raise JobFileError(f"{label}.{kind}", f"must be an array [low, high], got {toml_type_name(value)} {value!r}")
    low, high = (_number(label, kind, v, integer) for v in value)
    if low > high or (low == high and not integer):
        raise JobFileError(f"{label}.{kind}", f"empty range [{low!r}, {high!r}]: low must be below high")
    if kind == "loguniform" and low <= 0:
        raise JobFileError(f"{label}.loguniform", f"bounds must be > 0 (a log scale), got [{low!r}, {high!r}]")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise JobFileError(f"{label}.log", f"must be a boolean, got {toml_type_name(log)} {log!r}")
    if log and kind != "int":
        raise JobFileError(f"{label}.log", f"applies to int ranges only (use loguniform instead of {kind})")
    if log and low < 1:
        raise JobFileError(f"{label}.int", f"a log-scale int range must start at ≥ 1, got [{low!r}, {high!r}]")
    grid: tuple[Any, ...] | None = None
    if "grid" in spec:
        points = spec["grid"]
        if not isinstance(points, list) or not points:
            raise JobFileError(f"{label}.grid", f"must be a non-empty array, got {toml_type_name(points)} {points!r}")
        checked = []
        for p in points:
            p = _number(label, "grid", p, integer)
            if not low <= p <= high:
                raise JobFileError(f"{label}.grid", f"point {p!r} is outside the range [{low!r}, {high!r}]")
            checked.append(p if integer else float(p))
        if len(set(checked)) != len(checked):
            raise JobFileError(f"{label}.grid", "lists a point twice")
        grid = tuple(checked)
    if integer:
        return Param(dotted, kind, low=int(low), high=int(high), log=log, grid=grid)
    return Param(dotted, kind, low=float(low), high=float(high), grid=grid)


def _flatten(table: Mapping[str, Any], prefix: str, out: dict[str, Mapping[str, Any]]) -> None:
    """Sub-tables holding a distribution are parameters; others are folders of dotted keys
    (``[sweep.space.optim.lr]`` is ``[sweep.space."optim.lr"]``)."""
    for name, value in table.items():
        dotted = f"{prefix}{name}"
        if not isinstance(value, Mapping):
            raise JobFileError(
                space_label(dotted),
                f"must be a table with a distribution ({', '.join(DISTRIBUTIONS)}), got {toml_type_name(value)} "
                f'{value!r}; e.g. [sweep.space."optim.lr"] loguniform = [1e-4, 1e-1]',
            )
        if any(k in SPEC_KEYS or not isinstance(v, Mapping) for k, v in value.items()):
            if dotted in out:
                raise JobFileError(space_label(dotted), "is declared twice")
            out[dotted] = value
        elif not value:
            raise JobFileError(space_label(dotted), f"has no distribution ({', '.join(DISTRIBUTIONS)})")
        else:
            _flatten(value, dotted + ".", out)


def parse_space(space: Mapping[str, Any]) -> tuple[Param, ...]:
    """The parameters of ``[sweep.space]``, in the order written.

    Raises
    ------
    JobFileError
        Naming ``sweep.space."<key>"`` (and the sub-key): not a table, no or several
        distributions, an unknown sub-key, an empty range, a ``loguniform`` bound ≤ 0, grid
        points outside the range, a duplicate choice.
    """
    flat: dict[str, Mapping[str, Any]] = {}
    _flatten(space, "", flat)
    return tuple(_param(dotted, spec) for dotted, spec in flat.items())


@dataclass(frozen=True)
class SweepConfig(Table):
    """``[sweep]``: a hyper-parameter sweep over this job (`twinhpc tune`): space, strategy, budget, ASHA."""

    TABLE: ClassVar[str] = "sweep"
    strategy: str = key(
        "random",
        "How trials' parameters are chosen: `grid` (the cartesian product of the choices and grid points, "
        "in the order written, the last key varying fastest), `random` (independent draws from the seed), "
        "`tpe` (Optuna's Tree-structured Parzen Estimator, learning from the finished and stopped trials).",
        choices=("grid", "random", "tpe"),
    )
    trials: int | None = key(
        None,
        "Trials (configurations) the sweep starts in all; with `grid`, at most the grid's size "
        "(the first `trials` points). Required for `random` and `tpe`.",
        ge=1,
        default_doc="the grid's size (`grid`)",
    )
    concurrent: int = key(1, "Trials running at the same time (workers).", ge=1)
    metric: str | None = key(
        None,
        "Validation metric the sweep optimises: `val_loss` or `val_<train metric>`.",
        default_doc="`train.early_stopping.metric`",
    )
    direction: str = key(
        "auto",
        "`min`: smaller is better; `max`: larger is better; `auto`: `min` for losses, MAE and RMSE, `max` otherwise.",
        choices=("auto", "min", "max"),
    )
    seed: int = key(0, "Seed of the random and TPE draws: the same seed gives the same trials.", ge=0)
    scheduler: str = key(
        "asha",
        "`asha`: asynchronous successive halving, trials stop at rungs of `min_epochs`·`reduction_factor`^k "
        "epochs and only the best continue (from their checkpoint); `none`: every trial trains `max_epochs`.",
        choices=("asha", "none"),
    )
    min_epochs: int = key(1, "Epochs of the first rung (ASHA's minimum resource).", ge=1)
    reduction_factor: int = key(
        3, "ASHA's η: the top 1/η of the trials at a rung continue to the next, η times longer.", ge=2
    )
    max_epochs: int | None = key(
        None,
        "Epochs of a trial that reaches the last rung (ASHA's maximum resource).",
        ge=1,
        default_doc="`train.epochs`",
    )
    space: dict[str, Any] = key(
        {},
        '`[sweep.space."<job key>"]`: one sub-table per searched key, holding its distribution (see below).',
    )

    #: the form of a parameter's sub-table, for the reference
    REFERENCE_NOTES: ClassVar[str] = """\
Each searched key is a sub-table `[sweep.space."<table>.<key>"]` (quoted: the key has dots;
`[sweep.space.optim.lr]` means the same) with exactly one distribution:

| key | value | meaning |
|---|---|---|
| `choice` | array of values | one of the values (any TOML value: strings, numbers, arrays, tables) |
| `uniform` | `[low, high]` numbers | a number drawn uniformly between low and high (low < high) |
| `loguniform` | `[low, high]` numbers > 0 | uniform in log space (learning rates, weight decay) |
| `int` | `[low, high]` integers | an integer from low to high, both included |
| `log` | boolean | with `int`: draw uniformly in log space (layer widths) |
| `grid` | array of values in range | with a range: the points of strategy `grid` (default for `int`: every integer) |

Any key of the job can be searched, including free sub-tables (`model.structure.hidden`,
checked against the model builder's signature), except `train.epochs` (ASHA's resource: set
`sweep.max_epochs`), `train.out` (each trial runs in `SWEEP/trials/<id>`) and `sweep.*`. Each
trial's job is the job with its values applied like `--set` items, and is validated the same
way; creating the sweep (`twinhpc.tune.Sweep.create`) checks every choice and both bounds of
every range, and `model.structure` keys against the builder, before the first trial.
See [tune.md](tune.md).

```toml
[sweep]
strategy = "random"
trials = 20
concurrent = 2
min_epochs = 1
reduction_factor = 3
max_epochs = 9

[sweep.space."optim.lr"]
loguniform = [1e-4, 1e-1]

[sweep.space."optim.schedule"]
choice = ["cosine", "step"]

[sweep.space."train.dropout"]
uniform = [0.0, 0.5]
grid = [0.0, 0.25, 0.5]          # used by strategy = "grid" only

[sweep.space."model.structure.hidden"]
int = [32, 256]
log = true
```
"""

    def __post_init__(self) -> None:
        super().__post_init__()
        # the space as one flat table of dotted keys, each sub-table in its normal form
        object.__setattr__(self, "space", {p.key: p.to_dict() for p in self.params})

    @property
    def params(self) -> tuple[Param, ...]:
        """The searched keys and their distributions (:func:`parse_space`)."""
        return parse_space(self.space)

    def grid_size(self) -> int:
        """Points of the cartesian product of every parameter's :meth:`Param.grid_points`."""
        return math.prod(len(p.grid_points()) for p in self.params)

    @property
    def budget(self) -> int:
        """Trials started in all: ``trials``, or the grid's size."""
        return self.trials if self.trials is not None else self.grid_size()

    def check(self) -> None:
        params = parse_space(self.space)
        if not params:
            raise JobFileError(
                "sweep.space",
                'is empty: declare the searched keys, e.g. [sweep.space."optim.lr"] loguniform = [1e-4, 1e-1]',
            )
        for p in params:
            if p.key.split(".")[0] == "sweep":
                raise JobFileError(p.label, "a sweep cannot search its own settings")
            if p.key in RESERVED:
                raise JobFileError(p.label, f"cannot be searched: {RESERVED[p.key]}")
        if self.strategy == "grid":
            size = math.prod(len(p.grid_points()) for p in params)
            if self.trials is not None and self.trials > size:
                raise JobFileError("sweep.trials", f"{self.trials} is more than the grid's {size} points")
        elif self.trials is None:
            raise JobFileError("sweep.trials", f"missing (required with strategy {self.strategy!r})")

    def max_epochs_of(self, train_epochs: int) -> int:
        """``max_epochs``, or the job's ``train.epochs``."""
        return self.max_epochs if self.max_epochs is not None else train_epochs

    def objective(self, early_stopping: EarlyStopping) -> tuple[str, str]:
        """``(metric, direction)`` with the defaults resolved: the metric is ``metric`` or the
        job's ``train.early_stopping.metric``; the direction ``"min"`` or ``"max"``, ``auto``
        resolved from the metric's name as early stopping does."""
        if self.metric is None:
            metric = early_stopping.metric
            mode = self.direction if self.direction != "auto" else early_stopping.mode
        else:
            metric, mode = self.metric, self.direction
        return metric, EarlyStopping(metric=metric, mode=mode).direction
