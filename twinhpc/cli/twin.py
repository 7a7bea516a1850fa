"""``twinhpc twin rollout RUN ...`` (a what-if scenario, against the simulator) and ``twinhpc twin
monitor RUN --stream FILE ...`` (anomalies in a sensor stream)."""

from __future__ import annotations

import argparse
import json

from .main import add_common, setup_logging_for

DESCRIPTION = """\
Use a trained twin (the run directory of `twinhpc train` on a field job of the plate; docs/twin.md,
"Using the twin").

  twinhpc twin rollout RUN [--set scenario.KEY=VALUE ...] [--steps N] [--out OUT.h5]
      a what-if scenario: the twin's predicted trajectory and, on the same scenario, the
      simulator's; prints both times, the speed-up and the twin's error
  twinhpc twin monitor RUN --stream FILE [--calibrate FAULT_FREE.h5] [--threshold X] [--out REPORT.h5]
      keeps the twin in step with a sensor stream, flags anomalies, scores them against the
      stream's labels
"""

ROLLOUT = """\
A what-if scenario on the twin of RUN, and the simulator (the Numba solver) on the same scenario.

The scenario starts from the middle of every trained range (or from held-out scenario I of the
dataset's test split: --scenario-index I); --set scenario.KEY=VALUE changes one parameter, by the
simulator's names: k, h, t_inf, t_edge, t0, source<i>.{x,y,power,on,duration,ramp,freq,depth}
(docs/twin.md). A value outside the trained range is run, with a warning saying by how much.
The plate (grid, sensors, trained ranges) is read from the provenance of the dataset RUN was
trained on, or from --job JOB.toml's [simulate] table.

Prints the twin's time and the simulator's for the same output (each the fastest of --repeat
runs after one warm-up run), the speed-up (simulator time / twin time), and the twin's error
against the simulator: nRMSE (||twin - sim||/||sim|| over the grid), RMSE and max |error| (K),
at the end and over time. Writes OUT.h5 (default RUN/twin/rollout.h5: both trajectories, the
sensors, the parameters, the errors over time) and OUT-field.png, OUT-sensors.png.
Errors (exit 2): a RUN without a trained twin, an unknown scenario key.
"""

MONITOR = """\
Monitor a sensor stream with the twin of RUN.

The stream is HDF5 (`twinhpc simulate JOB --stream FILE.h5`) or CSV (a header time,s0,...,s{K-1}
[,label,label_sensor,label_fault], time in seconds or ISO 8601); a CSV stream's known inputs
(forcing, parameters, sensor positions) are read from --inputs FILE.h5 (default: the .h5 file of
the same name). The twin steps with the stream's forcing and is corrected toward the readings
after each sample (optimal interpolation with gain --gain; sensors in alarm are left out); the
residuals (readings - twin) feed three statistics over a window of --window samples: each
sensor's mean residual (drift), the mean over the sensors (an unexpected heat source), and, over
--flat-window samples, the flatness of each reading (a stuck sensor).
Each statistic's level is its --quantile (default 1: the maximum) on the fault-free stream
--calibrate (default: the first --calibrate-fraction of the stream itself) times --threshold
(default 2; the per-sensor mean residual has one level for all sensors, from the largest);
an alarm is a sample where a statistic exceeds its level.

With labels (the stream's ground truth) it prints precision, recall and F1 per sample, each
fault's detection delay, and the false alarms per 10^4 fault-free samples. Writes REPORT.h5
(default RUN/twin/monitor.h5) and REPORT-panel.png (sensors against the twin, the score and its
threshold, the true faults, the alarms). Errors (exit 2): a stream with missing columns, NaN
readings or timestamps out of order (naming the file and the column and row).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "twin",
        help="use a trained twin: what-if rollouts against the simulator, anomaly monitoring of a sensor stream",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="twin_command", metavar="COMMAND", required=True)
    r = ss.add_parser(
        "rollout",
        help="a what-if scenario on the twin and on the simulator",
        description=ROLLOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("run", metavar="RUN", help="run directory of `twinhpc train` on a field job")
    r.add_argument("--job", metavar="JOB.toml", help="job file whose [simulate] table the twin's data came from")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="scenario.KEY=VALUE",
        help="a scenario parameter, e.g. --set scenario.source0.power=12 (repeatable)",
    )
    r.add_argument("--scenario-index", type=int, metavar="I", help="start from held-out scenario I of the test split")
    r.add_argument(
        "--steps", type=int, metavar="N", help="saved steps to predict (default: the trained simulate.steps)"
    )
    r.add_argument("--out", metavar="OUT.h5", help="the rollout file (default RUN/twin/rollout.h5)")
    r.add_argument(
        "--checkpoint", metavar="best|last|PATH", help="RUN's newest checkpoint (last, default), its best, or a file"
    )
    r.add_argument(
        "--repeat", type=int, default=3, metavar="R", help="timed runs of each after the warm-up (default 3)"
    )
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_common(r)
    m = ss.add_parser(
        "monitor",
        help="flag anomalies in a sensor stream with the twin",
        description=MONITOR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("run", metavar="RUN", help="run directory of `twinhpc train` on a field job")
    m.add_argument("--stream", required=True, metavar="FILE", help="the sensor stream (.h5 or .csv)")
    m.add_argument("--inputs", metavar="FILE.h5", help="a CSV stream's inputs (default: FILE with .h5)")
    m.add_argument("--calibrate", metavar="FAULT_FREE.h5", help="a fault-free stream to calibrate the levels on")
    m.add_argument(
        "--calibrate-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="without --calibrate: calibrate on this first fraction of the stream itself (default 0.1)",
    )
    m.add_argument(
        "--threshold", type=float, default=2.0, metavar="X", help="level = X × the calibrated quantile (default 2)"
    )
    m.add_argument(
        "--quantile",
        type=float,
        default=1.0,
        metavar="Q",
        help="quantile of each statistic on the calibration stream (default 1: its maximum)",
    )
    m.add_argument(
        "--gain",
        type=float,
        default=0.5,
        metavar="G",
        help="assimilation gain in [0, 1); 0: the twin runs open loop (default 0.5)",
    )
    m.add_argument(
        "--window",
        type=int,
        default=10,
        metavar="W",
        help="samples of the residual statistics' window (mean, spatial; default 10)",
    )
    m.add_argument(
        "--flat-window",
        type=int,
        default=20,
        metavar="F",
        help="samples of the flatness statistic's window: a stuck sensor is flagged once its reading's noise "
        "(the mean |second difference|) falls below the calibrated floor over them (default 20)",
    )
    m.add_argument("--out", metavar="REPORT.h5", help="the report (default RUN/twin/monitor.h5)")
    m.add_argument(
        "--checkpoint", metavar="best|last|PATH", help="RUN's newest checkpoint (last, default), its best, or a file"
    )
    m.add_argument("--job", metavar="JOB.toml", help="job file whose [simulate] table the twin's data came from")
    m.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_common(m)
    return p


def _g(v: float) -> str:
    return f"{v:.4g}"


def format_rollout(r: dict) -> str:
    e = r["errors"]
    lines = [
        f"twin rollout: {r['run']} (checkpoint {r['checkpoint']}), scenario: {r['scenario']}"
        + (f", {' '.join(r['overrides'])}" if r["overrides"] else ""),
        "  " + ", ".join(f"{k} {_g(v)}" for k, v in r["params"].items()),
    ]
    lines += [f"  warning: {w}" for w in r["warnings"]]
    lines += [
        f"{r['steps']} saved steps of {_g(r['dt_save'])} s",
        f"twin time {r['twin_seconds']:.6g} s   simulator time {r['simulator_seconds']:.6g} s   "
        f"speed-up {r['speedup']:.6g}x (best of {r['repeat']} after a warm-up)",
        f"error at the end (t = {_g(r['steps'] * r['dt_save'])} s): nRMSE {_g(e['nrmse_end'])}  "
        f"RMSE {_g(e['rmse_end'])} K  max abs {_g(e['max_abs_end'])} K",
        f"error over time (t = 1..{r['steps']} steps): mean nRMSE {_g(e['nrmse_mean'])}  "
        f"RMSE {_g(e['rmse_mean'])} K  max abs {_g(e['max_abs'])} K   sensors RMSE {_g(e['sensor_rmse'])} K",
    ]
    nrmse = r["errors_over_time"]["nrmse"]
    picks = sorted({h for h in (1, 10, 50, r["steps"]) if h <= r["steps"]})
    lines.append("nRMSE by step: " + "  ".join(f"{h}: {_g(nrmse[h])}" for h in picks))
    lines.append(f"wrote {r['out']}" + "".join(f", {p}" for p in r["pngs"]))
    return "\n".join(lines)


def format_monitor(r: dict) -> str:
    lines = [
        f"twin monitor: {r['run']} (checkpoint {r['checkpoint']}) on {r['stream']}: {r['samples']} samples",
        f"calibrated on {r['calibration']} ({r['calibration_samples']} samples); levels: "
        + "; ".join(
            f"{k} {' '.join(_g(x) for x in (v if isinstance(v, list) else [v]))}" for k, v in r["levels"].items()
        ),
        f"alarms: {r['alarm_samples']} samples; in-control residual RMS {_g(r['residual_rms_in_control'])} K; "
        f"twin {r['twin_seconds']:.3g} s",
    ]
    s = r["scores"]
    if s is None:
        lines.append("the stream has no labels: no precision, recall or delays")
    else:
        lines.append(
            f"precision {s['precision']:.4f}  recall {s['recall']:.4f}  F1 {s['f1']:.4f}  "
            f"({s['fault_samples']} faulty, {s['fault_free_samples']} fault-free samples)"
        )
        lines.append(
            f"false alarms: {s['false_alarms']} ({_g(s['false_alarms_per_1e4'])} per 10^4 fault-free samples); "
            f"false-positive samples {_g(s['false_positive_samples_per_1e4'])} per 10^4"
        )
        for f in s["faults"]:
            where = f"sensor {f['sensor']}" if f["sensor"] >= 0 else "plate"
            delay = f"delay {_g(f['delay_s'])} s ({f['delay_samples']} samples)" if f["detected"] else "NOT DETECTED"
            lines.append(
                f"  fault {f['fault']}: {f['kind']:<6} {where:<9} [{_g(f['start'])}, {_g(f['end'])}) s: {delay}, "
                f"recall {f['recall']:.3f}"
            )
    lines.append(f"wrote {r['out']}" + "".join(f", {p}" for p in r["pngs"]))
    return "\n".join(lines)


def run(args) -> int:
    from ..comm.world import get_world

    world = get_world()
    setup_logging_for(args, world)

    def work():  # rank 0 does the work (one process); under mpirun the others wait for its outcome
        if not world.is_root:
            return None
        from ..twin import commands

        if args.twin_command == "rollout":
            report = commands.rollout(
                args.run,
                job=args.job,
                overrides=args.overrides,
                steps=args.steps,
                out=args.out,
                checkpoint=args.checkpoint,
                scenario_index=args.scenario_index,
                repeat=args.repeat,
            )
            return report, format_rollout(report)
        report = commands.monitor(
            args.run,
            args.stream,
            calibrate_on=args.calibrate,
            inputs=args.inputs,
            threshold=args.threshold,
            quantile=args.quantile,
            gain=args.gain,
            window=args.window,
            flat_window=args.flat_window,
            calibrate_fraction=args.calibrate_fraction,
            out=args.out,
            checkpoint=args.checkpoint,
            job=args.job,
        )
        return report, format_monitor(report)

    done = world.run(work)
    if done is None:
        return 0
    report, text = done
    print(json.dumps(report) if args.json else text, flush=True)
    return 0
