"""``twinhpc sweep status SWEEP [--json]`` and ``twinhpc sweep resume SWEEP [--executor E] [--detach]``."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

DESCRIPTION = """\
A sweep's state and its continuation (docs/tune.md).

  status  SWEEP [--json]   its settings, trials by status, one row per trial (values, status,
                           metric at each rung, epochs, job id, log), the best, utilisation,
                           and whether a driver holds it (SWEEP/driver.lock); reads sweep.h5 only
  resume  SWEEP            drive the sweep on to its end, on the executor recorded in sweep.h5
                           (or --executor). First it settles the trials the last driver left
                           running: by their job ids, one state query for all: still running →
                           watched; done → reported from the trial's results.h5; failed →
                           recorded failed with the error and log; gone (or never launched) →
                           queued again, to resume from the trial's checkpoint.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="a sweep's status, or resume it after its driver stopped",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("status", help="the sweep's state (sweep.h5), without touching it")
    s.add_argument("sweep", metavar="SWEEP", help="the sweep's folder")
    s.add_argument("--json", action="store_true", help="print it as JSON")
    r = actions.add_parser("resume", help="continue the sweep: settle the trials left running, drive it to its end")
    r.add_argument("sweep", metavar="SWEEP", help="the sweep's folder")
    from .tune import add_driver_options

    add_driver_options(r, default=None)
    return p


def run(args) -> int:
    if args.action == "status":
        return status(args)
    from ..errors import TwinError
    from ..tune import Sweep

    sweep = Sweep.load(_folder(args.sweep))
    if args.executor is not None and args.executor != sweep.executor:
        sweep.executor = args.executor
        sweep.save()
    if not sweep.executor:
        raise TwinError(f"{args.sweep}: sweep.h5 names no executor; give --executor")
    args.executor = sweep.executor
    return drive(sweep, args)


def _folder(path: str) -> Path:
    from ..errors import TwinError

    folder = Path(path)
    if not (folder / "sweep.h5").is_file():
        raise TwinError(f"{folder}: not a sweep folder (no {folder / 'sweep.h5'})")
    return folder


# -- driving ---------------------------------------------------------------------------------------
def drive(sweep, args) -> int:
    """Drive ``sweep`` on ``args.executor`` (``--detach``: in a detached process)."""
    from ..errors import TwinError
    from ..tune import executors
    from ..tune.driver import Driver, leaderboard

    if args.detach:
        return detach(sweep, args)
    options = {"address": args.address} if args.address else {}
    try:
        ex = executors.make(args.executor, sweep.directory, sweep.job, sweep.settings.concurrent, **options)
    except ImportError as e:
        raise TwinError(f"--executor {args.executor}: not available here ({e})") from None
    poll = args.poll if args.poll is not None else ex.default_poll
    status = Driver(sweep, ex, poll=poll, log=not args.detached_driver).run()
    print(leaderboard(sweep), flush=True)
    return status


def detach(sweep, args) -> int:
    """Start ``twinhpc sweep resume SWEEP`` in a new session, its output appended to
    SWEEP/driver.log; return once it has launched its first trials (or has ended)."""
    from ..env import launch_environ
    from ..errors import TwinError
    from ..io.sweep import read_sweep
    from ..tune.driver import DRIVER_LOG

    folder = sweep.directory
    cmd = [sys.executable, "-m", "twinhpc", "sweep", "resume", str(folder), "--executor", args.executor]
    cmd += ["--detached-driver"] + (["--poll", str(args.poll)] if args.poll is not None else [])
    cmd += ["--address", args.address] if args.address else []
    log_path = folder / DRIVER_LOG
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=launch_environ(),
        )
    deadline = time.monotonic() + float(os.environ.get("TWINHPC_DETACH_WAIT_S", "600"))
    launched = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            launched = any(t.job_id for t in read_sweep(folder / "sweep.h5").trials)
        except TwinError:
            launched = False
        if launched:
            break
        time.sleep(0.2)
    if proc.poll() is not None and proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        raise TwinError(f"the detached driver ended with status {proc.returncode}; {log_path}:\n" + "\n".join(tail))
    state = "its first trials are launched" if launched else "it has not launched trials yet"
    print(
        f"sweep {folder}: driver pid {proc.pid} runs detached ({state}); log {log_path}\n"
        f"  twinhpc sweep status {folder}\n"
        f"  twinhpc sweep resume {folder}     (if the driver stops)",
        flush=True,
    )
    return 0


# -- status ----------------------------------------------------------------------------------------
def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def status(args) -> int:
    from ..tune import Sweep
    from ..tune.driver import lock_holder, ranked_trials

    folder = _folder(args.sweep)
    sweep = Sweep.load(folder)
    f = sweep.to_file()
    counts: dict[str, int] = {}
    for t in f.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    ranked = ranked_trials(sweep)
    best = None
    if ranked:
        trial, rung, metric = ranked[0]
        best = {"trial": trial, "rung": rung, "epochs": sweep.rungs[rung], "metric": _num(metric)}
        best["params"] = sweep.params(trial)
    holder = lock_holder(folder)
    doc = {
        "sweep": str(folder),
        "executor": f.executor,
        "metric": f.metric,
        "direction": f.direction,
        "rungs": f.rungs,
        "budget": f.budget,
        "concurrent": f.workers,
        "strategy": f.sweep.get("strategy"),
        "scheduler": f.sweep.get("scheduler"),
        "finished": sweep.finished,
        "counts": counts,
        "best": best,
        "busy_s": f.busy_s,
        "utilisation": _num(f.utilisation),
        "driver": holder,
        "trials": [
            {
                "id": t.id,
                "params": t.params,
                "status": t.status,
                "metric": [_num(m) for m in t.metric],
                "epochs": t.epochs,
                "job_id": t.job_id,
                "node": t.node,
                "log": t.log,
                "error": t.error,
            }
            for t in f.trials
        ],
    }
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(
        f"sweep {folder}: {doc['strategy']} / {doc['scheduler']}, {f.budget} trials, {f.workers} at once, "
        f"rungs {f.rungs} epochs, {f.metric} ({f.direction}), executor {f.executor or '?'}"
    )
    print("trials: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none started") + f" of {f.budget}")
    print(f"driver: {holder or 'none (the sweep is not being driven; `twinhpc sweep resume` continues it)'}")
    util = "n/a" if doc["utilisation"] is None else f"{f.utilisation:.2f}"
    print(f"utilisation: {util} (busy {f.busy_s:.1f} s)")
    rung_head = " ".join(f"{'@' + str(r):>9}" for r in f.rungs)
    print(f"{'trial':>5} {'status':<9} {rung_head} {'epochs':>6} {'job':>10}  values / log / error")
    for t in f.trials:
        metrics = " ".join(f"{m:>9.4g}" if not math.isnan(m) else f"{'-':>9}" for m in t.metric)
        values = ", ".join(f"{k}={v!r}" for k, v in t.params.items())
        print(f"{t.id:>5} {t.status:<9} {metrics} {t.epochs:>6} {t.job_id or '-':>10}  {values}")
        if t.log:
            print(f"{'':>16}log {t.log}")
        if t.error:
            print(f"{'':>16}error: {t.error}")
    if best is None:
        print("best: none yet")
    else:
        print(
            f"best: trial {best['trial']} {f.metric} {best['metric']} at rung {best['rung']} ({best['epochs']} epochs)"
        )
    return 0
