"""`twinhpc train | validate | predict` as a user runs them: real data, mpirun, signals, srun.

The digits job (jobs/digits.toml) is the fixture: scikit-learn's bundled 8×8 digits through the
image pipeline (jobs/digits_to_npz.py, `twinhpc ingest npz`, `twinhpc preprocess`), prepared
once per module in a temporary directory (the job file's paths are relative to it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.integration.procs import ENV, MPIRUN2, TWINHPC, run
from twinhpc.io.results import read_results

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "digits.toml"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A directory holding data/digits (ingested) and data/digits-pre (preprocessed)."""
    if not JOB.is_file():
        pytest.skip("jobs/digits.toml is not there")
    work = tmp_path_factory.mktemp("digits")
    run([sys.executable, ROOT / "jobs" / "digits_to_npz.py", "--out", "data/digits.npz"], work)
    run(
        TWINHPC
        + [
            "ingest",
            "npz",
            "data/digits.npz",
            "--out",
            "data/digits",
            "--label",
            "label",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0",
        ],
        work,
    )
    run(TWINHPC + ["preprocess", JOB], work)
    return work


@pytest.fixture(scope="module")
def trained(digits) -> Path:
    """`twinhpc train jobs/digits.toml` as the job file says (one process)."""
    t0 = time.perf_counter()
    r = run(TWINHPC + ["train", JOB], digits)
    return digits / "runs" / "digits", time.perf_counter() - t0, r


def test_digits_reach_95_percent_within_a_minute(trained):
    run_dir, seconds, r = trained
    results = read_results(run_dir)
    val_accuracy = results["metrics"]["val_accuracy"]
    assert val_accuracy[-1] >= 0.95, val_accuracy
    assert seconds < 60, f"training took {seconds:.1f} s"
    # one Keras-like line per epoch on rank 0's console, and the run's files
    epochs = results["epochs"]
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == epochs and all("val_accuracy: " in line and "samples/s" in line for line in lines)
    assert (run_dir / "logs" / "twinhpc-train.rank0.log").is_file()
    assert set(results["timing"]) == {"data_wait", "forward_backward", "communication", "optimizer"}
    assert results["report"]["split"] == "val" and results["report"]["confusion"].shape == (10, 10)
    assert results["report"]["accuracy"] == pytest.approx(val_accuracy[-1])


def test_validate_on_two_ranks_repeats_the_final_report(trained, digits):
    run_dir, _, _ = trained
    r = run(MPIRUN2 + TWINHPC + ["validate", JOB, "--run", run_dir, "--json"], digits)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    final = read_results(run_dir)["report"]
    assert report["n"] == final["n"] == 359
    assert report["accuracy"] == pytest.approx(final["accuracy"], abs=1e-12)
    assert np.array_equal(report["confusion"], final["confusion"])


def test_predict_on_two_ranks_equals_one_rank_in_order(trained, digits):
    run_dir, _, _ = trained
    for n, out in ((1, "p1.h5"), (2, "p2.h5")):
        launcher = MPIRUN2 if n == 2 else []
        run(
            launcher
            + TWINHPC
            + ["predict", JOB, "--run", run_dir, "--input", "data/digits", "--split", "val", "--out", out],
            digits,
        )
    with h5py.File(digits / "p1.h5") as a, h5py.File(digits / "p2.h5") as b:
        assert np.array_equal(a["index"][()], np.arange(359))
        assert np.array_equal(a["index"][()], b["index"][()])
        np.testing.assert_allclose(a["output"][()], b["output"][()], rtol=1e-5, atol=1e-6)
        assert np.array_equal(a["prediction"][()], b["prediction"][()])
        accuracy = (a["prediction"][()] == a["target"][()]).mean()
    assert accuracy == pytest.approx(read_results(run_dir)["report"]["accuracy"], abs=1e-12)


def test_sigusr2_mid_epoch_checkpoints_requeues_and_resumes_bit_identically(digits):
    """mpirun -n 2: SIGUSR2 during the (first and only) epoch of 44 steps → checkpoint, exit 255; --resume finishes; the
    parameters and every recorded metric equal an uninterrupted run's exactly."""
    opts = ["--set", "train.epochs=1", "--set", "train.log_every=1"]
    cut, whole = digits / "runs" / "cut", digits / "runs" / "whole"
    proc = subprocess.Popen(
        MPIRUN2 + TWINHPC + ["train", JOB, "--out", cut] + opts,
        cwd=digits,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    logs = [cut / "logs" / f"twinhpc-train.rank{r}.log" for r in (0, 1)]
    deadline = time.time() + 120
    while not all(p.is_file() and "training cnn" in p.read_text() for p in logs):  # handlers installed
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)  # mpirun forwards it to both ranks
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 255, output
    ((step, ckpt),) = [(int(p.stem.split("-")[1]), p) for p in (cut / "ckpt").glob("step-*.h5")]
    with h5py.File(ckpt) as f:
        consumed = json.loads(f.attrs["loader"])["batches_consumed"]
    assert 0 < consumed < 44 and f"step {step}" in output, "the checkpoint is not mid-epoch"

    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", cut, "--resume"] + opts, digits)
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", whole] + opts, digits)
    a, b = read_results(cut), read_results(whole)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name
    for name in ("step", "loss", "lr"):
        assert np.array_equal(a["steps"][name], b["steps"][name]), name
    with h5py.File(cut / "ckpt" / "step-44.h5") as fa, h5py.File(whole / "ckpt" / "step-44.h5") as fb:
        for group in ("model", "optimizer/state/0"):
            for name in fa[group]:
                assert np.array_equal(fa[group][name][()], fb[group][name][()]), f"{group}/{name}"


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool({"idle", "mix"} & set(r.stdout.split()))


@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)")
def test_srun_two_ranks_trains(digits):
    run(["srun", "-n", "2"] + TWINHPC + ["train", JOB, "--out", "runs/srun", "--set", "train.epochs=1"], digits)
    results = read_results(digits / "runs" / "srun")
    assert results["epochs"] == 1 and results["environment"]["ranks"][1]["rank"] == 1
    assert (digits / "runs" / "srun" / "logs" / "twinhpc-train.rank1.log").is_file()
