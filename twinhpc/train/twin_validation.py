"""Validation of a twin (a field job's surrogate) by rollouts of held-out scenarios; collective.

::

    tv = validate_twin(job, run="runs/plate_twin", split="test", horizons=(1, 10, 50))
    tv.figures["twin"]["nrmse_rise"]      # at each horizon; tv.full["twin"]["nrmse_rise"]: whole rollout
    print(tv.table())                     # rank 0

Each held-out scenario is rolled out from its true ``u[0]`` for its ``T`` saved steps by the
twin (:class:`~twinhpc.train.rollout.Surrogate`) and by two baselines, persistence and a linear
model fitted on the training split (:mod:`.twin_metrics`); each rollout is compared with the
truth at every step: nRMSE (PDEBench's, on the absolute temperature), nRMSE of the rise above
the scenario's ambient ``T∞`` (for a ``twinhpc simulate`` dataset), RMSE, max error, and the
plate's energy balance. docs/twin.md ("Validating the twin") describes the figures.

**Stability**: a twin may validate well over ``T`` steps and still blow up over the thousands a
monitored stream needs. From each scenario's last true state ``u[T]`` the twin runs
``stability_steps`` more saved steps with the forcing off (0 in physical units; the params
unchanged). Without sources the plate relaxes toward the steady state of its held edges and the
ambient air, so by the maximum principle its field stays within the span of ``u[T]``, ``t_edge``
and ``T∞`` (a dataset without a plate's provenance: the span of ``u[T]``). Per scenario: the
largest excursion of the twin beyond that span as a share of its width (0: it stayed inside),
and the first step whose state is not finite (−1: none). The twin is *unstable* when a state is
not finite or an excursion exceeds :data:`STABILITY_TOLERANCE` widths (a blow-up; a twin that
relaxes to a field a little off the true one stays within a few). The excursions of a stable
twin say how far it strays from the physics far from its training data.

Note:
    The held-out scenarios are spread over the ranks: each rank reads its share of the split
    (the evaluation loader, ``policy="pad"``), rolls out the twin and both baselines on it, and
    the per-scenario, per-step errors are gathered on rank 0 (``MPI_Gatherv``), de-duplicated by
    index and summarised there; the summary is then broadcast, so every rank returns the same
    :class:`TwinValidation`. The linear baseline is fitted on rank 0 (on at most
    ``fit_scenarios`` training scenarios) and broadcast before the rollouts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..comm.world import World
from ..config import Job
from ..data.format import Manifest
from ..errors import TwinError
from ..io.results import twin_stable
from .twin_metrics import (
    HORIZONS,
    MODELS,
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

log = logging.getLogger("twinhpc")

#: the linear baseline's POD rank (state and forcing), and the training scenarios it is fitted on
LINEAR_RANK, FIT_SCENARIOS = 32, 128
#: held-out scenarios whose truth and twin fields are kept for the panels, at the horizons
EXAMPLES = 2
#: the metrics, in table order
METRICS = ("nrmse_rise", "nrmse", "rmse", "max_abs", "energy_residual")
#: saved steps of the stability check (from each held-out scenario's last true state, forcing off)
STABILITY_STEPS = 500
#: an excursion beyond the allowed span larger than this many times the span's width, or a state
#: that is not finite, makes the twin "unstable": a rollout that blows up grows without bound,
#: one that settles a little off the true field stays within a few widths
STABILITY_TOLERANCE = 10.0


@dataclass
class TwinValidation:
    """The outcome of :func:`validate_twin` (the same on every rank).

    ``figures[model][metric]``: float64 per horizon (``horizons``); ``full[model][metric]``: over
    every step of every scenario; ``per_step[model][metric]``: at each step ``1..steps``;
    ``one_step[model][metric]``: one step ahead from every true ``u[t]`` (teacher forcing), over
    every step of every scenario (no energy residual). Models:
    ``twin``, ``persistence``, ``linear``, and ``truth`` (the energy residual only). Metrics:
    ``nrmse``, ``rmse`` (K), ``max_abs`` (K), and with a plate's provenance ``nrmse_rise`` and
    ``energy_residual``. ``examples``: ``index`` (k,), ``time`` (m,), ``truth`` and ``twin``
    (k, m, *grid) float32, for the panels. ``stability``: ``steps``, ``span`` (what bounds the
    field) and per scenario ``excursion`` and ``diverged_at`` (the module's note); ``steps`` 0
    when the check did not run.
    """

    split: str
    n: int
    steps: int
    horizons: list[int]
    figures: dict[str, dict[str, np.ndarray]]
    full: dict[str, dict[str, float]]
    per_step: dict[str, dict[str, np.ndarray]]
    one_step: dict[str, dict[str, float]]
    examples: dict[str, np.ndarray]
    judged_on: str
    reference: str
    energy_balance: str
    linear: dict[str, Any]
    checkpoint: str = ""
    which: str = ""
    ranks: int = 1
    seconds: float = 0.0
    scenario_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stability: dict[str, Any] = field(default_factory=lambda: {"steps": 0, "span": "not run"})

    @property
    def stable(self) -> bool | None:
        """Whether the twin passed the stability check (None when it did not run)."""
        st = self.stability
        if not st.get("steps"):
            return None
        return twin_stable(st["excursion"], st["diverged_at"], STABILITY_TOLERANCE)

    def stability_summary(self) -> dict[str, Any]:
        """``steps``, ``span``, ``stable``, ``diverged`` (scenarios), ``first_diverged`` (the
        earliest step, −1: none), ``excursion_median`` and ``excursion_max``."""
        st = self.stability
        if not st.get("steps"):
            return {"steps": 0, "span": st.get("span", "not run"), "stable": None}
        exc, div = np.asarray(st["excursion"], np.float64), np.asarray(st["diverged_at"], np.int64)
        bad = div[div >= 0]
        return {
            "steps": int(st["steps"]),
            "span": st["span"],
            "stable": self.stable,
            "diverged": int(len(bad)),
            "first_diverged": int(bad.min()) if len(bad) else -1,
            "excursion_median": float(np.median(exc)),
            "excursion_max": float(np.max(exc)),
        }

    def attrs(self) -> dict[str, Any]:
        """The scalar settings (results.h5's ``/twin_validation`` attributes)."""
        return {
            "split": self.split,
            "n": self.n,
            "steps": self.steps,
            "judged_on": self.judged_on,
            "reference": self.reference,
            "energy_balance": self.energy_balance,
            "checkpoint": self.checkpoint,
            "which": self.which,
            "ranks": self.ranks,
            "seconds": self.seconds,
            **{f"linear_{k}": v for k, v in self.linear.items()},
            "stability_steps": int(self.stability.get("steps", 0)),
            "stability_span": str(self.stability.get("span", "not run")),
            "stability_tolerance": STABILITY_TOLERANCE,
        }

    def datasets(self) -> dict[str, np.ndarray]:
        """The arrays of results.h5's ``/twin_validation`` (docs/results-format.md), by path."""
        out: dict[str, np.ndarray] = {
            "horizon": np.asarray(self.horizons, np.int64),
            "step": np.arange(1, self.steps + 1, dtype=np.int64),
            "scenario_index": np.asarray(self.scenario_index, np.int64),
        }
        for model, metrics in self.full.items():
            for metric, value in metrics.items():
                out[f"{model}/{metric}"] = np.asarray(self.figures[model][metric], np.float64)
                out[f"{model}/{metric}_full"] = np.float64(value)
                out[f"{model}/{metric}_per_step"] = np.asarray(self.per_step[model][metric], np.float64)
        for model, metrics in self.one_step.items():
            for metric, value in metrics.items():
                out[f"{model}/one_step_{metric}"] = np.float64(value)
        for name in ("index", "time", "truth", "twin"):
            if name in self.examples:
                out[f"examples/{name}"] = np.asarray(self.examples[name])
        if self.stability.get("steps"):
            out["stability/excursion"] = np.asarray(self.stability["excursion"], np.float64)
            out["stability/diverged_at"] = np.asarray(self.stability["diverged_at"], np.int64)
        return out

    def save(self, run_dir) -> Any:
        """Write ``/twin_validation`` into ``run_dir``'s results.h5 (one process)."""
        from ..io.results import write_twin_validation

        return write_twin_validation(run_dir, self.attrs(), self.datasets())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the attributes, ``horizons``, and per model ``{metric: [per horizon...],
        metric_full: value}``."""
        models = {
            m: {
                **{k: [float(x) for x in v] for k, v in self.figures.get(m, {}).items()},
                **{f"{k}_full": float(v) for k, v in self.full.get(m, {}).items()},
                **{f"one_step_{k}": float(v) for k, v in self.one_step.get(m, {}).items()},
            }
            for m in (*MODELS, "truth")
            if m in self.full
        }
        return {
            **self.attrs(),
            "horizons": list(self.horizons),
            "models": models,
            "stability": self.stability_summary(),
        }

    def beats_baselines(self, metric: str | None = None) -> bool:
        """Whether the twin's ``metric`` (default: the judged one) is below both baselines' at
        every horizon and over the full rollout."""
        metric = metric or self.judged_on
        twin = [*self.figures["twin"][metric], self.full["twin"][metric]]
        for base in ("persistence", "linear"):
            other = [*self.figures[base][metric], self.full[base][metric]]
            if not all(a < b for a, b in zip(twin, other, strict=True)):
                return False
        return True

    def table(self) -> str:
        """The figures as text: one row per model and metric, one column per horizon and the full
        rollout."""
        cols = ["1-step"] + [f"h={h}" for h in self.horizons] + [f"full 1..{self.steps}"]
        head = ["model", "metric", *cols]
        rows = []
        for m in (*MODELS, "truth"):
            for metric in METRICS:
                if metric not in self.full.get(m, {}):
                    continue
                values = [self.one_step.get(m, {}).get(metric, np.nan), *self.figures[m][metric], self.full[m][metric]]
                rows.append([m, _label(metric), *(_fmt(v) if np.isfinite(v) else "" for v in values)])
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            f"twin validation: {self.n} {self.split} scenarios rolled out {self.steps} steps from u[0] "
            f"(checkpoint {self.checkpoint}, {self.which}); judged on {_label(self.judged_on)}; "
            "1-step: from every true u[t]; h: rolled out h steps from u[0]",
            "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(head, widths))),
        ]
        lines += [
            "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
        verdict = "beats" if self.beats_baselines() else "does NOT beat"
        lines.append(f"the twin {verdict} both baselines on {_label(self.judged_on)} at every horizon")
        if self.energy_balance.startswith("none"):
            lines.append(f"energy balance: {self.energy_balance}")
        lines.append(self.stability_line())
        return "\n".join(lines)

    def stability_line(self) -> str:
        """One line on the stability check."""
        st = self.stability_summary()
        if not st["steps"]:
            return "stability: not checked"
        head = f"stability: {st['steps']} more steps from u[T] with the forcing off"
        if st["diverged"]:
            return (
                f"{head}: UNSTABLE: the twin's state became non-finite in {st['diverged']} of {self.n} "
                f"scenarios (first at step {st['first_diverged']}); do not use it for long rollouts or monitoring"
            )
        verdict = "stable (bounded)" if st["stable"] else "UNSTABLE (blows up)"
        return (
            f"{head}: {verdict}: largest excursion beyond the span of {st['span']} "
            f"{st['excursion_max']:.3g} times its width (median {st['excursion_median']:.3g}; "
            f"unstable above {STABILITY_TOLERANCE:g})"
        )


def _label(metric: str) -> str:
    return {
        "nrmse_rise": "nRMSE of the rise",
        "nrmse": "nRMSE (absolute)",
        "rmse": "RMSE [K]",
        "max_abs": "max |err| [K]",
        "energy_residual": "energy residual",
    }.get(metric, metric)


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.3g}"


# -- pieces --------------------------------------------------------------------------------------
def default_split(manifest: Manifest, job: Job) -> str:
    """The held-out split: ``data.test_split`` when the dataset has it, else ``data.val_split``."""
    return job.data.test_split if job.data.test_split in manifest.split_names else job.data.val_split


def simulate_provenance(job: Job, prepared_dir) -> dict | None:
    """``provenance.simulate`` of the job's dataset (``data.dataset``, else the preprocessed
    dataset's ``source``), or ``None`` when neither was written by ``twinhpc simulate``."""
    for directory in (job.data.dataset, Manifest.load(prepared_dir).provenance.get("source")):
        try:
            prov = Manifest.load(directory).provenance if directory else {}
        except (TwinError, OSError):
            continue
        if prov.get("simulate"):
            return prov["simulate"]
    return None


def read_split(directory, split: str, names: list[str], limit: int | None = None, seed: int = 0):
    """Up to ``limit`` samples of ``split`` (the loader's epoch-0 order), one process: ``{name:
    array}`` of the fields ``names``."""
    from ..data.loader import ShardedLoader

    count = Manifest.load(directory).split(split).count
    batch = max(1, min(16, count))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    seen = 0
    with ShardedLoader(
        directory, split, batch, seed=seed, fields=names, policy="pad", prefetch=0, rank=0, size=1
    ) as loader:
        for b in loader.epoch(0):
            for n in names:
                parts[n].append(np.array(b[n]))
            seen += len(b[names[0]])
            if limit is not None and seen >= limit:
                break
    keep = min(seen, count, limit if limit is not None else seen)
    return {n: np.concatenate(v)[:keep] for n, v in parts.items()}


@dataclass
class Roles:
    """The dataset's field names of the twin's roles and what the physics needs."""

    state: str
    forcing: str | None
    params: str | None
    phys: PlatePhysics | None

    @property
    def names(self) -> list[str]:
        return [n for n in (self.state, self.forcing, self.params) if n]


def evaluate_scenarios(
    twin,
    linear: LinearBaseline | None,
    u: np.ndarray,
    f,
    p,
    roles: Roles,
    *,
    batch_size: int = 64,
    stability_steps: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Roll the twin and both baselines out over the scenarios ``u`` (n, T+1, *grid) with their
    forcing ``f`` and params ``p``; per-step rows ``{"<model>/<metric>": (n, T)}`` (and
    ``truth/energy_residual``) and the twin's trajectories (n, T+1, *grid). With
    ``stability_steps``, the stability check too (the module's note): rows
    ``stability_excursion`` and ``stability_diverged_at`` (n,)."""
    steps = u.shape[1] - 1
    preds = {
        "twin": twin.rollout(u[:, 0], f, p, steps=steps, batch_size=batch_size),
        "persistence": persistence(u[:, 0], steps),
    }
    if linear is not None:
        preds["linear"] = linear.rollout(
            u[:, 0],
            f if linear.forcing_modes is not None else None,
            p if linear.params_mean is not None else None,
            steps=steps,
        )
    phys = roles.phys
    reference = p[:, phys.t_inf] if phys is not None else None
    rows: dict[str, np.ndarray] = {}
    # one step ahead from every true u[t] (teacher forcing): n·T pairs, each a trajectory of 1 step
    n, grid = len(u), u.shape[2:]
    pairs = np.stack([u[:, :-1], u[:, 1:]], axis=2).reshape(n * steps, 2, *grid)
    f1 = None if f is None else f.reshape(n * steps, 1, *grid)
    p1 = None if p is None else np.repeat(p, steps, axis=0)
    ref1 = None if reference is None else np.repeat(reference, steps)
    one = {
        "twin": twin.rollout(pairs[:, 0], f1, p1, steps=1, batch_size=batch_size * steps),
        "persistence": persistence(pairs[:, 0], 1),
    }
    if linear is not None:
        one["linear"] = linear.rollout(
            pairs[:, 0],
            f1 if linear.forcing_modes is not None else None,
            p1 if linear.params_mean is not None else None,
            steps=1,
        )
    for model, pred in one.items():
        for k, v in step_errors(pred, pairs, ref1).items():
            rows[f"{model}/one_step_{k}"] = v.reshape(n, steps)
    energy = phys is not None and u.ndim == 4 and f is not None
    if energy:
        rows["truth/energy_residual"] = residual_fraction(energy_terms(u, f, p, phys))
    for model, pred in preds.items():
        for k, v in step_errors(pred, u, reference).items():
            rows[f"{model}/{k}"] = v
        if energy:
            rows[f"{model}/energy_residual"] = residual_fraction(energy_terms(pred, f, p, phys))
    if stability_steps > 0:
        last = u[:, -1]
        off = None if f is None else np.zeros_like(f[:, -1])
        low, high, diverged = twin.extremes(last, off, p, steps=stability_steps, batch_size=batch_size)
        span_low = last.reshape(n, -1).min(axis=1).astype(np.float64)
        span_high = last.reshape(n, -1).max(axis=1).astype(np.float64)
        if phys is not None:  # the maximum principle: the edges and the ambient air bound it too
            for i in (phys.t_edge, phys.t_inf):
                span_low, span_high = np.minimum(span_low, p[:, i]), np.maximum(span_high, p[:, i])
        rows["stability_excursion"] = excursion(low, high, span_low, span_high)
        rows["stability_diverged_at"] = diverged
    return rows, preds["twin"]


def summary_of(rows: dict[str, np.ndarray], grid_values: int, horizons: list[int]):
    """``figures``, ``full``, ``per_step``, ``one_step`` of merged per-step rows (see
    :class:`TwinValidation`)."""
    by_model: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in rows.items():
        if "/" in key:
            model, metric = key.split("/", 1)
            by_model.setdefault(model, {})[metric] = arr
    figures, full, per_step, one_step = {}, {}, {}, {}
    for model, r in by_model.items():
        if model == "truth":
            e = r["energy_residual"]
            figures[model] = {"energy_residual": np.nanmean(e[:, [h - 1 for h in horizons]], axis=0)}
            full[model] = {"energy_residual": float(np.nanmean(e))}
            per_step[model] = {"energy_residual": np.nanmean(e, axis=0)}
            continue
        one = {k.removeprefix("one_step_"): v for k, v in r.items() if k.startswith("one_step_")}
        r = {k: v for k, v in r.items() if not k.startswith("one_step_")}
        steps = r["sq"].shape[1]
        figures[model] = summarize(r, grid_values, [h - 1 for h in horizons])
        full[model] = summarize_full(r, grid_values)
        per_step[model] = summarize(r, grid_values, list(range(steps)))
        if one:
            one_step[model] = summarize_full(one, grid_values)
    return figures, full, per_step, one_step


# -- the collective validation ----------------------------------------------------------------------
def validate_twin(
    job: Job,
    run=None,
    *,
    checkpoint=None,
    split: str | None = None,
    horizons=HORIZONS,
    world: World | None = None,
    prepared=None,
    linear_rank: int = LINEAR_RANK,
    fit_scenarios: int = FIT_SCENARIOS,
    batch_size: int = 64,
    stability_steps: int = STABILITY_STEPS,
) -> TwinValidation:
    """Roll the field job's twin out over a held-out split against the truth and two baselines;
    collective (see the module's note). ``split`` defaults to :func:`default_split`; horizons
    beyond the trajectories' ``T`` are clipped to it; ``stability_steps`` 0 skips the stability
    check.

    Raises
    ------
    TwinError
        On every rank: not a field job, no such split or checkpoint, a dataset that does not fit
        the twin.
    """
    from ..comm.world import get_world
    from .evaluate import EVAL_EPOCH, merge, split_loader
    from .predict import _prepared, find_checkpoint
    from .rollout import load_surrogate

    world = world or get_world()
    if job.train.task != "field":
        raise TwinError(f"twin validation: the job's train.task is {job.train.task!r}; it needs 'field'")
    start = time.perf_counter()
    prep = _prepared(job, world, prepared)
    manifest = Manifest.load(prep.dataset_dir)
    split = split or default_split(manifest, job)
    if split not in manifest.split_names:
        raise TwinError(f"{prep.dataset_dir}: no split {split!r} (it has {', '.join(manifest.split_names)})")
    path, which = world.run(lambda: find_checkpoint(run, checkpoint), name="find checkpoint")
    twin = world.run(lambda: load_surrogate(checkpoint=path, device=job.train.device), name="load twin")
    fields = twin.norm.fields
    state_name, (frames, *grid) = fields["state"][0], fields["state"][1]
    roles_holder: dict[str, Roles] = {}

    def roles() -> Roles:
        params = fields["params"][0] if "params" in fields else None
        forcing = fields["forcing"][0] if "forcing" in fields else None
        prov = simulate_provenance(job, prep.dataset_dir)
        phys = None
        if prov is not None and params is not None and forcing is not None and len(grid) == 2:
            phys = PlatePhysics.from_provenance(prov, twin.task.params)
        roles_holder["r"] = Roles(state_name, forcing, params, phys)
        return roles_holder["r"]

    r = world.run(roles, name="twin validation: roles")
    steps = frames - 1
    hs = horizons_of(steps, horizons)

    def fit() -> LinearBaseline | None:
        if not world.is_root:
            return None
        data = read_split(prep.dataset_dir, job.data.train_split, r.names, limit=fit_scenarios, seed=job.data.seed)
        return LinearBaseline.fit(
            data[r.state],
            data.get(r.forcing) if r.forcing else None,
            data.get(r.params) if r.params else None,
            rank=linear_rank,
        )

    linear = world.bcast(world.run(fit, name="twin validation: linear fit"), name="twin validation: linear")
    examples = set(range(min(EXAMPLES, manifest.split(split).count)))

    def roll() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        loader = split_loader(prep.dataset_dir, split, job, world, r.names)
        order = loader.indices(EVAL_EPOCH)
        rows: dict[str, list[np.ndarray]] = {}
        ex_index, ex_twin, ex_truth = [], [], []
        buffer: dict[str, list[np.ndarray]] = {n: [] for n in r.names}
        done = 0

        def flush():
            nonlocal done
            if not buffer[r.state]:
                return
            arrays = {n: np.concatenate(v) for n, v in buffer.items()}
            for v in buffer.values():
                v.clear()
            u = arrays[r.state]
            out, twin_u = evaluate_scenarios(
                twin,
                linear,
                u,
                arrays.get(r.forcing) if r.forcing else None,
                arrays.get(r.params) if r.params else None,
                r,
                batch_size=batch_size,
                stability_steps=stability_steps,
            )
            for k, v in out.items():
                rows.setdefault(k, []).append(v)
            idx = order[done : done + len(u)]
            for j, i in enumerate(idx):
                if int(i) in examples:
                    ex_index.append(int(i))
                    ex_twin.append(twin_u[j, hs])
                    ex_truth.append(u[j, hs])
            done += len(u)

        with loader:
            for batch in loader:
                for n in r.names:
                    buffer[n].append(np.array(batch[n]))
                if sum(len(b) for b in buffer[r.state]) >= batch_size:
                    flush()
            flush()
        local = {k: np.concatenate(v) for k, v in rows.items()}
        local["index"] = order[:done].astype(np.int64)
        shape = (0, len(hs), *grid)
        ex = {
            "index": np.asarray(ex_index, np.int64),
            "truth": np.asarray(ex_truth, np.float32).reshape(-1, *shape[1:])
            if ex_truth
            else np.zeros(shape, np.float32),
            "twin": np.asarray(ex_twin, np.float32).reshape(-1, *shape[1:]) if ex_twin else np.zeros(shape, np.float32),
        }
        return local, ex

    local, ex = world.run(roll, name="twin validation: rollouts")
    rows = merge(world, local, root=0)
    ex_rows = merge(world, ex, root=0)

    def summarise() -> TwinValidation | None:
        if rows is None:
            return None
        figures, full, per_step, one_step = summary_of(rows, int(np.prod(grid)), hs)
        phys = r.phys
        return TwinValidation(
            split=split,
            n=int(len(rows["index"])),
            steps=steps,
            horizons=hs,
            figures=figures,
            full=full,
            per_step=per_step,
            one_step=one_step,
            examples={**ex_rows, "time": np.asarray(hs, np.int64)},
            judged_on="nrmse_rise" if phys is not None else "nrmse",
            reference="params t_inf: the scenario's ambient temperature T∞ (K)"
            if phys is not None
            else "none: the dataset's provenance names no ambient temperature",
            energy_balance="trapezoid: sources + edge conduction − face convection − change of stored heat, "
            "|residual| per saved interval over the scenario's mean heat input"
            if phys is not None
            else "none: not a twinhpc simulate plate dataset (no provenance.simulate with forcing and params)",
            linear={
                "rank": linear.rank if linear is not None else 0,
                "forcing_rank": int(linear.forcing_modes.shape[1])
                if linear is not None and linear.forcing_modes is not None
                else 0,
                "params": bool(linear is not None and linear.params_mean is not None),
                "fit_scenarios": int(min(fit_scenarios, manifest.split(job.data.train_split).count)),
            },
            checkpoint=str(path),
            which=which,
            ranks=world.size,
            seconds=time.perf_counter() - start,
            scenario_index=rows["index"],
            stability={
                "steps": int(stability_steps),
                "span": "u[T], t_edge and T∞" if phys is not None else "u[T]",
                "excursion": rows["stability_excursion"],
                "diverged_at": rows["stability_diverged_at"],
            }
            if stability_steps > 0
            else {"steps": 0, "span": "not run"},
        )

    tv = world.run(summarise, name="twin validation: summary")
    return world.bcast(tv, name="twin validation: result")
