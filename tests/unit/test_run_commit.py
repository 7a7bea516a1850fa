"""One commit point for checkpoint and results: a crash at any instant between the run's writes
leaves a run whose ``--resume`` records exactly what an uninterrupted run records; a failed
write ends the run with one clear error and leaves it resumable; keep_best and
``--checkpoint best``.

A crash is modelled by copying the run directory at the instant in question (before and after
every rename and removal the run makes, :mod:`twinhpc.io.atomic`): the copy is what a SIGKILL
at that instant leaves on disk (temporaries, the dead process's lock and all). Each copy is
then resumed and compared with the uninterrupted run bit for bit.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from twinhpc.config import override
from twinhpc.errors import TwinError
from twinhpc.io import atomic
from twinhpc.io.checkpoint import list_checkpoints, select_checkpoint
from twinhpc.io.results import read_results
from twinhpc.io.rundir import LOCK, read_lock, stale_reason
from twinhpc.train import train

#: records that are wall-clock times, different in every run
TIMES = (
    "epoch_time_s",
    "samples_per_s",
    "step_time_s",
    "data_wait_s",
    "forward_backward_s",
    "communication_s",
    "optimizer_s",
)


@pytest.fixture(scope="module")
def job(small_image_job):
    """tests/conftest.py: 6 steps per epoch of 2; checkpoints at steps 4, 8 and 12, and at the end
    of an epoch that improves val_loss."""
    return small_image_job


def assert_same_records(run: Path, reference: Path, stale_lock_allowed: bool = False) -> None:
    """Every record but wall-clock times equal bit for bit, row for row; the same checkpoints
    with the same weights; no temporaries and no lock left (but a stale one, where allowed)."""
    a, b = read_results(run), read_results(reference)
    assert a["epochs"] == b["epochs"]
    for group in ("metrics", "steps"):
        assert set(a[group]) == set(b[group]), group
        for name in a[group]:
            if name not in TIMES:
                assert np.array_equal(a[group][name], b[group][name], equal_nan=True), f"{run}: /{group}/{name}"
    assert set(a["timing"]) == set(b["timing"]) and all(len(v) == b["epochs"] for v in a["timing"].values())
    for name in ("accuracy", "loss", "checkpoint", "checkpoint_step", "best_checkpoint"):
        assert a["report"][name] == b["report"][name], name
    assert [s for s, _ in list_checkpoints(run)] == [s for s, _ in list_checkpoints(reference)]
    for (_, pa), (_, pb) in zip(list_checkpoints(run), list_checkpoints(reference)):
        with h5py.File(pa) as fa, h5py.File(pb) as fb:
            for name in fb["model"]:
                assert np.array_equal(fa["model"][name][()], fb["model"][name][()]), f"{pa}: {name}"
    if stale_lock_allowed and (run / LOCK).exists():
        assert stale_reason(read_lock(run), run / LOCK) is not None
        (run / LOCK).unlink()
    left = [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK]
    assert not left, left


def test_a_crash_at_every_instant_of_the_commits_resumes_to_the_uninterrupted_run(job, tmp_path, monkeypatch):
    run = tmp_path / "run"
    crashes: list[Path] = []

    def snapshot(when: str) -> None:
        if run.is_dir():
            copy = tmp_path / f"crash-{len(crashes):02d}-{when}"
            shutil.copytree(run, copy)
            crashes.append(copy)

    real_replace, real_remove = atomic.replace_durably, atomic.remove_durably

    def replace(tmp, final):
        snapshot(f"before-rename-{final.name}")  # the temporary is complete, not yet renamed
        real_replace(tmp, final)
        snapshot(f"after-rename-{final.name}")

    def remove(path):
        real_remove(path)
        snapshot(f"after-remove-{path.name}")

    monkeypatch.setattr(atomic, "replace_durably", replace)
    monkeypatch.setattr(atomic, "remove_durably", remove)
    whole = train(job, run, progress=False)
    monkeypatch.undo()
    assert whole.status == "finished" and whole.step == 12
    names = [c.name for c in crashes]
    # checkpoint then results at each commit: 4, 6 (the best epoch so far: keep_best), 8, 12
    assert any("before-rename-step-4.h5" in n for n in names) and any("before-rename-results.h5" in n for n in names)
    assert len(crashes) >= 12, names
    for copy in crashes:
        resumed = train(job, copy, resume=True, progress=False)
        assert resumed.status in ("finished", "complete"), (copy.name, resumed.status)
        # a complete run is left untouched: the dead process's lock stays until a writer replaces it
        assert_same_records(copy, run, stale_lock_allowed=resumed.status == "complete")


@pytest.mark.parametrize("failing", ["checkpoint", "results"])
def test_a_write_that_fails_ends_the_run_with_one_error_and_resume_completes_it(job, tmp_path, monkeypatch, failing):
    """The k-th rename of a checkpoint (or of results.h5) fails with ENOSPC for every k: train
    raises one error naming the file and the last complete checkpoint, leaves no temporary and
    no lock, and --resume then records what an uninterrupted run records (or finds the run
    complete, when only the last write failed and the failed attempt's record completed it)."""
    reference = tmp_path / "whole"
    train(job, reference, progress=False)
    real_replace = atomic.replace_durably
    k = 0
    while True:
        k += 1
        run = tmp_path / f"fail-{k}"
        calls = 0

        def replace(tmp, final, k=k):
            nonlocal calls
            if (final.name == "results.h5") == (failing == "results"):
                calls += 1
                if calls == k:
                    raise OSError(errno.ENOSPC, "No space left on device")
            real_replace(tmp, final)

        monkeypatch.setattr(atomic, "replace_durably", replace)
        try:
            result = train(job, run, progress=False)
        except TwinError as e:
            message = str(e)
            assert message.startswith("cannot write ") and "No space left on device" in message, message
            assert ("ckpt/step-" if failing == "checkpoint" else "results.h5") in message.split("(")[0], message
            assert "--resume" in message, message
        else:
            assert result.status == "finished" and calls < k, (k, calls)
            break
        finally:
            monkeypatch.undo()
        left = [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK]
        assert not left, left
        # "complete": the write that failed was the last one, and the failed attempt's own record
        # (rank 0 writes results.h5 once more to close its /attempts row) completed results.h5
        resumed = train(job, run, resume=True, progress=False)
        assert resumed.status in ("finished", "complete"), resumed.status
        assert_same_records(run, reference, stale_lock_allowed=resumed.status == "complete")
    assert k > 4  # every commit was failed once


def test_keep_best_keeps_the_best_epoch_beside_the_newest_and_validate_uses_it(job, tmp_path):
    """keep_checkpoints 1: the newest checkpoint and the best epoch's stay; ``--checkpoint
    best`` is the step of the epoch whose val_loss is the lowest, and the reports say which
    checkpoint they used."""
    from twinhpc.train.predict import validate

    run = tmp_path / "run"
    frozen = override(job, {"train.epochs": 4, "optim.lr": 0.5})  # a large step: val_loss moves both ways
    train(frozen, run, progress=False)
    results = read_results(run)
    val_loss = results["metrics"]["val_loss"]
    best_epoch = int(np.argmin(val_loss))  # the first of equal minima, as early stopping counts it
    best_step = 6 * (best_epoch + 1)
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps == sorted({best_step, 24}), (steps, val_loss)
    path, which = select_checkpoint(run, "best")
    assert path.name == f"step-{best_step}.h5" and which == f"best, step {best_step}"
    assert results["report"]["best_checkpoint"] == f"ckpt/step-{best_step}.h5"
    assert results["report"]["checkpoint"] == "ckpt/step-24.h5"
    best = validate(frozen, run, checkpoint="best")
    last = validate(frozen, run, checkpoint="last")
    assert best["checkpoint"] == str(path) and best["which"] == f"best, step {best_step}"
    assert best["loss"] == pytest.approx(val_loss[best_epoch], rel=1e-6)
    assert last["loss"] == pytest.approx(val_loss[-1], rel=1e-6) and last["which"] == "last, step 24"


def test_keep_best_is_off_by_default_and_best_is_then_refused(job, tmp_path):
    plain = override(job, {"train.keep_best": None})
    assert not plain.train.keeps_best
    assert override(plain, {"train.metric": "accuracy"}).train.keeps_best
    assert override(plain, {"train.early_stopping": {"patience": 2}}).train.keeps_best
    train(plain, tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [12]
    with pytest.raises(TwinError, match=r"no best checkpoint kept \(train.keep_best was off\)"):
        select_checkpoint(tmp_path, "best")
