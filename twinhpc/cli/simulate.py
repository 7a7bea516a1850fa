"""``twinhpc simulate JOB.toml [--out DIR]`` and ``twinhpc simulate JOB.toml --stream OUT.h5``."""

from __future__ import annotations

import argparse
import shlex
import sys

from .main import add_common, add_overrides, setup_logging_for

DESCRIPTION = """\
Run the job's [simulate] table: an ensemble of heated-plate scenarios (docs/twin.md).

  twinhpc simulate JOB.toml [--out DIR]            the ensemble as a sharded dataset (default DIR:
                                                   the job's data.dataset), one sample per scenario:
                                                   params, field, forcing, sensors, sim_seconds
  twinhpc simulate JOB.toml --stream OUT.h5 [--faults SPEC] [--csv OUT.csv]
                                                   one long sensor stream with injected faults and
                                                   per-sample labels, for `twin monitor`

Under `mpirun -n N` / `srun` each rank simulates the scenarios of the shards it writes; the
dataset is the same whatever N (but for the wall times in sim_seconds). The time step is checked
against the explicit scheme's stability limit over the whole of [simulate.ranges] when the job is
read. --stream runs on one process (under mpirun, rank 0 writes it).

--faults SPEC: `none` (a fault-free stream, for calibration), `default` (a drifting sensor, a
stuck sensor and an unexpected heat source at fixed fractions of the stream), or faults joined
by `;`, each KIND:key=value,...  (times in seconds from the start of the stream):
  drift:sensor=2,start=600,end=1200,rate=0.01       reading += rate·(t - start) K
  stuck:sensor=0,start=1500,end=1900                reading frozen at its last value
  source:start=2200,end=2600,power=8,x=0.3,y=0.7    an extra source (W) at fractions x, y of the plate
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate",
        help="simulate the job's ensemble into a dataset, or a sensor stream with faults",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file with a [simulate] table")
    p.add_argument("--out", metavar="DIR", help="dataset directory to create (default: the job's data.dataset)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a dataset (holds manifest.json), after the new one is complete",
    )
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between two progress lines of rank 0 (default 5)",
    )
    add_overrides(p, "simulate.scenarios=64")
    s = p.add_argument_group("sensor stream (instead of the dataset)")
    s.add_argument(
        "--stream", metavar="OUT.h5", help="write one long sensor stream here (HDF5; format in docs/twin.md)"
    )
    s.add_argument("--faults", metavar="SPEC", default="none", help="faults to inject (see above; default none)")
    s.add_argument("--csv", metavar="OUT.csv", help="also write the readings and labels as CSV")
    s.add_argument(
        "--stream-steps",
        type=int,
        default=2000,
        metavar="N",
        help="saved steps of the stream (N+1 samples; default 2000)",
    )
    s.add_argument(
        "--noise", type=float, default=0.05, metavar="K", help="sensor noise, standard deviation in K (default 0.05)"
    )
    s.add_argument(
        "--stream-seed",
        type=int,
        default=0,
        metavar="S",
        help="which realisation of the sources' schedule and the noise (default 0; another for a calibration stream)",
    )
    s.add_argument(
        "--plate-seed",
        type=int,
        default=None,
        metavar="P",
        help="which plate (k, h, t_inf, t_edge, t0 drawn from the ranges; default: the stream seed); give "
        "a calibration stream and the monitored stream the same plate seed",
    )
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..config import load_job
    from ..errors import TwinError

    world = get_world()
    setup_logging_for(args, world)
    job = world.run(lambda: load_job(args.job, args.overrides))
    if job.simulate is None:
        raise TwinError(f"{args.job}: no [simulate] table (docs/twin.md lists its keys)")
    if args.stream is None:
        for option in ("csv",):
            if getattr(args, option) is not None:
                raise TwinError(f"--{option} needs --stream")
        from ..sim.ensemble import simulate

        simulate(
            job,
            args.out or job.data.dataset,
            overwrite=args.overwrite,
            world=world,
            progress_seconds=args.progress_seconds,
            command="twinhpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        )
        return 0
    if args.out is not None:
        raise TwinError("--out and --stream exclude each other (--stream writes one file)")

    def write():
        if not world.is_root:
            return
        import logging

        from ..io.stream import write_stream, write_stream_csv
        from ..sim.stream import make_stream, parse_faults

        cfg = job.simulate
        faults = parse_faults(args.faults, args.stream_steps * cfg.dt_save, len(cfg.sensors))
        arrays, rows, attrs = make_stream(cfg, args.stream_steps, faults, args.noise, args.stream_seed, args.plate_seed)
        attrs["command"] = "twinhpc " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_stream(args.stream, arrays, rows, attrs)
        if args.csv:
            write_stream_csv(args.csv, arrays, attrs["sensor_names"])
        logging.getLogger("twinhpc").info(
            "stream: %d samples of %d sensors, %d fault(s) (%d faulty samples) -> %s%s",
            len(arrays["time"]),
            arrays["sensors"].shape[1],
            len(rows),
            int((arrays["label"] > 0).sum()),
            args.stream,
            f" and {args.csv}" if args.csv else "",
        )

    world.run(write)
    return 0
