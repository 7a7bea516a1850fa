"""``ingest hdf5`` under N ranks (1, 2, 3, ...): both layouts give the same dataset as one rank alone,
with the source's bytes; a bad file fails on every rank and leaves nothing.

Run unchanged with plain pytest (1 rank) and ``mpirun -n N python tests/run_mpi.py tests/mpi``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from tests import fixtures as fx
from tests.mpi.collective import collective, on_root
from twinhpc.comm.world import World
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.data.split import assign_splits
from twinhpc.errors import IngestError

LAYOUTS = {
    # name: (writer, --field values, key of the written samples)
    "1d-tensor": (lambda p: fx.write_pdebench_1d(p, n=61, t=5, x=12), ["u=tensor"], "tensor"),
    "2d-groups": (lambda p: fx.write_pdebench_2d(p, n=23, t=3, x=6, y=5, c=2), ["u=*/data"], "data"),
}


def leftovers(tmp):
    return sorted(n for n in os.listdir(tmp) if ".tmp-" in n or n.endswith(".part"))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_same_dataset_for_any_rank_count(world, shared_tmp, layout):
    write, fields, key = LAYOUTS[layout]
    src = shared_tmp / "sim.h5"
    written = on_root(world, lambda: write(src)[key])
    opts = dict(shards=4, val_fraction=0.2, test_fraction=0.1, seed=9, options={"field": fields})
    out = shared_tmp / f"ds-n{world.size}"
    m = collective(world, lambda: ingest("hdf5", src, out, world=world, **opts))
    on_root(world, lambda: ingest("hdf5", src, shared_tmp / "ds-ref", world=World(world.MPI.COMM_SELF), **opts))

    def body():
        ref = Manifest.load(shared_tmp / "ds-ref")
        for a, b in zip(ref.splits, m.splits, strict=True):
            assert a.shards == b.shards, f"split {a.name}: shards differ between 1 and {world.size} ranks"
        assert ref.provenance["details"] == m.provenance["details"]
        assert m.provenance["ranks"] == world.size
        for split, idx in assign_splits(len(written), 0.2, 0.1, 9).items():
            parts = []
            for sh in m.split(split).shards:
                with h5py.File(out / sh.file, "r") as f:
                    parts.append(f["u"][:])
            assert np.concatenate(parts).tobytes() == written[idx].tobytes(), split
        assert leftovers(shared_tmp) == []

    collective(world, body)


def test_disagreeing_arrays_fail_on_every_rank(world, shared_tmp):
    src = shared_tmp / "bad.h5"

    def write():
        with h5py.File(src, "w") as f:
            f["tensor"] = np.zeros((10, 3), np.float32)
            f["nu"] = np.zeros((9,), np.float32)

    on_root(world, write)

    def body():
        with pytest.raises(IngestError) as e:
            ingest("hdf5", src, shared_tmp / "out", world=world, options={"field": ["u=tensor", "nu=nu"]})
        assert f"{src}: arrays disagree in their first (sample) axis: /tensor has 10 rows, /nu has 9" in str(e.value)

    collective(world, body)
    collective(world, lambda: _check(not (shared_tmp / "out").exists() and leftovers(shared_tmp) == []))


def _check(ok):
    assert ok, "debris left behind"
