"""The watchdog's decisions and lines (twinhpc.comm.watchdog), the stall timeout's default, the
fault hook, and World's agreement; one process. The aborts themselves run in real mpirun jobs:
tests/integration/test_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinhpc.comm import watchdog as wd
from twinhpc.config.defaults import STALL_TIMEOUT_ENV, STALL_TIMEOUT_S, stall_timeout
from twinhpc.errors import TwinError

ROOT = Path(__file__).resolve().parents[2]


# -- the stall timeout's default ----------------------------------------------------------------
def test_the_default_is_300_seconds_unless_the_environment_says_otherwise():
    assert stall_timeout({}) == STALL_TIMEOUT_S == 300.0
    assert stall_timeout({STALL_TIMEOUT_ENV: " 7.5 "}) == 7.5
    assert stall_timeout({STALL_TIMEOUT_ENV: "0"}) == 0.0
    assert stall_timeout({STALL_TIMEOUT_ENV: ""}) == 300.0


@pytest.mark.parametrize("bad", ["abc", "-1", "inf", "nan", "5s"])
def test_a_bad_environment_value_is_an_error_naming_the_variable(bad):
    with pytest.raises(TwinError, match=f"\\${STALL_TIMEOUT_ENV}: .*{bad!r}"):
        stall_timeout({STALL_TIMEOUT_ENV: bad})


def test_the_job_key_defaults_to_the_environment_and_the_job_file_wins(monkeypatch):
    from twinhpc.config import load_job

    job = ROOT / "jobs" / "digits.toml"
    monkeypatch.delenv(STALL_TIMEOUT_ENV, raising=False)
    assert load_job(job).train.stall_timeout == 300.0
    monkeypatch.setenv(STALL_TIMEOUT_ENV, "12")
    assert load_job(job).train.stall_timeout == 12.0
    assert load_job(job, ["train.stall_timeout=4"]).train.stall_timeout == 4.0
    with pytest.raises(TwinError, match="train.stall_timeout"):
        load_job(job, ["train.stall_timeout=-1"])


def test_world_and_engine_default_to_the_environment(monkeypatch):
    from mpi4py import MPI

    from twinhpc.comm.world import World

    monkeypatch.setenv(STALL_TIMEOUT_ENV, "9")
    assert World(MPI.COMM_SELF).stall_timeout == 9.0
    assert World(MPI.COMM_SELF, stall_timeout=3).stall_timeout == 3.0


# -- what the watchdog decides and says ---------------------------------------------------------
class FakeBoard:
    """The board's reading side, with records written by the test."""

    def __init__(self, records, unseen=0, exiting=False):
        self.records, self.unseen, self._exiting = records, unseen, exiting

    def snapshot(self):
        return [dict(r) for r in self.records]

    def exiting(self):
        return self._exiting


def record(rank, seq, name, *, inside=0, exiting=0, since=None, beat=None):
    now = time.monotonic()
    return {
        "rank": rank,
        "seq": seq,
        "name": name,
        "inside": inside,
        "exiting": exiting,
        "since": now if since is None else since,
        "beat": now if beat is None else beat,
    }


def waiting(board, *, seq=5, name="validation: rows", timeout=4.0, waited=0.0, rank=1):
    w = wd.Wait(rank, 2, seq, name, timeout, board)
    w.start = time.monotonic() - waited
    return w


def me(seq=5, name="validation: rows", **kw):
    return record(1, seq, name, inside=1, **kw)


def test_no_line_before_the_timeout_or_without_one():
    board = FakeBoard([record(0, 4, "step loss"), me()])
    dog = wd.Watchdog()
    assert dog.check(waiting(board, waited=3.0), time.monotonic()) is None
    assert dog.check(waiting(board, waited=99.0, timeout=0), time.monotonic()) is None


def test_a_stopped_rank_is_named_with_where_it_was():
    now = time.monotonic()
    board = FakeBoard([record(0, 4, "step loss", beat=now - 4.5), me()])
    line = wd.Watchdog().check(waiting(board, waited=4.2), now)
    assert line is not None and "\n" not in line
    assert line.startswith("twinhpc watchdog: rank 1 has waited 4.2 s (stall_timeout 4 s) in collective #5")
    assert (
        "'validation: rows' for rank 0 (rank 0: not responding for 4.5 s: stopped or hung; last entered #4 'step loss')"
        in line
    )
    assert line.endswith("aborting the job (MPI_Abort)")


def test_a_busy_rank_is_named_alive():
    now = time.monotonic()
    board = FakeBoard([record(0, 4, "step loss", since=now - 4.1), me()])
    line = wd.Watchdog().check(waiting(board, waited=4.5), now)
    assert "for rank 0 (rank 0: alive, outside collectives for 4.1 s; last entered #4 'step loss')" in line


def test_a_rank_in_another_collective_of_the_same_number_is_missing():
    board = FakeBoard([record(0, 5, "checkpoint: write", inside=1), me()])
    line = wd.Watchdog().check(waiting(board, waited=5.0), time.monotonic())
    assert "for rank 0 (rank 0: alive, waiting in #5 'checkpoint: write')" in line


def test_a_rank_that_arrived_or_passed_is_not_missing():
    for other in (record(0, 5, "validation: rows", inside=1), record(0, 6, "report: write")):
        board = FakeBoard([other, me()])
        line = wd.Watchdog().check(waiting(board, waited=5.0), time.monotonic())
        assert "(every rank on this node has entered it)" in line, line


def test_ranks_on_other_nodes_are_counted_not_named():
    board = FakeBoard([record(0, 5, "validation: rows"), me()], unseen=6)
    line = wd.Watchdog().check(waiting(board, waited=5.0), time.monotonic())
    assert "every rank on this node has entered it; 6 rank(s) on other nodes not visible here" in line


def test_without_a_board_the_bound_still_holds():
    line = wd.Watchdog().check(waiting(None, waited=5.0), time.monotonic())
    assert line is not None and "no arrival board" in line


def test_a_missing_rank_that_is_exiting_ends_the_wait_at_once():
    board = FakeBoard([record(0, 5, "exit", inside=1, exiting=1), me()])
    line = wd.Watchdog().check(waiting(board, waited=0.3), time.monotonic())
    assert line is not None
    assert "rank 1 waits in collective #5 'validation: rows' for rank 0, which is exiting without it" in line
    # ... but not while this rank is exiting too: the exit barrier waits for the others
    board = FakeBoard([record(0, 5, "exit", inside=1, exiting=1), me()], exiting=True)
    assert wd.Watchdog().check(waiting(board, waited=0.3), time.monotonic()) is None


def test_a_wait_entered_while_handling_an_error_says_so():
    w = waiting(None, waited=5.0)
    w.handling = "TwinError: rank 0: disk full"
    assert "(entered while handling TwinError: rank 0: disk full)" in wd.Watchdog().check(w, time.monotonic())


# -- the board itself (one rank) ----------------------------------------------------------------
def test_a_board_records_this_ranks_collective():
    from mpi4py import MPI

    board = wd.Board(MPI.COMM_SELF)
    try:
        board.enter(3, "checkpoint: path")
        (rec,) = board.snapshot()
        assert (rec["rank"], rec["seq"], rec["name"], rec["inside"], rec["exiting"]) == (0, 3, "checkpoint: path", 1, 0)
        board.leave()
        board.mark_exiting()
        (rec,) = board.snapshot()
        assert rec["inside"] == 0 and rec["exiting"] == 1 and board.exiting()
    finally:
        board.free()
    assert board.snapshot() == []


# -- the fault hook ------------------------------------------------------------------------------
def test_fault_specs_are_checked():
    f = wd._parse_fault("1:checkpoint:stop:2")
    assert (f.rank, f.point, f.action, f.nth) == (1, "checkpoint", "stop", 2)
    assert wd._parse_fault("0:step:kill").nth == 1
    assert wd._parse_fault("0:step:hold:12").action == "hold"
    for bad in ("1:nowhere:stop", "x:step:stop", "0:step:explode", "0:step:stop:0", "0:step", "0:step:stop:1:2"):
        with pytest.raises(TwinError, match=r"\$TWINHPC_FAULT: expected RANK:POINT:ACTION\[:N\]"):
            wd._parse_fault(bad)


def test_the_fault_hook_acts_on_its_rank_at_its_pass_only(monkeypatch):
    monkeypatch.setattr(wd, "_fault_read", False)
    monkeypatch.setenv(wd.FAULT_ENV, "0:validation:raise:2")
    wd.fault_point("step")  # another point
    wd.fault_point("validation")  # the first pass
    with pytest.raises(TwinError, match="injected fault at 'validation' on rank 0"):
        wd.fault_point("validation")
    wd.fault_point("validation")  # the third: only the second acts
    monkeypatch.setattr(wd, "_fault_read", False)
    monkeypatch.setenv(wd.FAULT_ENV, "1:validation:raise")
    wd.fault_point("validation")  # another rank's fault
    monkeypatch.setattr(wd, "_fault_read", False)
    monkeypatch.delenv(wd.FAULT_ENV)
    wd.fault_point("validation")


HOLD = """
import sys
from twinhpc import signals
from twinhpc.comm import watchdog
signals.install()
watchdog.fault_point("step")
print("passed, signal", signals.received(), flush=True)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_hold_fault_stops_and_once_continued_waits_for_a_stop_signal():
    """``hold``: SIGSTOP at the point; a SIGCONT alone does not let the process pass it, the
    stop signal that follows does (the order Slurm sends them in when it requeues a job)."""
    env = {**os.environ, wd.FAULT_ENV: "0:step:hold"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _state(proc.pid) != "T":
            assert proc.poll() is None and time.monotonic() < deadline, "never stopped"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.5)
        assert proc.poll() is None and _state(proc.pid) != "T", "passed the point without a stop signal"
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.strip() == f"passed, signal {int(signal.SIGTERM)}", out


# -- agreeing on failure (one rank) --------------------------------------------------------------
def test_run_turns_an_os_error_into_an_agreed_twin_error(tmp_path):
    from mpi4py import MPI

    from twinhpc.comm.world import World

    world = World(MPI.COMM_SELF)
    with pytest.raises(TwinError, match="FileNotFoundError: .*nowhere") as info:
        world.run(lambda: open(tmp_path / "nowhere" / "f", "w"), name="write")
    assert World.agreed(info.value)
    assert not World.agreed(TwinError("raised on one rank")) and not World.agreed(None)
    assert world.run(lambda: 5) == 5
