"""``twinhpc report SWEEP``: a sweep's leaderboard, settings, decisions, plots and best job file.

::

    from twinhpc.report.sweep import sweep_report
    rep = sweep_report("sweeps/digits")     # reads SWEEP/sweep.h5 and SWEEP/trials/*/results.h5
    print(rep.text())                        # what `twinhpc report SWEEP` prints
    rep.to_dict()                            # what `twinhpc report SWEEP --json` prints
    rep.best_toml, rep.plots                 # SWEEP/best.toml, SWEEP/report/*.png

The report only reads the sweep (``sweep.h5`` is replaced atomically after every event), so it
works while the sweep runs. It writes ``SWEEP/best.toml`` (the best trial's job, runnable with
``twinhpc train``) and, unless told not to, the PNGs of :mod:`.sweep_plots` into
``SWEEP/report/``; each file atomically.

The leaderboard ranks the trials as ASHA and TPE do: by how far they got (the highest rung
reported), then by the metric at that rung in the sweep's direction, equal metrics by the order
of their reports; a NaN metric (a diverged trial) ranks below every number of its rung. Trials
without a report come next (running or queued), failed trials last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Job, JobFileError
from ..config.load import override
from ..config.sweep import Param
from ..config.toml_writer import toml_value
from ..errors import TwinError
from ..io.atomic import remove_durably, writing
from ..io.sweep import SWEEP_FILE, SweepFile, TrialRow, read_sweep

#: where the trials' run folders are, under the sweep's folder (``trials/<id:04d>``)
TRIALS_DIR = "trials"
#: the folder of the sweep's PNGs
REPORT_DIR = "report"
#: the best configuration as a job file
BEST_FILE = "best.toml"
#: statuses of a trial that is over
DONE = ("completed", "failed", "stopped")
#: the order statuses and decision actions are counted in
STATUSES = ("completed", "stopped", "failed", "running", "queued", "paused")
ACTIONS = ("start", "promote", "pause", "complete", "stop", "fail", "requeue")


@dataclass
class Entry:
    """One row of the leaderboard.

    ``rank``: 1 = best (``None`` for a trial without a report, and for a failed one);
    ``metrics``: the metric at each rung (NaN: not reached); ``rung``: the highest rung reported
    (-1: none); ``final``: the metric there; ``wall_s``: running time summed over its segments
    (a running segment up to the time of the report).
    """

    rank: int | None
    trial: int
    params: dict[str, Any]
    metrics: list[float]
    rung: int
    final: float
    epochs: int
    status: str
    wall_s: float
    error: str = ""
    log: str = ""


@dataclass
class SweepReport:
    """What ``twinhpc report SWEEP`` found and wrote (see :func:`sweep_report`)."""

    directory: Path
    file: SweepFile
    job: Job
    executor: str
    entries: list[Entry]
    now: float
    best_toml: Path | None = None
    plots: list[Path] = field(default_factory=list)
    #: trials whose curves are missing from metric_vs_epochs.png: trial → why
    skipped: dict[int, str] = field(default_factory=dict)

    # -- derived ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.directory.resolve().name

    @property
    def rungs(self) -> list[int]:
        return self.file.rungs

    @property
    def max_epochs(self) -> int:
        return self.file.rungs[-1]

    @property
    def space(self) -> tuple[Param, ...]:
        return self.job.sweep.params if self.job.sweep is not None else ()

    @property
    def best(self) -> Entry | None:
        """The highest-ranked trial with a finite metric (``None``: none has one)."""
        return next((e for e in self.entries if e.rank is not None and math.isfinite(e.final)), None)

    @property
    def best_is_final(self) -> bool:
        """The best trial reached the last rung (else it is the best so far)."""
        return self.best is not None and self.best.rung == len(self.rungs) - 1

    def counts(self) -> dict[str, int]:
        """Trials by status (statuses with none left out)."""
        out = {s: 0 for s in STATUSES}
        for t in self.file.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return {s: n for s, n in out.items() if n}

    def decision_counts(self) -> dict[int, dict[str, int]]:
        """Decisions per rung and action (rungs and actions with none left out)."""
        out: dict[int, dict[str, int]] = {}
        for d in self.file.decisions:
            by = out.setdefault(d.rung, {})
            by[d.action] = by.get(d.action, 0) + 1
        return {
            r: {a: by[a] for a in (*ACTIONS, *sorted(set(by) - set(ACTIONS))) if a in by}
            for r, by in sorted(out.items())
        }

    def settings(self) -> dict[str, Any]:
        f, s = self.file, self.file.sweep
        done = sum(1 for t in f.trials if t.status in DONE)
        trained = sum(t.epochs for t in f.trials)
        return {
            "sweep": str(self.directory),
            "name": self.name,
            "strategy": s.get("strategy"),
            "seed": s.get("seed"),
            "scheduler": s.get("scheduler"),
            "rungs": list(f.rungs),
            "reduction_factor": s.get("reduction_factor"),
            "metric": f.metric,
            "direction": f.direction,
            "trials": f.budget,
            "started": len(f.trials),
            "done": done,
            "statuses": self.counts(),
            "finished": done == f.budget,
            "concurrent": f.workers,
            "utilisation": f.utilisation,
            "busy_s": f.busy_s,
            "epochs_trained": trained,
            "epochs_budget": f.budget * self.max_epochs,
            "max_epochs": self.max_epochs,
            "executor": self.executor,
            "created_at": f.created_at,
            "updated_at": f.updated_at,
        }

    # -- output ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything the text shows, JSON-able (NaN as ``null``)."""
        best = self.best
        out = {
            "settings": self.settings(),
            "best": None
            if best is None
            else {
                "trial": best.trial,
                "metric": best.final,
                "rung": best.rung,
                "epochs": self.rungs[best.rung],
                "final": self.best_is_final,
                "params": best.params,
            },
            "leaderboard": [dataclasses.asdict(e) for e in self.entries],
            "decisions": {str(r): by for r, by in self.decision_counts().items()},
            "best_toml": str(self.best_toml) if self.best_toml else None,
            "plots": [str(p) for p in self.plots],
            "skipped": {str(t): why for t, why in self.skipped.items()},
        }
        return _jsonable(out)

    def text(self) -> str:
        """The report as ``twinhpc report SWEEP`` prints it."""
        return "\n".join(self._settings_lines() + [""] + self._best_lines() + [""] + self._table_lines() + self._tail())

    def _settings_lines(self) -> list[str]:
        s, f = self.settings(), self.file
        rungs = ", ".join(str(r) for r in f.rungs)
        sched = (
            f"asha: rungs {rungs} epochs, reduction factor {s['reduction_factor']}"
            if s["scheduler"] == "asha"
            else f"none: every trial trains {_epochs(self.max_epochs)}"
        )
        statuses = s["statuses"]
        over = ", ".join(f"{statuses[k]} {k}" for k in DONE if k in statuses)
        going = ", ".join(f"{statuses[k]} {k}" for k in ("running", "queued", "paused") if k in statuses)
        waiting = f.budget - len(f.trials)
        trials = f"{s['done']} of {f.budget} done" + (f" ({over})" if over else "")
        trials += f"; {going}" if going else ""
        trials += f"; {waiting} not started" if waiting > 0 else ""
        share = s["epochs_trained"] / s["epochs_budget"] if s["epochs_budget"] else math.nan
        util = f.utilisation
        lines = [
            f"sweep {self.directory}: " + ("finished" if s["finished"] else "in progress"),
            f"  strategy     {s['strategy']} (seed {s['seed']}), {f.budget} trials, {f.workers} concurrent",
            f"  scheduler    {sched}",
            f"  metric       {f.metric} ({f.direction}: {'larger' if f.direction == 'max' else 'smaller'} is better)",
            f"  trials       {trials}",
            f"  epochs       {s['epochs_trained']} trained of {s['epochs_budget']} "
            f"({f.budget} trials × {self.max_epochs} max_epochs: {_pct(share)})",
            f"  utilisation  {_num(util, '.2f')} (busy {f.busy_s:.1f} s over {f.workers} worker(s))",
            f"  executor     {self.executor or 'not recorded'}",
            f"  updated      {_when(f.updated_at)}",
        ]
        return lines

    def _best_lines(self) -> list[str]:
        best = self.best
        if best is None:
            return ["best: none yet (no trial has reported a finite metric)"]
        values = ", ".join(f"{k} = {_value(v)}" for k, v in best.params.items())
        at = f"{self.file.metric} {_num(best.final)} at {_epochs(self.rungs[best.rung])}"
        if self.best_is_final:
            head = f"best: trial {best.trial}, {at} (the last rung)"
        else:
            head = (
                f"best so far: trial {best.trial}, {at} "
                f"(no trial has reached the last rung, {_epochs(self.max_epochs)}, yet)"
            )
        lines = [head, f"  {values}"]
        if self.best_toml is not None:
            lines.append(f"  job file: {self.best_toml} (twinhpc train {self.best_toml})")
        return lines

    def _table_lines(self) -> list[str]:
        keys = [p.key for p in self.space] or list(self.file.params)
        header = ["rank", "trial", *keys, *(f"@{r}" for r in self.rungs), "final", "epochs", "status", "wall"]
        rows = []
        for e in self.entries:
            cells = [
                "-" if e.rank is None else str(e.rank),
                str(e.trial),
                *(_value(e.params.get(k)) for k in keys),
                *(_metric_cell(m, i <= e.rung) for i, m in enumerate(e.metrics)),
                "-" if e.rung < 0 else _num(e.final),
                str(e.epochs),
                e.status,
                _duration(e.wall_s),
            ]
            rows.append(cells)
        lines = ["leaderboard (ranked by the highest rung reached, then the metric there):"]
        lines += _table(header, rows, left={"status", *keys})
        failed = [e for e in self.entries if e.status == "failed"]
        if failed:
            lines += ["", "failed trials:"]
            lines += [
                f"  trial {e.trial}: {e.error or 'no error recorded'} (log: {e.log or 'none recorded'})" for e in failed
            ]
        return lines

    def _tail(self) -> list[str]:
        lines = ["", "decisions per rung (twinhpc.tune.decisions_text or h5dump -d /decisions for each one):"]
        by_rung = self.decision_counts()
        if not by_rung:
            lines.append("  none yet")
        else:
            actions = [a for a in ACTIONS if any(a in by for by in by_rung.values())]
            actions += sorted({a for by in by_rung.values() for a in by} - set(actions))
            rows = [
                [f"{r} ({_epochs(self.rungs[r])})" if 0 <= r < len(self.rungs) else str(r)]
                + [str(by.get(a, 0)) for a in actions]
                for r, by in by_rung.items()
            ]
            lines += ["  " + line for line in _table(["rung", *actions], rows, left={"rung"})]
        if self.plots:
            lines += ["", "plots: " + ", ".join(str(p) for p in self.plots)]
            plotted = len(self.file.trials) - len(self.skipped)
            note = f"  metric_vs_epochs.png: {plotted} trial(s) plotted"
            if self.skipped:
                note += f", {len(self.skipped)} skipped without results: " + "; ".join(
                    f"trial {t} ({why})" for t, why in self.skipped.items()
                )
            lines.append(note)
        return lines


# -- building ----------------------------------------------------------------------------------
def sweep_directory(path: str | os.PathLike[str]) -> Path | None:
    """The sweep folder ``path`` names (the folder holding ``sweep.h5``, or that file), else ``None``."""
    path = Path(path)
    if path.is_dir() and (path / SWEEP_FILE).is_file():
        return path
    if path.name == SWEEP_FILE and path.is_file():
        return path.parent
    return None


def trial_dir(directory: Path, trial: int) -> Path:
    """``SWEEP/trials/<id:04d>``: the trial's run folder."""
    return directory / TRIALS_DIR / f"{trial:04d}"


def _last_report_seq(f: SweepFile) -> dict[tuple[int, int], int]:
    return {(r.trial, r.rung): r.seq for r in f.reports}


def wall_time(t: TrialRow, now: float) -> float:
    """The trial's running time: its finished segments, and a running one up to ``now``."""
    running = now - t.started_at if t.status == "running" and math.isfinite(t.started_at) else 0.0
    return t.busy_s + max(running, 0.0)


def leaderboard(f: SweepFile, now: float | None = None) -> list[Entry]:
    """The trials, best first (see the module's docstring for the order)."""
    stamp = time.time() if now is None else now
    sign = -1.0 if f.direction == "max" else 1.0
    seqs = _last_report_seq(f)

    def group_and_key(t: TrialRow) -> tuple[Any, ...]:
        final = t.metric[t.rung] if t.rung >= 0 else math.nan
        if t.status == "failed":
            return (3, t.id)
        if t.rung < 0:
            return (2, t.id)
        nan = not math.isfinite(final)
        return (0, -t.rung, nan, 0.0 if nan else sign * final, seqs.get((t.id, t.rung), 0), t.id)

    ordered = sorted(f.trials, key=group_and_key)
    out, rank = [], 0
    for t in ordered:
        ranked = t.status != "failed" and t.rung >= 0
        rank += ranked
        out.append(
            Entry(
                rank=rank if ranked else None,
                trial=t.id,
                params=dict(t.params),
                metrics=list(t.metric),
                rung=t.rung,
                final=t.metric[t.rung] if t.rung >= 0 else math.nan,
                epochs=t.epochs,
                status=t.status,
                wall_s=wall_time(t, stamp),
                error=t.error,
                log=t.log,
            )
        )
    return out


def best_job(rep: SweepReport) -> Job | None:
    """The base job with the best trial's values, ``train.epochs`` = the sweep's max_epochs,
    ``train.out`` = ``runs/<sweep folder name>-best`` and no ``[sweep]``; ``None`` without a best."""
    best = rep.best
    if best is None:
        return None
    base = dataclasses.replace(rep.job, sweep=None)
    values = {**best.params, "train.epochs": rep.max_epochs, "train.out": f"runs/{rep.name}-best"}
    return override(base, values, where=f"{rep.directory / SWEEP_FILE} trial {best.trial}")


def write_best_toml(rep: SweepReport) -> Path | None:
    """``SWEEP/best.toml`` (atomically): :func:`best_job` with a comment header naming the sweep,
    the trial and its metric; ``None`` before any trial has a finite metric (a best.toml of an
    earlier report, whose trial has failed since, is removed then)."""
    job, best = best_job(rep), rep.best
    path = rep.directory / BEST_FILE
    if job is None or best is None:
        remove_durably(path)
        return None
    where = "the last rung" if rep.best_is_final else "the best so far: no trial has reached the last rung yet"
    values = ", ".join(f"{k} = {toml_value(v)}" for k, v in best.params.items())
    header = [
        f"# The best configuration of sweep {rep.name} ({rep.directory / SWEEP_FILE}),",
        f"# written by `twinhpc report {rep.directory}` at {_when(rep.now)}:",
        f"# trial {best.trial}, {rep.file.metric} = {_num(best.final)} ({rep.file.direction}) "
        f"at {_epochs(rep.rungs[best.rung])} ({where}).",
        f"# Its values: {values}.",
        f"# train.epochs = {rep.max_epochs} (the sweep's max_epochs); train.out = runs/{rep.name}-best.",
        f"# Train it: twinhpc train {path}",
        "",
        "",
    ]
    with writing(path, lambda e: f"{path}: cannot write the best job file ({e.strerror or e})") as tmp:
        tmp.write_text("\n".join(header) + job.to_toml())
    return path


def sweep_report(
    sweep: str | os.PathLike[str], plot: bool = True, best_file: bool = True, now: float | None = None
) -> SweepReport:
    """Read the sweep in ``sweep`` (its folder, or its sweep.h5), write ``SWEEP/best.toml``
    (``best_file``) and the PNGs (``plot``), and return the report.

    Raises
    ------
    TwinError
        Naming the file: no sweep.h5 there, an unreadable one, or a stored job that this
        twinhpc does not read.
    """
    directory = sweep_directory(sweep)
    if directory is None:
        raise TwinError(f"{sweep}: no {SWEEP_FILE} there (not a sweep folder)")
    path = directory / SWEEP_FILE
    f = read_sweep(path)
    try:
        job = Job.from_dict(f.job, where=str(path))
    except JobFileError as e:
        raise TwinError(f"{path}: the stored job: {e}") from None
    stamp = time.time() if now is None else now
    rep = SweepReport(directory, f, job, f.executor, leaderboard(f, stamp), stamp)
    if best_file:
        rep.best_toml = write_best_toml(rep)
    if plot:
        from . import sweep_plots

        rep.plots, rep.skipped = sweep_plots.write_plots(rep, directory / REPORT_DIR)
    return rep


# -- formatting --------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _num(v: float, fmt: str = ".4g") -> str:
    return "nan" if not math.isfinite(v) else format(v, fmt)


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.0%}"


def _metric_cell(v: float, reached: bool) -> str:
    return _num(v) if reached else "-"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return format(v, ".4g")
    if isinstance(v, str) or v is None:
        return "-" if v is None else v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _when(t: float) -> str:
    if not math.isfinite(t):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _table(header: list[str], rows: list[list[str]], left: frozenset[str] | set[str] = frozenset()) -> list[str]:
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if header[i] in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return [line(r).rstrip() for r in cells]
