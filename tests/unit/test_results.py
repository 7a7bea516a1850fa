"""``RUN/results.h5``: what the writer records reads back, the layout matches the golden file, a
flush that fails leaves the previous file, resume drops records after the checkpoint."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from twinhpc.errors import TwinError
from twinhpc.io import results as results_mod
from twinhpc.io.results import ResultsWriter, read_results
from twinhpc.train.metrics import confusion_report

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "results-layout.txt"
CONFIG = json.dumps({"data": {"dataset": "d"}, "model": {"name": "cnn"}})
ENV = {"twinhpc": "0.1", "ranks": 2}


def small_run(run_dir: Path) -> ResultsWriter:
    """Three epochs of a 3-class run: metrics, timing, five step records, the final report and
    the one attempt that trained it."""
    w = ResultsWriter(run_dir, CONFIG, ENV)
    w.begin_attempt(job_id="4242", restart=0, host="node7", ranks=2, step=0, start=1000.0)
    for epoch in range(3):
        w.append_epoch(
            {
                "loss": 1.0 / (epoch + 1),
                "val_loss": 1.5 / (epoch + 1),
                "val_accuracy": 0.5 + 0.1 * epoch,
                "lr": 0.1,
                "epoch_time_s": 2.0,
                "samples_per_s": 500.0,
            },
            timing={"data_wait": 0.1, "forward_backward": 1.5, "communication": 0.3, "optimizer": 0.1},
        )
    w.append_steps(
        {"step": [10, 20, 30, 40, 50], "loss": [1.0, 0.9, 0.8, 0.7, 0.6], "lr": [0.1] * 5, "step_time_s": [0.02] * 5}
    )
    report = confusion_report(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3, ["cat", "dog", "emu"])
    w.write_report({**report, "loss": 0.4, "split": "val"})
    w.end_attempt("finished", 50, end=1060.0)
    w.flush()
    return w


def layout(path: Path) -> str:
    """The tree of an HDF5 file as text: groups with attribute names and types, datasets with
    dtype, shape, maximum shape and chunks (constant attributes with their values)."""
    lines = []

    def attrs(obj) -> str:
        parts = []
        for k in sorted(obj.attrs):
            v = obj.attrs[k]
            shown = f" = {(v.item() if isinstance(v, np.generic) else v)!r}" if k in ("format", "version") else ""
            parts.append(f"{k}: {type(v).__name__}{shown}")
        return f"  attrs: {', '.join(parts)}" if parts else ""

    def visit(name, obj):
        if isinstance(obj, h5py.Group):
            lines.append(f"/{name} group{attrs(obj)}")
        else:
            dtype = "str" if h5py.check_string_dtype(obj.dtype) else str(obj.dtype)
            extra = f" max {obj.maxshape} chunks {obj.chunks}" if obj.chunks else ""
            lines.append(f"/{name} {dtype} {obj.shape}{extra}{attrs(obj)}")

    with h5py.File(path, "r") as f:
        lines.append(f"/ group{attrs(f)}")
        f.visititems(visit)
    return "\n".join(lines) + "\n"


def test_layout_matches_the_golden_file(tmp_path):
    small_run(tmp_path)
    got = layout(tmp_path / "results.h5")
    if os.environ.get("TWINHPC_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    want = GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "written"))
    assert got == want, f"results.h5 layout changed (TWINHPC_UPDATE_GOLDEN=1 rewrites the golden file):\n{diff}"


def test_the_format_doc_shows_the_golden_layout():
    assert GOLDEN.read_text() in (ROOT / "docs" / "results-format.md").read_text()


def test_what_is_written_reads_back(tmp_path):
    small_run(tmp_path)
    r = read_results(tmp_path)  # a run directory or the file itself
    assert (r["format"], r["version"], r["epochs"]) == ("twinhpc-results", 1, 3)
    assert r["config"] == json.loads(CONFIG) and r["environment"] == ENV
    np.testing.assert_array_equal(r["metrics"]["loss"], [1.0, 0.5, 1 / 3])
    np.testing.assert_array_equal(r["timing"]["communication"], [0.3] * 3)
    np.testing.assert_array_equal(r["steps"]["step"], [10, 20, 30, 40, 50])
    assert r["steps"]["step"].dtype == np.int64 and r["metrics"]["lr"].dtype == np.float64
    assert r["report"]["classes"] == ["cat", "dog", "emu"] and r["report"]["split"] == "val"
    assert r["report"]["loss"] == 0.4 and r["report"]["accuracy"] == 0.75
    np.testing.assert_array_equal(r["report"]["confusion"], [[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_a_name_missing_from_some_rows_is_nan_there(tmp_path):
    w = ResultsWriter(tmp_path, CONFIG, ENV)
    w.append_epoch({"loss": 1.0})
    w.append_epoch({"loss": 0.5, "val_loss": 0.7})
    w.append_epoch({"val_loss": 0.6})
    w.append_steps({"step": [1], "loss": 2.0})
    w.append_steps({"step": [2, 3], "lr": [0.1, 0.2]})
    w.flush()
    r = read_results(tmp_path)
    np.testing.assert_array_equal(r["metrics"]["loss"], [1.0, 0.5, np.nan])
    np.testing.assert_array_equal(r["metrics"]["val_loss"], [np.nan, 0.7, 0.6])
    np.testing.assert_array_equal(r["steps"]["loss"], [2.0, np.nan, np.nan])
    np.testing.assert_array_equal(r["steps"]["lr"], [np.nan, 0.1, 0.2])
    with pytest.raises(ValueError, match="'loss' has 2 value"):
        w.append_steps({"step": [4], "loss": [1.0, 2.0]})


def test_a_failed_flush_leaves_the_previous_file(tmp_path, monkeypatch):
    w = small_run(tmp_path)
    before = read_results(tmp_path)
    w.append_epoch({"loss": 0.1})

    def broken(group, report):
        group.attrs["half"] = 1
        raise OSError("disk full")

    monkeypatch.setattr(results_mod, "_write_report", broken)
    with pytest.raises(OSError, match="disk full"):
        w.flush()
    assert sorted(os.listdir(tmp_path)) == ["results.h5"]
    after = read_results(tmp_path)
    assert after["epochs"] == before["epochs"] == 3


def test_resume_keeps_the_records_up_to_the_checkpoint(tmp_path):
    small_run(tmp_path)
    w = ResultsWriter(tmp_path, CONFIG, ENV, resume=True)
    assert w.epochs == 3
    w.truncate(epochs=2, step=30)
    w.append_epoch({"loss": 0.2, "val_loss": 0.3}, timing={"data_wait": 0.2})
    w.append_steps({"step": [40], "loss": [0.65]})
    w.flush()
    r = read_results(tmp_path)
    np.testing.assert_array_equal(r["metrics"]["loss"], [1.0, 0.5, 0.2])
    np.testing.assert_array_equal(r["metrics"]["lr"], [0.1, 0.1, np.nan])
    np.testing.assert_array_equal(r["timing"]["data_wait"], [0.1, 0.1, 0.2])
    np.testing.assert_array_equal(r["steps"]["step"], [10, 20, 30, 40])
    np.testing.assert_array_equal(r["steps"]["loss"], [1.0, 0.9, 0.8, 0.65])
    assert r["report"]["classes"] == ["cat", "dog", "emu"]


def test_attempts_are_rows_of_processes_kept_on_resume(tmp_path):
    """/attempts: one row per process; a resume keeps every row (truncate cuts records of
    training, not of attempts); a row left "running" by a process that died becomes "killed"."""
    small_run(tmp_path)
    assert read_results(tmp_path)["attempts"] == [
        {
            "job_id": "4242",
            "restart": 0,
            "host": "node7",
            "ranks": 2,
            "start": 1000.0,
            "end": 1060.0,
            "first_step": 0,
            "last_step": 50,
            "reason": "finished",
        }
    ]
    for restart, reason in ((1, None), (2, "preempted")):  # the first resumed process dies without a word
        w = ResultsWriter(tmp_path, CONFIG, ENV, resume=True)
        w.truncate(epochs=2, step=30)
        w.begin_attempt(job_id="4242", restart=restart, host="node8", ranks=2, step=30, start=2000.0 + restart)
        if reason:
            w.end_attempt(reason, 40)
        w.flush()
    rows = read_results(tmp_path)["attempts"]
    assert [(r["restart"], r["reason"], r["first_step"], r["last_step"]) for r in rows] == [
        (0, "finished", 0, 50),
        (1, "killed", 30, 30),
        (2, "preempted", 30, 40),
    ]
    assert np.isnan(rows[1]["end"]) and rows[2]["end"] >= rows[2]["start"] == 2002.0
    with pytest.raises(ValueError, match="end_attempt without begin_attempt"):
        ResultsWriter(tmp_path / "new", CONFIG, ENV).end_attempt("finished", 1)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(TwinError, match=rf"{tmp_path}/results.h5: no results file"):
        read_results(tmp_path)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(TwinError, match=rf"{garbage}: unreadable results file"):
        read_results(garbage)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "twinhpc-checkpoint"
    with pytest.raises(TwinError, match=rf"{other}: not a twinhpc results file"):
        read_results(other)
    small_run(tmp_path)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((tmp_path / "results.h5").read_bytes()[:3000])
    with pytest.raises(TwinError, match=rf"{truncated}: unreadable results file"):
        read_results(truncated)


def test_the_file_describes_itself(tmp_path, monkeypatch):
    """Every dataset has units and a description; /metrics/epoch numbers the rows from 1; the
    root names the command, version, source commit, and the start and end (ISO 8601 UTC), the
    end moved on by every flush and the start kept by a resume."""
    import datetime as dt

    from twinhpc import __version__

    clock = [1_800_000_000.0]
    monkeypatch.setattr(results_mod.time, "time", lambda: clock[0])
    w = ResultsWriter(tmp_path, CONFIG, ENV, command="twinhpc train job.toml --out 'my run'")
    w.append_epoch({"loss": 1.0, "val_f1": 0.5, "custom_s": 2.0}, timing={"data_wait": 0.1, "io_wait": 0.2})
    w.append_steps({"step": [1], "loss": [1.0]})
    w.flush()
    with h5py.File(tmp_path / "results.h5") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
        assert {n for n, _ in datasets} >= {"metrics/epoch", "metrics/val_f1", "timing/io_wait", "steps/step"}
        for name, ds in datasets:
            assert isinstance(ds.attrs["units"], str) and ds.attrs["units"], name
            assert isinstance(ds.attrs["description"], str) and len(ds.attrs["description"]) > 10, name
        assert f["metrics/epoch"].attrs["units"] == "1" and f["metrics/epoch"][()].tolist() == [1]
        assert f["timing/io_wait"].attrs["units"] == "s" and f["metrics/custom_s"].attrs["units"] == "s"
        assert "macro F1" in f["metrics/val_f1"].attrs["description"]
        assert "validation" in f["metrics/val_f1"].attrs["description"]
    r = read_results(tmp_path)
    assert r["command"] == "twinhpc train job.toml --out 'my run'" and r["twinhpc_version"] == __version__
    assert r["source_commit"] == results_mod.source_commit() and "epoch" not in r["metrics"]
    assert r["start_time"] == r["end_time"] == "2027-01-15T08:00:00Z"
    assert dt.datetime.fromisoformat(r["start_time"]).timestamp() == clock[0]

    clock[0] += 3600
    w.append_epoch({"loss": 0.5})
    w.flush()
    r = read_results(tmp_path)
    assert (r["start_time"], r["end_time"]) == ("2027-01-15T08:00:00Z", "2027-01-15T09:00:00Z")
    assert r["epoch"].tolist() == [1, 2] and r["epochs"] == 2
    clock[0] += 3600  # a resume from a checkpoint's records, or from the file, keeps the start
    for again in (
        ResultsWriter(tmp_path, CONFIG, ENV, rows=w.rows()),
        ResultsWriter(tmp_path, CONFIG, ENV, resume=True),
    ):
        again.flush()
        r = read_results(tmp_path)
        assert (r["start_time"], r["end_time"]) == ("2027-01-15T08:00:00Z", "2027-01-15T10:00:00Z")
        assert r["epoch"].tolist() == [1, 2] and set(r["metrics"]) == {"loss", "val_f1", "custom_s"}


def test_a_file_without_the_new_entries_still_reads(tmp_path):
    """A results.h5 written before /metrics/epoch and the root's run attributes existed."""
    small_run(tmp_path)
    with h5py.File(tmp_path / "results.h5", "a") as f:
        del f["metrics/epoch"]
        for k in ("command", "twinhpc_version", "source_commit", "start_time", "end_time"):
            del f.attrs[k]
    r = read_results(tmp_path)
    assert r["epoch"].tolist() == [1, 2, 3] and r["epochs"] == 3 and "epoch" not in r["metrics"]
    assert (r["command"], r["source_commit"], r["start_time"]) == ("", "unknown", "")


def test_command_line_and_source_commit(tmp_path):
    import subprocess

    assert results_mod.command_line(["/v/bin/twinhpc", "train", "a b.toml"]) == "twinhpc train 'a b.toml'"
    assert results_mod.command_line(["/src/twinhpc/__main__.py", "train", "j.toml"]) == "twinhpc train j.toml"
    assert results_mod.command_line(["prog.py", "-x"]) == "prog.py -x"
    # this checkout: what git says (a worktree's .git file, loose or packed refs)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    if head.returncode == 0:
        assert results_mod.source_commit() == head.stdout.strip()
    # not a checkout, a damaged one, a detached head, a packed ref: never an error
    assert results_mod.source_commit(tmp_path) == "unknown"
    (tmp_path / ".git").mkdir()
    assert results_mod.source_commit(tmp_path) == "unknown"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / ".git" / "HEAD").write_text(sha + "\n")
    assert results_mod.source_commit(tmp_path) == sha
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert results_mod.source_commit(tmp_path) == "unknown"
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert results_mod.source_commit(tmp_path) == sha
    (tmp_path / ".git" / "HEAD").write_bytes(b"\xff\xfe")
    assert results_mod.source_commit(tmp_path) == "unknown"
