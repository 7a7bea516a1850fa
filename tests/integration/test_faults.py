"""Fault injection under ``mpirun -n 2``: no fault makes a job hang.

Each case is a real 2-rank ``twinhpc train`` of the digits job (jobs/digits.toml, prepared once
per module as in test_train_cli.py) with ``TWINHPC_STALL_TIMEOUT`` of a few seconds. The test
hook ``TWINHPC_FAULT=RANK:POINT:ACTION[:N]`` (twinhpc.comm.watchdog) makes one rank stop
(SIGSTOP), die (SIGKILL) or raise at a named point: a training step, validation, a checkpoint.
Without the hook: a file in the way of the run directory, and a full disk (a small tmpfs).

Every case must end with a non-zero status within stall_timeout + 10 s of the fault, name the
rank at fault in its output, and leave no process behind (every process the job started carries
a tag in its environment; leftovers are killed in a ``finally`` and fail the test).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import procs

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "digits.toml"
STALL_S = 6.0  # the stall timeout of every job here
MARGIN_S = 10.0  # what a job may take beyond it to end
ENV = {**procs.ENV, "TWINHPC_STALL_TIMEOUT": str(STALL_S)}
ENV.pop("TWINHPC_FAULT", None)
TWINHPC, MPIRUN2 = procs.TWINHPC, procs.MPIRUN2
TAG = "TWINHPC_FAULT_TEST_TAG"


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float  # from the fault (its line, else the start) to the job's end
    total: float  # from the start to the end


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment holds ``TAG=tag`` (those the job started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{TAG}={tag}".encode() in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def launch(args: list, cwd: Path, env: dict | None = None, fault_marker: str = "TWINHPC_FAULT:") -> Outcome:
    """Run ``args`` in a session of its own; time the end from the first output line holding
    ``fault_marker``. Fails on a hang (180 s) or a process left behind."""
    tag = uuid.uuid4().hex
    full_env = {**ENV, **(env or {}), TAG: tag}
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(a) for a in args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    leftovers: list[int] = []
    try:
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the job hung:\n" + "".join(line for _, line in lines)[-5000:])
        end = time.monotonic()
        reader.join(timeout=10)
        deadline = time.monotonic() + 5
        while (leftovers := tagged_pids(tag)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for pid in tagged_pids(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    output = "".join(line for _, line in lines)
    assert not leftovers, f"processes left behind: {leftovers}\n{output}"
    marked = [t for t, line in lines if fault_marker in line]
    return Outcome(proc.returncode, output, end - (marked[0] if marked else t0), end - t0)


def run_ok(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """data/digits (ingested) and data/digits-pre (preprocessed) in a module directory, and one
    uninterrupted 2-rank run (runs/clean), which also fills the all-reduce tuning cache."""
    if not JOB.is_file():
        pytest.skip("jobs/digits.toml is not there")
    work = tmp_path_factory.mktemp("faults")
    ENV["TWINHPC_CACHE"] = str(work / "cache")
    run_ok([sys.executable, ROOT / "jobs" / "digits_to_npz.py", "--out", "data/digits.npz"], work)
    ingest = ["ingest", "npz", "data/digits.npz", "--out", "data/digits", "--label", "label"]
    run_ok(TWINHPC + ingest + ["--val-fraction", "0.2", "--test-fraction", "0"], work)
    run_ok(TWINHPC + ["preprocess", JOB], work)
    run_ok(MPIRUN2 + TWINHPC + ["train", JOB, "--out", "runs/clean", "--set", "train.epochs=1"], work)
    return work


def train_args(out: str) -> list:
    return MPIRUN2 + TWINHPC + ["train", JOB, "--out", out, "--set", "train.epochs=2"]


def test_a_clean_run_is_not_aborted_and_records_the_stall_timeout(digits):
    """The watched regions do not abort a healthy job whose stall timeout is a few seconds."""
    from twinhpc.io.results import read_results

    results = read_results(digits / "runs" / "clean")
    assert results["epochs"] == 1
    assert results["config"]["train"]["stall_timeout"] == STALL_S


#: (point, the N-th time it is reached): a step a few steps in, the first validation, the first checkpoint
POINTS = {"step": 3, "validation": 1, "checkpoint": 1}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("action", ["stop", "kill"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_stopped_or_killed_rank_ends_the_job_naming_it(digits, rank, action, point):
    fault = f"{rank}:{point}:{action}:{POINTS[point]}"
    o = launch(train_args(f"runs/{action}-{rank}-{point}"), digits, {"TWINHPC_FAULT": fault})
    print(f"MATRIX rank {rank} {action} {point}: exit {o.returncode} after {o.seconds:.1f} s (total {o.total:.1f} s)")
    assert f"TWINHPC_FAULT: rank {rank} {action}s at {point!r}" in o.output, o.output
    assert o.returncode != 0, o.output
    assert o.seconds < STALL_S + MARGIN_S, f"{o.seconds:.1f} s\n{o.output}"
    if action == "kill":  # Open MPI ends the job and names the dead process
        assert f"process rank {rank} " in o.output, o.output
    else:  # a waiting rank's watchdog, or rank 0's stall inspector, names the stopped rank
        named = (
            f"for rank {rank} (rank {rank}: not responding",
            f"missing ranks: [{rank}]",
        )
        assert any(n in o.output for n in named), o.output
        assert o.seconds > STALL_S - 1, f"aborted before the stall timeout: {o.seconds:.1f} s\n{o.output}"


@pytest.mark.parametrize(("rank", "point"), [(1, "step"), (0, "validation")])
def test_an_error_on_one_rank_ends_the_job_at_once_naming_it(digits, rank, point):
    """A rank that raises alone exits; the other, waiting for it, sees it exiting and aborts."""
    o = launch(train_args(f"runs/raise-{rank}-{point}"), digits, {"TWINHPC_FAULT": f"{rank}:{point}:raise:1"})
    print(f"MATRIX rank {rank} raise {point}: exit {o.returncode} after {o.seconds:.1f} s (total {o.total:.1f} s)")
    assert o.returncode != 0, o.output
    assert f"[rank {rank}] twinhpc train: error: injected fault at {point!r} on rank {rank}" in o.output, o.output
    assert f"for rank {rank}, which is exiting" in o.output, o.output
    assert o.seconds < STALL_S, f"{o.seconds:.1f} s\n{o.output}"


def test_a_file_in_the_way_of_the_run_directory_fails_on_every_rank_naming_rank_0(digits):
    (digits / "blocker").write_text("not a directory\n")
    o = launch(train_args("blocker/run"), digits, fault_marker="twinhpc train: error:")
    print(f"MATRIX unwritable --out: exit {o.returncode} after {o.seconds:.1f} s (total {o.total:.1f} s)")
    assert o.returncode == 2, o.output
    for r in (0, 1):  # the same agreed error on both ranks, on one line: rank 0 could not write
        assert re.search(rf"\[rank {r}\] twinhpc train: error: rank 0: [^\n]*Not a directory", o.output), o.output
    assert "blocker/run" in o.output and "MPI_ABORT" not in o.output, o.output
    assert o.seconds < MARGIN_S, o.output


def test_a_full_disk_fails_on_every_rank_naming_rank_0(digits):
    mnt = digits / "full"
    mnt.mkdir(exist_ok=True)
    # the checkpoint of the digits CNN with AdamW's state is several hundred KiB: it cannot fit
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        o = launch(train_args(f"{mnt.name}/run"), digits, fault_marker="twinhpc train: error:")
        print(f"MATRIX full disk: exit {o.returncode} after {o.seconds:.1f} s (total {o.total:.1f} s)")
        assert o.returncode == 2, o.output
        for rank in (0, 1):  # one line each, naming rank 0 and the cause: found by the check of the free
            # space before the first step, or (a disk that fills later) by the write that fails
            line = rf"\[rank {rank}\] twinhpc train: error: rank 0: [^\n]*(No space left on device|MiB free, but)"
            assert re.search(line, o.output), o.output
        assert "MPI_ABORT" not in o.output, o.output
        assert o.seconds < MARGIN_S, o.output
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
