"""Trials trained in segments (``train --until-epoch``), the sweep's driver on the debug
executor: a whole sweep, a driver stopped and a new one finishing it (every segment run once),
settling the trials a dead driver left running, and the driver's lock."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import prepare_image_job
from tests.fixtures import small_cnn_job
from twinhpc.io.checkpoint import latest
from twinhpc.io.results import read_results
from twinhpc.train import train


@pytest.fixture(scope="module")
def nine_epoch_job(tmp_path_factory):
    """The tiny CNN job on 48 training images, 9 epochs of 6 steps, a cosine schedule over them."""
    body = small_cnn_job("{dir}/data", 0.05, "epochs = 9\ncheckpoint_every = 4\nkeep_checkpoints = 1\nlog_every = 1")
    body = body.replace('[optim]\nname = "sgd"', '[optim]\nname = "sgd"\nschedule = "cosine"')
    return prepare_image_job(tmp_path_factory.mktemp("nine-epochs"), body)


def weights(run) -> dict[str, np.ndarray]:
    with h5py.File(latest(run), "r") as f:
        return {name: ds[()] for name, ds in f["model"].items()}


def test_segments_1_3_9_equal_one_uninterrupted_run(nine_epoch_job, tmp_path):
    whole = train(nine_epoch_job, tmp_path / "whole", progress=False)
    assert whole.status == "finished" and whole.epoch == 9
    seg = tmp_path / "seg"
    first = train(nine_epoch_job, seg, progress=False, until_epoch=1)
    assert (first.status, first.epoch) == ("until_epoch", 1)
    assert read_results(seg)["epochs"] == 1 and not read_results(seg)["report"]
    again = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=1)  # at epoch 1 already
    assert (again.status, again.epoch) == ("complete", 1)
    mid = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=3)
    assert (mid.status, mid.epoch, read_results(seg)["epochs"]) == ("until_epoch", 3, 3)
    last = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=9)
    assert (last.status, last.step) == ("finished", whole.step)
    a, b = read_results(seg), read_results(tmp_path / "whole")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name
    for name in ("step", "loss", "lr"):
        assert np.array_equal(a["steps"][name], b["steps"][name]), name
    wa, wb = weights(seg), weights(tmp_path / "whole")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert [r["reason"] for r in a["attempts"]] == ["until_epoch", "until_epoch", "finished"]
    assert a["report"]["checkpoint_step"] == whole.step


def test_until_epoch_through_the_command_line(nine_epoch_job, tmp_path, cli):
    job_file = Path(nine_epoch_job.data.dataset).parent / "job.toml"  # prepare_image_job wrote it
    run = tmp_path / "run"
    r = cli("train", job_file, "--out", run, "--until-epoch", 2)
    assert r.returncode == 0, r.stderr
    assert "stopped at epoch 2 of 9 (--until-epoch)" in r.stdout
    assert "stopped at epoch 2 of 9 (--until-epoch)" in (run / "logs" / "twinhpc-train.rank0.log").read_text()
    r = cli("train", job_file, "--out", run, "--resume", "--until-epoch", 1)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert read_results(run)["epochs"] == 2


def test_early_stopping_before_the_segment_end_exits_0(nine_epoch_job, tmp_path):
    from twinhpc.config import override

    job = override(nine_epoch_job, {"train.early_stopping.patience": 1, "train.early_stopping.min_delta": 100.0})
    result = train(job, tmp_path / "es", progress=False, until_epoch=5)
    assert result.status == "early_stopped" and result.epoch == 2
    assert read_results(tmp_path / "es")["attempts"][-1]["reason"] == "early_stopped"
