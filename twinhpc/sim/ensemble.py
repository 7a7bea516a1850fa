"""``twinhpc simulate JOB.toml``: the job's ensemble of plate scenarios, run on the MPI ranks and
written as a sharded dataset (docs/dataset-format.md; fields and provenance in docs/twin.md).

The split and shard plan is ingest's (:mod:`twinhpc.data.split`): a pure function of the
scenario count and the seed. Each rank simulates the scenarios of the shards it writes
(:func:`~twinhpc.data.split.shards_of_rank`) straight into them; scenario ``i``'s parameters
depend on ``(seed, i)`` only and a scenario's arithmetic on nothing else, so every field but the
wall time ``sim_seconds`` is the same, byte for byte, whatever the rank count. The dataset is
built in a temporary directory and renamed into place when every rank has finished
(:mod:`twinhpc.data.staging`); any error on any rank leaves nothing under the final name.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..comm.world import World, get_world
from ..config import Job, SimulateConfig
from ..data.format import MANIFEST, FieldSpec, Manifest, SplitInfo
from ..data.shards import write_shard
from ..data.split import assign_splits, plan_shards, shards_of_rank
from ..data.staging import install, staging
from ..errors import TwinError
from ..log import Progress
from .plate import Plate, draw_params, param_table

log = logging.getLogger("twinhpc")

#: seconds between two progress lines on rank 0
PROGRESS_SECONDS = 5.0


def dataset_fields(cfg: SimulateConfig) -> tuple[FieldSpec, ...]:
    """The dataset's schema (docs/twin.md)."""
    h, w = cfg.grid
    t, k = cfg.steps, len(cfg.sensors)
    return (
        FieldSpec("params", "float32", (len(cfg.param_names),)),
        FieldSpec("field", "float32", (t + 1, h, w)),
        FieldSpec("forcing", "float32", (t, h, w)),
        FieldSpec("sensors", "float32", (t + 1, k)),
        FieldSpec("sim_seconds", "float64", ()),
    )


def provenance(cfg: SimulateConfig) -> dict:
    """What the manifest records of the simulation: the system, grid, times, sensors, parameter
    ranges and the constants of the energy balance."""
    dy, dx = cfg.spacing
    return {
        "system": "heated plate (docs/twin.md)",
        "params": param_table(cfg),
        "grid": {"H": cfg.grid[0], "W": cfg.grid[1], "dx": dx, "dy": dy, "height": cfg.size[0], "width": cfg.size[1]},
        "steps": cfg.steps,
        "dt_save": cfg.dt_save,
        "dt": cfg.solver_dt,
        "substeps": cfg.substeps,
        "dt_limit": cfg.dt_limit,
        "sensors": [list(s) for s in cfg.sensors],
        "units": {"params": "see params", "field": "K", "forcing": "W/m3", "sensors": "K", "sim_seconds": "s"},
        "constants": {
            "rho_c": cfg.rho_c,
            "thickness": cfg.thickness,
            "source_width": cfg.source_width,
            "conductivity": "k",
            "convection_coefficient": "h",
            "ambient_temperature": "t_inf",
            "edge_temperature": "t_edge",
            "faces": 2,
        },
        "seed": cfg.seed,
        "table": cfg.to_dict(),
    }


def simulate(
    job: Job,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    world: World | None = None,
    command: str | None = None,
    progress_seconds: float = PROGRESS_SECONDS,
) -> Manifest:
    """Run ``job.simulate``'s ensemble and write it to the dataset directory ``out``; collective.

    Returns the manifest on every rank. Raises :class:`TwinError` on every rank if any rank
    fails (nothing is left under ``out`` then), or when the job has no ``[simulate]`` table.
    Rank 0 logs a progress line (its scenarios done, the rate, the ETA) every
    ``progress_seconds``.
    """
    world = world or get_world()
    cfg = job.simulate
    if cfg is None:
        raise TwinError("the job has no [simulate] table (docs/twin.md)")
    out = Path(out).absolute()
    t0 = time.perf_counter()
    splits = assign_splits(cfg.scenarios, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    plans = plan_shards(splits, min(cfg.shards, cfg.scenarios))
    mine = shards_of_rank(plans, world.rank, world.size)
    fields = dataset_fields(cfg)
    plate = world.run(lambda: Plate(cfg, world.local_rank() if cfg.device == "cuda" else 0))
    log.info(
        "simulate %d scenarios (%s) of %d saved steps × %d solver steps (dt %.4g s, limit %.4g s) on a %d×%d grid "
        "-> %s in %d shards on %d rank(s)",
        cfg.scenarios,
        ", ".join(f"{s} {len(v)}" for s, v in splits.items()),
        cfg.steps,
        cfg.substeps,
        cfg.solver_dt,
        cfg.dt_limit,
        *cfg.grid,
        out,
        len(plans),
        world.size,
    )
    my_count = sum(len(p.indices) for p in mine)
    progress = Progress(
        my_count,
        f"simulate (rank 0: {my_count} of {cfg.scenarios} scenarios)",
        enabled=world.is_root,
        interval=progress_seconds,
        per_unit=1,
        unit="scenarios",
        log=log,
    )

    def read(indices: np.ndarray) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {f.name: [] for f in fields}
        for i in indices:
            params = draw_params(cfg, int(i))
            run = plate.run(params)
            if not np.isfinite(run.field).all():
                raise TwinError(f"scenario {int(i)}: the solver produced non-finite temperatures")
            rows["params"].append(params.astype(np.float32))
            rows["field"].append(run.field.astype(np.float32))
            rows["forcing"].append(run.forcing.astype(np.float32))
            rows["sensors"].append(run.sensors.astype(np.float32))
            rows["sim_seconds"].append(run.seconds)
            progress.update()
        return {f.name: np.asarray(rows[f.name], dtype=f.dtype).reshape(len(indices), *f.shape) for f in fields}

    with staging(world, out, "--out", overwrite, MANIFEST) as tmp:

        def write_mine():
            written = []
            for p in mine:
                shard = write_shard(tmp / p.file, fields, p.indices, read, piece=16)
                written.append((p.split, p.index, shard))
            return written

        written = world.run(write_mine)
        everything = [w for part in world.allgather(written) for w in part]
        seconds = world.allreduce(time.perf_counter() - t0, "max")
        split_infos = []
        for split in splits:
            shards = tuple(sh for _, _, sh in sorted((w for w in everything if w[0] == split), key=lambda w: w[1]))
            split_infos.append(SplitInfo(split, sum(s.count for s in shards), shards))
        manifest = Manifest(
            fields=fields,
            splits=tuple(split_infos),
            provenance={
                "source": "twinhpc simulate",
                "kind": "simulate",
                "command": command or " ".join(sys.argv),
                "twinhpc_version": __version__,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "seed": cfg.seed,
                "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction,
                "compression": "none",
                "ranks": world.size,
                "simulate": provenance(cfg),
            },
        )

        def finish():
            if world.is_root:
                manifest.save(tmp)
                install(tmp, out, "--out", overwrite, MANIFEST)

        world.run(finish)
    if world.is_root:
        log.info(
            "simulate done: %s (%d scenarios in %.1f s on %d rank(s): %.1f scenarios/s)",
            out,
            cfg.scenarios,
            seconds,
            world.size,
            cfg.scenarios / max(seconds, 1e-9),
        )
    return manifest
