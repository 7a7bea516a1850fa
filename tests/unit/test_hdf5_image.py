"""``io.atomic.hdf5_image``: HDF5 files built in memory and written with Python's I/O, so a full
disk is an ``OSError`` and the interpreter still exits cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from twinhpc.io.atomic import hdf5_image

FULL = Path("/dev/full")


def test_the_image_is_an_hdf5_file_that_h5py_reads(tmp_path):
    out = tmp_path / "a.h5"
    with hdf5_image(out, track_order=True) as f:
        f.attrs["x"] = 3
        f.create_dataset("g/d", data=np.arange(10.0))
    with h5py.File(out, "r") as f:
        assert f.attrs["x"] == 3
        np.testing.assert_array_equal(f["g/d"][()], np.arange(10.0))


def test_an_existing_file_is_edited_in_memory_and_left_unchanged_on_disk(tmp_path):
    base = tmp_path / "base.h5"
    with h5py.File(base, "w") as f:
        f["old"] = np.ones(3)
    before = base.read_bytes()
    out = tmp_path / "edited.h5"
    with hdf5_image(out, base=base) as f:
        f["new"] = np.zeros(2)
    assert base.read_bytes() == before
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["new", "old"]


def test_an_error_in_the_block_writes_nothing(tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(RuntimeError), hdf5_image(out) as f:
        f["d"] = np.ones(3)
        raise RuntimeError("boom")
    assert not out.exists()


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")
def test_a_full_disk_is_an_oserror_and_the_process_exits_cleanly():
    # /dev/full answers every write with ENOSPC, as a full file system does
    child = textwrap.dedent(
        f"""
        import errno
        from pathlib import Path
        import numpy as np
        from twinhpc.io.atomic import hdf5_image
        try:
            with hdf5_image(Path({str(FULL)!r})) as f:
                for i in range(20):
                    f.create_dataset(f"d{{i}}", data=np.random.rand(1000, 100))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            print("ENOSPC")
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ENOSPC"
    assert "HDF5" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
