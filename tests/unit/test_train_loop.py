"""The training loop in one process: NaN/inf detection, early stopping, dropout, structure."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import prepare_image_job
from tests.fixtures import small_cnn_job
from twinhpc.comm.world import get_world
from twinhpc.config import load_job, override
from twinhpc.data.ingest import ingest
from twinhpc.data.loader import ShardedLoader
from twinhpc.io.checkpoint import list_checkpoints
from twinhpc.io.results import read_results
from twinhpc.preprocess import open_prepared, preprocess
from twinhpc.train import NonFiniteLoss, train
from twinhpc.train.model import build_model, set_dropout

JOB = small_cnn_job("{dir}/data", 0.1, "epochs = 3\ncheckpoint_every = 1\nkeep_checkpoints = 2")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """48 training and 16 validation 8×8 grey images of 3 classes, preprocessed."""
    job = prepare_image_job(tmp_path_factory.mktemp("loop"), JOB)
    return override(job, {"train.out": str(Path(job.data.dataset).parent / "run")})


def test_nan_loss_stops_naming_step_samples_and_last_good_checkpoint(job, tmp_path):
    exploding = override(job, {"optim.lr": 1e12, "optim.momentum": 0.0})
    with pytest.raises(NonFiniteLoss) as e:
        train(exploding, tmp_path, progress=False)
    message = str(e.value)
    m = re.search(
        r"loss is (\S+) at optimizer step (\d+) \(epoch (\d+), batch (\d+)\); samples (\[[\d, ]+\]) "
        r"of split 'train'; last good checkpoint: (\S+)",
        message,
    )
    assert m, message
    value, step, epoch, batch, samples, ckpt = m.groups()
    assert not np.isfinite(float(value))
    saved = list_checkpoints(tmp_path)
    assert saved and saved[-1][0] == int(step) - 1 and str(saved[-1][1]) == ckpt  # before the bad step
    loader = ShardedLoader(open_prepared(job).dataset_dir, "train", 8, seed=job.data.seed, size=1, rank=0)
    b = int(batch) - 1
    assert eval(samples) == loader.indices(int(epoch) - 1)[b * 8 : (b + 1) * 8].tolist()


def test_early_stopping_ends_after_patience_epochs_without_improvement(job, tmp_path):
    """lr=0: nothing improves after the first epoch, so patience 1 stops after epoch 2."""
    frozen = override(job, {"optim.lr": 1e-30, "train.early_stopping": {"patience": 1, "metric": "val_loss"}})
    result = train(frozen, tmp_path, progress=False)
    assert result.status == "early_stopped" and result.epoch == 2
    results = read_results(tmp_path)
    assert results["epochs"] == 2 and results["report"]["n"] == 16


def test_structure_defaults_come_from_the_data_and_the_job_wins(job):
    prep = open_prepared(job)
    model = build_model(job, prep)
    conv, last = model[0], model[-1]
    assert conv.in_channels == 1 and conv.out_channels == 4  # data: 1 channel; job: 4 filters
    assert last.out_features == len(prep.classes) == 3


def test_set_dropout_reaches_every_dropout_layer():
    model = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.Linear(2, 2),
        torch.nn.Dropout2d(0.3),
        torch.nn.MultiheadAttention(4, 2, dropout=0.0),
    )
    assert set_dropout(model, 0.25) == 3
    assert model[0].p == model[2].p == model[3].dropout == 0.25


def test_bf16_autocast_and_bf16_wire_track_the_float32_run(job, tmp_path):
    """``train.bf16`` (autocast) and ``train.wire_dtype = "bf16"`` run end to end, and the loss
    curve stays within bfloat16's precision of the float32 run's (same data, seeds and steps)."""
    reference = train(job, tmp_path / "fp32", progress=False)
    low = train(override(job, {"train.bf16": True, "train.wire_dtype": "bf16"}), tmp_path / "bf16", progress=False)
    assert low.status == reference.status == "finished", (low.status, reference.status)
    fp32, bf16 = read_results(tmp_path / "fp32")["metrics"], read_results(tmp_path / "bf16")["metrics"]
    assert np.all(np.isfinite(bf16["loss"])) and len(bf16["loss"]) == len(fp32["loss"])
    np.testing.assert_allclose(bf16["loss"], fp32["loss"], rtol=0.01)


@pytest.fixture
def no_tf32():
    """float32 means float32 on a GPU too (the matmul flag is read through a module
    __getattr__ that monkeypatch cannot restore, hence by hand)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize(
    "device",
    ["auto", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_device_runs_track_the_cpu_run(job, tmp_path, device, no_tf32):
    """``train.device``: the model and batches on the resolved device (``auto`` is the CPU
    without a GPU); validate and predict follow the job's device. The loss curve matches the
    CPU run's (exactly on the CPU; within float32 kernel differences on a GPU, with TF32 off:
    PyTorch lets cuDNN convolutions use TF32 by default, 10 bits of mantissa)."""
    from twinhpc.train.predict import validate

    cpu = train(job, tmp_path / "cpu", progress=False)
    other_job = override(job, {"train.device": device})
    other = train(other_job, tmp_path / device, progress=False)
    assert other.status == cpu.status == "finished"
    a, b = read_results(tmp_path / "cpu")["metrics"], read_results(tmp_path / device)["metrics"]
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
    report = validate(other_job, run=tmp_path / device)
    assert 0.0 <= report["accuracy"] <= 1.0


REGRESSION_JOB = """
[data]
dataset = "{dir}/data"
inputs = "x"
label = "target"
batch_size = 16
[model]
name = "mlp"
[model.structure]
hidden = [16]
dropout = 0.0
classes = 1
[optim]
name = "adam"
lr = 0.01
[train]
task = "regression"
loss = "mse"
metric = "rmse"
epochs = 6
"""


def test_regression_end_to_end(tmp_path):
    """A linear target of tabular features: the loss falls and the report has MAE/RMSE/R²."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(160, 5)).astype(np.float32)
    target = (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype=np.float32)).astype(np.float32)
    np.savez(tmp_path / "table.npz", x=x, target=target)
    world = get_world()
    ingest("npz", tmp_path / "table.npz", tmp_path / "data", options={"label": "target"}, world=world)
    (tmp_path / "job.toml").write_text(REGRESSION_JOB.format(dir=tmp_path))
    job = override(load_job(tmp_path / "job.toml"), {"train.out": str(tmp_path / "run")})
    preprocess(job, world=world)
    assert open_prepared(job).task == "regression"
    assert train(job, tmp_path / "run", progress=False).status == "finished"
    results = read_results(tmp_path / "run")
    loss, report = results["metrics"]["loss"], results["report"]
    assert loss[-1] < 0.5 * loss[0], loss
    assert {"mae", "rmse", "r2"} <= set(report) and report["r2"] > 0.5, report


class StopAtRead:
    """A StopSignal whose flag reads as set from its ``n``-th read on (the loop reads it once
    when it finishes each step, so from step ``n`` on)."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    @property
    def received(self):
        self.reads += 1
        return signal.SIGUSR2 if self.reads >= self.n else None

    def restore(self):
        pass


@pytest.mark.parametrize("flag_step,saved_step", [(3, 4), (6, 6)], ids=["mid-epoch", "epoch-end"])
def test_a_stop_checkpoints_after_the_next_step_and_the_resumed_run_equals_the_whole(
    job, tmp_path, monkeypatch, flag_step, saved_step
):
    """Step scalars are read one step late: a stop flag seen when step k is finished (during
    step k+1) checkpoints at the end of step k+1, or at once when k ends the epoch (6 steps);
    resuming from there records exactly what an uninterrupted run records."""
    import twinhpc.train.loop as loop

    rare = override(job, {"train.checkpoint_every": 1000, "train.log_every": 1})
    whole = train(rare, tmp_path / "whole", progress=False)
    monkeypatch.setattr(loop.StopSignal, "install", classmethod(lambda cls: StopAtRead(flag_step)))
    cut = train(rare, tmp_path / "cut", progress=False)
    assert cut.status == "preempted" and cut.step == saved_step
    assert [step for step, _ in list_checkpoints(tmp_path / "cut")] == [saved_step]
    monkeypatch.undo()
    resumed = train(rare, tmp_path / "cut", resume=True, progress=False)
    assert resumed.status == whole.status == "finished" and resumed.step == whole.step
    a, b = read_results(tmp_path / "cut"), read_results(tmp_path / "whole")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name
    for name in ("step", "loss", "lr"):
        assert np.array_equal(a["steps"][name], b["steps"][name]), name
    # one row per process: the stopped one, then the resumed one
    rows = [(r["reason"], r["first_step"], r["last_step"], r["ranks"]) for r in a["attempts"]]
    assert rows == [("preempted", 0, saved_step, 1), ("finished", saved_step, whole.step, 1)]
    assert a["attempts"][0]["end"] <= a["attempts"][1]["start"] <= a["attempts"][1]["end"]


def test_a_set_up_that_fails_after_the_engine_exists_releases_it_without_a_collective(job, tmp_path, monkeypatch):
    """The optimizer cannot be made: train() raises that error; the loaders are closed and the
    engine abandoned (local release), not left to the garbage collector."""
    import gc
    import warnings

    from twinhpc.comm.engine import Engine
    from twinhpc.train import run as run_module

    made, abandoned = [], []
    real_init, real_abandon = Engine.__init__, Engine.abandon
    monkeypatch.setattr(Engine, "__init__", lambda self, *a, **k: (made.append(self), real_init(self, *a, **k))[1])
    monkeypatch.setattr(Engine, "abandon", lambda self: (abandoned.append(self), real_abandon(self))[1])

    def broken_optimizer(*args, **kwargs):
        raise RuntimeError("no optimizer today")

    monkeypatch.setattr(run_module, "make_optimizer", broken_optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RuntimeError, match="no optimizer today"):
            train(job, tmp_path, progress=False)
        gc.collect()
    assert len(made) == 1 and abandoned == made
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and "Engine" in str(w.message)]


def test_a_signal_after_the_last_step_leaves_a_complete_run_and_exit_0(job, tmp_path, monkeypatch, cli):
    """SIGUSR2 arrives while the final report is written (training done): `twinhpc train`
    finishes the report and exits 0, noting the signal; the attempt is recorded as finished."""
    import os

    from twinhpc.train.run import TrainingRun

    final_report = TrainingRun.final_report

    def signalled(self, status):
        os.kill(os.getpid(), signal.SIGUSR2)  # the CLI's handler records it
        return final_report(self, status)

    monkeypatch.setattr(TrainingRun, "final_report", signalled)
    job_file = str(job.data.dataset).rsplit("/", 1)[0] + "/job.toml"
    r = cli("train", job_file, "--out", tmp_path / "run", "--set", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    assert "twinhpc train: SIGUSR2 received after the last training step: the run is complete" in r.stderr
    results = read_results(tmp_path / "run")
    assert results["report"] and [a["reason"] for a in results["attempts"]] == ["finished"]
