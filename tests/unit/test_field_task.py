"""The field task on one process: what ``preprocess`` fits for it (against numpy), how a batch of
scenarios becomes training chains, the job errors of a field job, and the rollout of a trained
checkpoint (shapes, de-normalisation recomputed by hand, bad arguments). Learning, nRMSE,
multi-rank training and resume: tests/mpi/test_field.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.fixtures import field_job, heat_ensemble
from twinhpc.comm.world import get_world
from twinhpc.config import JobFileError, load_job
from twinhpc.data.ingest import ingest
from twinhpc.data.loader import ShardedLoader
from twinhpc.errors import TwinError
from twinhpc.preprocess import open_prepared, preprocess
from twinhpc.preprocess.transform import Field
from twinhpc.train import train
from twinhpc.train.field import FieldTask
from twinhpc.train.rollout import load_surrogate, rollout

N, STEPS, GRID = 16, 6, 12


@pytest.fixture(scope="module")
def heat(tmp_path_factory):
    """A heat ensemble of 16 scenarios (12 training, 4 validation), ingested; its source arrays."""
    work = tmp_path_factory.mktemp("field")
    arrays = heat_ensemble(N, STEPS, GRID, seed=2)
    np.savez(work / "heat.npz", **arrays)
    ingest("npz", work / "heat.npz", work / "data", val_fraction=0.25, test_fraction=0.0, world=get_world())
    return work, arrays


def write_job(work, name: str, structure: str = "width = 4\nmodes = 3\nlayers = 1\nprojection = 8", **kw):
    (work / f"{name}.toml").write_text(field_job(str(work / "data"), structure=structure, **kw))
    return load_job(work / f"{name}.toml")


def split_arrays(directory, split: str) -> dict[str, np.ndarray]:
    loader = ShardedLoader(directory, split, 1, fields=("field", "forcing", "params"), prefetch=0, rank=0, size=1)
    with loader:
        loader.set_epoch(0)
        rows = list(loader)
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def trained(heat):
    """A one-epoch fno2d run on the ensemble."""
    work, _ = heat
    job = write_job(work, "job", train="epochs = 1")
    preprocess(job, world=get_world())
    train(job, work / "run", progress=False)
    return work, job


def test_preprocess_fits_the_field_statistics_of_the_training_split(trained):
    work, job = trained
    prep = open_prepared(job)
    assert isinstance(prep.field, Field) and prep.kind == "field" and prep.label is None
    assert prep.model_defaults["in_channels"] == 1 + 1 + 2 and prep.model_defaults["out_channels"] == 1
    t = split_arrays(work / "data", "train").copy()
    u = t["field"].astype(np.float64)
    st = prep.field.stats
    np.testing.assert_allclose([st["state_mean"], st["state_std"]], [u.mean(), u.std()], rtol=1e-10)
    du = np.diff(u, axis=1)
    np.testing.assert_allclose([st["step_mean"], st["step_std"]], [du.mean(), du.std()], rtol=1e-9)
    f = t["forcing"].astype(np.float64)
    np.testing.assert_allclose([st["forcing_mean"], st["forcing_std"]], [f.mean(), f.std()], rtol=1e-10)
    p = t["params"].astype(np.float64)
    np.testing.assert_allclose(st["params_mean"], p.mean(0), rtol=1e-10)
    np.testing.assert_allclose(st["params_std"], p.std(0), rtol=1e-10)
    # a batch is the normalised fields, by role
    x, y = prep.transform({"field": t["field"][:2], "forcing": t["forcing"][:2], "params": t["params"][:2]})
    assert y is None and set(x) == {"state", "forcing", "params"}
    np.testing.assert_allclose(x["state"].numpy(), (u[:2] - u.mean()) / u.std(), rtol=1e-5, atol=1e-5)
    assert x["params"].shape == (2, 2) and x["forcing"].shape == (2, STEPS, GRID, GRID)


def test_a_batch_of_scenarios_becomes_every_chain_of_k_steps(trained):
    _, job = trained
    task = FieldTask(open_prepared(job).field)
    state = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # 2 scenarios, T = 3, 1-D grid of 3
    forcing = -torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    params = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u0, f, p, true = task.chains({"state": state, "forcing": forcing, "params": params}, 2)
    assert u0.shape == (4, 3) and f.shape == (4, 2, 3) and true.shape == (4, 2, 3) and p.shape == (4, 2)
    # chain (scenario s, start t): u0 = state[s, t], true = state[s, t+1 : t+3], forcing[s, t : t+2]
    for i, (s, t) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(u0[i], state[s, t]) and torch.equal(true[i], state[s, t + 1 : t + 3])
        assert torch.equal(f[i], forcing[s, t : t + 2]) and torch.equal(p[i], params[s])
    # the inputs: state, forcing and each parameter as a constant channel
    x = task.inputs(u0, f[:, 0], p)
    assert x.shape == (4, 4, 3) and torch.equal(x[2, 2], torch.full((3,), 3.0)) and torch.equal(x[2, 1], f[2, 0])


def test_a_forcing_window_of_3_gives_each_step_the_frames_before_and_after_its_own(trained):
    _, job = trained
    field = open_prepared(job).field
    task = FieldTask(Field(field.fields, field.stats, forcing_window=3))
    assert task.window == 3 and Field(field.fields, field.stats, forcing_window=3).model_defaults()["in_channels"] == 6
    again = Field.from_state(*Field(field.fields, field.stats, forcing_window=3).state())
    assert again.forcing_window == 3 and Field.from_state(*field.state()).forcing_window == 1
    state = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # 2 scenarios, T = 3, 1-D grid of 3
    forcing = -torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    params = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u0, f, p, true = task.chains({"state": state, "forcing": forcing, "params": params}, 2)
    assert f.shape == (4, 2, 3, 3)  # chains, steps, frames t-1 / t / t+1, grid
    for i, (s_, t) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for j in range(2):
            frames = [max(t + j - 1, 0), t + j, min(t + j + 1, 2)]  # the ends repeat their own frame
            assert torch.equal(f[i, j], forcing[s_, frames])
            assert torch.equal(task.context(forcing, t + j)[s_], forcing[s_, frames])
    x = task.inputs(u0, f[:, 0], p)
    assert x.shape == (4, 6, 3) and torch.equal(x[2, 1:4], f[2, 0]) and torch.equal(x[2, 4], torch.full((3,), 3.0))
    one = FieldTask(field)
    assert torch.equal(one.context(forcing, 1), forcing[:, 1]) and torch.equal(one.contexts(forcing), forcing)


def test_unrolled_training_feeds_the_model_its_own_prediction(trained):
    _, job = trained
    task = FieldTask(open_prepared(job).field, unroll=3)
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            calls.append(x[:, 0].clone())
            return torch.ones_like(x[:, :1])

    state = torch.zeros(1, 4, 5)
    pred, true, _ = task.forward(
        Recorder(), {"state": state, "forcing": torch.zeros(1, 3, 5), "params": torch.zeros(1, 2)}
    )
    inc = (task.step_std + task.step_mean) / task.state_std
    assert pred.shape == (1, 3, 5) and torch.allclose(pred[0, :, 0], torch.tensor([inc, 2 * inc, 3 * inc]))
    assert [float(c[0, 0]) for c in calls] == pytest.approx([0.0, inc, 2 * inc])


def test_the_first_step_weight_counts_the_chains_from_u0_w_times_in_the_loss(trained):
    """The loss is the mean over chains of each chain's squared error, the chains that start at
    u[0] (the first of each scenario) weighted w times; w = 1 is the plain mean."""
    _, job = trained
    field = open_prepared(job).field

    class Zero(torch.nn.Module):  # predicts no increment: u[t+1] = u[t] in normalised units
        def forward(self, x):
            return torch.full_like(x[:, :1], -FieldTask(field).step_mean / FieldTask(field).step_std)

    torch.manual_seed(0)
    x = {"state": torch.randn(2, 4, 5), "forcing": torch.randn(2, 3, 5), "params": torch.randn(2, 2)}
    plain = FieldTask(field)
    pred, true, loss = plain.forward(Zero(), x)
    per_chain = ((pred - true) ** 2).mean(dim=(1, 2))  # 2 scenarios x 3 starts, scenario-major
    assert torch.allclose(loss, per_chain.mean())
    first = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    for w in (3.0, 0.5):
        _, _, weighted = FieldTask(field, first_step_weight=w).forward(Zero(), x)
        weights = 1 + (w - 1) * first
        assert torch.allclose(weighted, (weights * per_chain).sum() / weights.sum()), w
    _, _, two = FieldTask(field, unroll=2, first_step_weight=3.0).forward(Zero(), x)
    pred2, true2, _ = FieldTask(field, unroll=2).forward(Zero(), x)
    chains2 = ((pred2 - true2) ** 2).mean(dim=(1, 2))  # 2 scenarios x 2 starts
    w2 = torch.tensor([3.0, 1.0, 3.0, 1.0])
    assert torch.allclose(two, (w2 * chains2).sum() / w2.sum())


def test_preprocess_marks_the_nodes_no_step_changes_as_held(heat, tmp_path):
    """A boundary row held at a per-scenario value (a Dirichlet edge) is ``held``; the rest not."""
    _, arrays = heat
    edged = {k: v.copy() for k, v in arrays.items()}
    edged["field"][:, :, 0, :] = np.arange(N, dtype=np.float32)[:, None, None]  # row 0: constant in time
    np.savez(tmp_path / "edged.npz", **edged)
    ingest("npz", tmp_path / "edged.npz", tmp_path / "data", val_fraction=0.25, test_fraction=0.0, world=get_world())
    (tmp_path / "job.toml").write_text(field_job(str(tmp_path / "data"), structure="width = 4\nmodes = 3"))
    job = load_job(tmp_path / "job.toml")
    preprocess(job, world=get_world())
    held = open_prepared(job).field.stats["held"]
    want = np.zeros((GRID, GRID))
    want[0] = 1
    assert np.array_equal(held, want)


def test_without_held_nodes_nothing_is_recorded(trained):
    _, job = trained
    assert "held" not in open_prepared(job).field.stats


class Constant(torch.nn.Module):
    """A model whose increment is 1 everywhere; records its inputs' state channel."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x[:, 0].clone())
        return torch.ones_like(x[:, :1])


def held_task(trained, **kw) -> FieldTask:
    _, job = trained
    field = open_prepared(job).field
    held = np.zeros((1, 5))
    held[0, [0, 4]] = 1  # a 1-D row of 5 nodes, both ends held
    return FieldTask(Field(field.fields, {**field.stats, "held": held}), **kw)


def test_a_step_keeps_the_held_nodes_at_their_input_value(trained):
    task = held_task(trained, unroll=2)
    u = torch.arange(5, dtype=torch.float32).reshape(1, 1, 5)
    out = task.step(Constant(), u, torch.zeros(1, 1, 5), torch.zeros(1, 2))
    inc = (task.step_std + task.step_mean) / task.state_std
    assert torch.equal(out[0, 0, [0, 4]], u[0, 0, [0, 4]])
    assert torch.allclose(out[0, 0, 1:4], u[0, 0, 1:4] + inc)


def test_noise_perturbs_the_start_states_in_training_only_and_never_the_held_nodes(trained):
    task = held_task(trained, noise=0.5)
    x = {"state": torch.zeros(2, 4, 1, 5), "forcing": torch.zeros(2, 3, 1, 5), "params": torch.zeros(2, 2)}
    model = Constant()
    torch.manual_seed(0)
    pred, true, _ = task.forward(model, x)
    start = model.seen[-1][:, 0]  # (chains, 5)
    assert start.shape == (6, 5) and torch.all(start[:, [0, 4]] == 0)
    inner = start[:, 1:4]
    assert 0.3 < float(inner.std()) < 0.7 and torch.all(inner != 0)
    assert torch.equal(true, torch.zeros_like(true))  # the targets stay the true states
    model.eval()
    task.forward(model, x)
    assert torch.all(model.seen[-1] == 0)  # evaluation: no noise


def test_rollout_returns_the_physical_trajectory_of_the_checkpoint(trained, heat):
    work, job = trained
    _, arrays = heat
    u, f, p = arrays["field"][:5], arrays["forcing"][:5], arrays["params"][:5]
    out = rollout(work / "run", u[:, 0], f, p, batch_size=2)
    assert out.shape == (5, STEPS + 1, GRID, GRID) and out.dtype == np.float32
    assert np.array_equal(out[:, 0], u[:, 0])
    # step 1 by hand from preprocess's statistics: u1 = u0 + σ_Δ · model(normalised inputs) + μ_Δ
    st = open_prepared(job).field.stats
    twin = load_surrogate(work / "run")
    x = np.concatenate(
        [
            ((u[:, 0] - st["state_mean"]) / st["state_std"])[:, None],
            ((f[:, 0] - st["forcing_mean"]) / st["forcing_std"])[:, None],
            np.broadcast_to(((p - st["params_mean"]) / st["params_std"])[:, :, None, None], (5, 2, GRID, GRID)),
        ],
        axis=1,
    )
    with torch.no_grad():
        inc = twin.model(torch.from_numpy(x.astype(np.float32)))[:, 0].double().numpy()
    np.testing.assert_allclose(out[:, 1], u[:, 0] + inc * st["step_std"] + st["step_mean"], rtol=1e-5, atol=1e-5)
    # fewer steps than the forcing covers; batches do not change the result
    assert np.allclose(twin.rollout(u[:, 0], f, p, steps=2, batch_size=5), out[:, :3], rtol=1e-5, atol=1e-6)


def test_rollout_refuses_inputs_that_do_not_fit_the_surrogate(trained, heat):
    work, _ = trained
    _, arrays = heat
    twin = load_surrogate(work / "run")
    u0, f, p = arrays["field"][:2, 0], arrays["forcing"][:2], arrays["params"][:2]
    with pytest.raises(TwinError, match="trained with forcing 'forcing'; give forcing"):
        twin.rollout(u0, None, p)
    with pytest.raises(TwinError, match=r"u0 has shape \(2, 8, 12\); the surrogate's grid is \(12, 12\)"):
        twin.rollout(u0[:, :8], f, p)
    with pytest.raises(TwinError, match=r"params has shape \(2, 3\); expected \(n=2, P=2\)"):
        twin.rollout(u0, f, np.zeros((2, 3)))
    with pytest.raises(TwinError, match="9 steps asked, but the forcing covers 6"):
        twin.rollout(u0, f, p, steps=9)


def test_a_checkpoint_of_another_task_is_not_a_surrogate(small_image_job, tmp_path):
    train(small_image_job, tmp_path / "run", progress=False)
    with pytest.raises(TwinError, match="not a checkpoint of a field job"):
        load_surrogate(tmp_path / "run")


def test_field_job_errors_name_the_key(heat, tmp_path):
    work, _ = heat
    with pytest.raises(JobFileError, match="train.unroll: is 2, but unrolled training needs train.task = 'field'"):
        load_job_text(tmp_path, field_job("d", train="unroll = 2").replace('task = "field"', 'task = "regression"'))
    with pytest.raises(JobFileError, match="train.noise: is 0.1, but state noise needs train.task = 'field'"):
        load_job_text(tmp_path, field_job("d", train="noise = 0.1").replace('task = "field"', 'task = "regression"'))
    with pytest.raises(JobFileError, match="train.first_step_weight: is 3.0, but it weights chains of train.task"):
        load_job_text(
            tmp_path, field_job("d", train="first_step_weight = 3.0").replace('task = "field"', 'task = "regression"')
        )
    with pytest.raises(JobFileError, match="train.first_step_weight"):
        load_job_text(tmp_path, field_job("d", train="first_step_weight = 0.0"))
    with pytest.raises(JobFileError, match="train.prior: is 'plate', but a physics prior needs train.task = 'field'"):
        load_job_text(
            tmp_path, field_job("d", train='prior = "plate"').replace('task = "field"', 'task = "regression"')
        )
    with pytest.raises(JobFileError, match="train.prior: must be one of 'none', 'plate', got 'heat'"):
        load_job_text(tmp_path, field_job("d", train='prior = "heat"'))
    with pytest.raises(JobFileError, match="train.forcing_window: must be 1 or 3, got 2"):
        load_job_text(tmp_path, field_job("d", train="forcing_window = 2"))
    with pytest.raises(JobFileError, match="train.forcing_window: is 3, but a forcing window needs train.task"):
        load_job_text(
            tmp_path, field_job("d", train="forcing_window = 3").replace('task = "field"', 'task = "regression"')
        )
    with pytest.raises(JobFileError, match="data.inputs: is not read by train.task = 'field'"):
        load_job_text(tmp_path, field_job("d").replace("batch_size = 4", 'batch_size = 4\ninputs = ["x"]'))
    with pytest.raises(JobFileError, match="data.state: names a field of train.task = 'field', but the task is"):
        load_job_text(
            tmp_path,
            field_job("d")
            .replace("batch_size = 4", 'batch_size = 4\nstate = "u"')
            .replace('task = "field"', 'task = "regression"'),
        )
    job = write_job(work, "bad")
    world = get_world()

    def with_data(**keys):
        return dataclasses.replace(job, data=dataclasses.replace(job.data, **keys))

    with pytest.raises(TwinError, match=r"data.forcing: names field 'heat', but the dataset .* has \['field', 'forc"):
        preprocess(with_data(forcing="heat"), world=world)
    shapes = r"\(7, 12, 12\), but the state 'field' of shape \(7, 12, 12\) needs forcing of shape \(6, 12, 12\)"
    with pytest.raises(TwinError, match=r"data.forcing: field 'field' has per-sample shape " + shapes):
        preprocess(with_data(forcing="field"), world=world)
    # the plate prior needs a `twinhpc simulate` dataset: this one was ingested from npz
    hybrid = dataclasses.replace(job, train=dataclasses.replace(job.train, prior="plate"))
    with pytest.raises(TwinError, match=r"train.prior: is 'plate', but the dataset .* has no provenance.simulate"):
        preprocess(hybrid, world=world)
    mlp = dataclasses.replace(job, model=dataclasses.replace(job.model, name="mlp", structure={}))
    with pytest.raises(
        TwinError, match="model.name: is 'mlp', .* needs a model that reads fields: fno1d, fno2d, unet2d"
    ):
        preprocess(mlp, world=world)
    # without forcing and params the model reads the state alone
    alone = dataclasses.replace(
        job,
        data=dataclasses.replace(job.data, forcing="", params=""),
        preprocess=dataclasses.replace(job.preprocess, out=str(tmp_path / "pre")),
    )
    preprocess(alone, world=world)
    prep = open_prepared(alone)
    assert prep.fields == ("field",) and prep.model_defaults["in_channels"] == 1
    windowed = dataclasses.replace(alone, train=dataclasses.replace(alone.train, forcing_window=3))
    with pytest.raises(TwinError, match=r"train.forcing_window: is 3, but the job has no forcing \(data.forcing\)"):
        preprocess(windowed, world=world)


def load_job_text(tmp_path, text: str):
    (tmp_path / "j.toml").write_text(text)
    return load_job(tmp_path / "j.toml")
