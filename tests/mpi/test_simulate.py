"""``twinhpc simulate`` under N ranks (1, 2, 3, ...): the same dataset for every N, byte for byte
but for the wall times; an error on any rank leaves nothing behind.

Run unchanged with plain pytest (1 rank) and ``mpirun -n N python tests/run_mpi.py tests/mpi``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from tests.mpi.collective import collective, on_root
from twinhpc.comm.world import World
from twinhpc.config import load_job, override
from twinhpc.data.format import Manifest
from twinhpc.data.inspect import verify_dataset
from twinhpc.errors import TwinError
from twinhpc.sim.ensemble import simulate
from twinhpc.sim.plate import Plate, draw_params

JOB = Path(__file__).resolve().parents[2] / "jobs" / "plate.toml"
#: small and uneven: 11 train scenarios in 3 shards, val and test 1 each; unequal shares per rank
SMALL = {"simulate.scenarios": 13, "simulate.grid": [9, 11], "simulate.steps": 4, "simulate.shards": 3}

#: provenance entries that say how and when the dataset was made, not what it holds
RUN_KEYS = ("command", "created", "ranks")


def small_job():
    return override(load_job(JOB), SMALL)


def comparable_bytes(directory: Path, manifest: Manifest, scratch: Path) -> dict[str, bytes]:
    """Each shard's bytes with ``sim_seconds`` (wall times) overwritten by zeros in place, and the
    manifest without its run entries and checksums."""
    out = {}
    for split in manifest.splits:
        for sh in split.shards:
            copy = scratch / sh.file
            shutil.copyfile(directory / sh.file, copy)
            with h5py.File(copy, "r+") as f:
                f["sim_seconds"][...] = 0.0
            out[sh.file] = copy.read_bytes()
    d = manifest.to_dict()
    for key in RUN_KEYS:
        d["provenance"].pop(key)
    for split in d["splits"].values():
        for sh in split["shards"]:
            sh.pop("sha256")
    out["manifest"] = json.dumps(d, sort_keys=True).encode()
    return out


def test_the_dataset_is_the_same_for_any_rank_count(world, shared_tmp):
    job = small_job()
    out_n = shared_tmp / f"plate-n{world.size}"
    manifest = collective(world, lambda: simulate(job, out_n, world=world))
    on_root(world, lambda: simulate(job, shared_tmp / "plate-ref", world=World(world.MPI.COMM_SELF)))
    _, problems, warnings = verify_dataset(out_n, world)

    def body():
        if world.rank != 0:
            return
        ref = Manifest.load(shared_tmp / "plate-ref")
        assert manifest.provenance["ranks"] == world.size
        assert problems == [] and warnings == []
        for scratch in ("bytes-n", "bytes-ref"):
            (shared_tmp / scratch).mkdir()
        got = comparable_bytes(out_n, manifest, shared_tmp / "bytes-n")
        want = comparable_bytes(shared_tmp / "plate-ref", ref, shared_tmp / "bytes-ref")
        assert got.keys() == want.keys() and len(got) == 6  # train 3 shards, val 1, test 1; the manifest
        for key in got:
            assert got[key] == want[key], f"{key} differs between {world.size} rank(s) and 1"
        # each scenario once, with the parameters of (seed, i), and a wall time recorded
        cfg = job.simulate
        seen = []
        for split in manifest.splits:
            for sh in split.shards:
                with h5py.File(out_n / sh.file, "r") as f:
                    seen += [p.tolist() for p in f["params"][...]]
                    assert (f["sim_seconds"][...] > 0).all()
                    fields, sensors = f["field"][...], f["sensors"][...]
                    assert np.allclose(sensors, Plate(cfg).sensors(fields.astype(np.float64)), atol=1e-3)
        want_params = [draw_params(cfg, i).astype(np.float32).tolist() for i in range(cfg.scenarios)]
        assert sorted(seen) == sorted(want_params)

    collective(world, body)


def test_an_error_on_one_rank_leaves_nothing(world, shared_tmp, monkeypatch):
    """A failure while the last rank simulates ends every rank with the same error naming it; no
    dataset and no temporary directory is left."""
    job = small_job()
    last = world.size - 1
    if world.rank == last:
        import twinhpc.sim.ensemble as ens

        def broken(self, params, u0=None, extra=()):
            raise TwinError("scenario broke on purpose")

        monkeypatch.setattr(ens.Plate, "run", broken)
    out = shared_tmp / "plate"

    def body():
        try:
            simulate(job, out, world=world)
        except TwinError as e:
            assert "scenario broke on purpose" in str(e) and (world.size == 1 or f"rank {last}" in str(e))
        else:
            raise AssertionError("no error")

    collective(world, body)
    world.barrier()

    def nothing_left():
        assert os.listdir(shared_tmp) == []

    collective(world, nothing_left)
