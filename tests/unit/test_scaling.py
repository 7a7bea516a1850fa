"""The scaling study's arithmetic and the all-reduce cost model, against hand-computed figures:
α–β coefficients of each algorithm at p = 2, 4, 8 (and 3), times across nodes (ring,
hierarchical), the least-squares fit recovering known α and β, efficiency and speed-up from
known step times (weak and strong), the batch plan (strong refuses a k that does not divide the
global batch), the rows made from per-step records, and the command line (`--help`, refusals,
the Horovod anchor, the batch script of --submit)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinhpc.bench import costmodel as cm
from twinhpc.bench import scaling as sc
from twinhpc.config import Job

N = 1e6  # bytes of the hand-computed examples


@pytest.mark.parametrize(
    "algorithm, p, expected",
    [
        ("ring", 2, (2, N)),  # 2(p-1), 2(p-1)/p n
        ("ring", 4, (6, 1.5 * N)),
        ("ring", 8, (14, 1.75 * N)),
        ("halving_doubling", 2, (2, N)),  # 2 log2 p, 2(p-1)/p n
        ("halving_doubling", 4, (4, 1.5 * N)),
        ("halving_doubling", 8, (6, 1.75 * N)),
        ("halving_doubling", 3, (4, 3 * N)),  # q = 2 run it (2, n); the third rank: 2 more steps of n
        ("recursive_doubling", 2, (1, N)),  # log2 p, log2 p n
        ("recursive_doubling", 4, (2, 2 * N)),
        ("recursive_doubling", 8, (3, 3 * N)),
        ("direct", 4, (2, 1.5 * N)),  # 2, 2(p-1)/p n
        ("ring", 1, (0, 0)),
    ],
)
def test_coefficients_of_each_algorithm(algorithm, p, expected):
    assert cm.coefficients(algorithm, p, N) == pytest.approx(expected)


def test_one_link_time_is_a_alpha_plus_b_beta():
    link = cm.Link(alpha=1e-6, beta=1e-9)
    c = cm.Cluster(link)
    assert c.time("ring", N, 4) == pytest.approx(6e-6 + 1.5e-3)
    assert c.time("halving_doubling", N, 8) == pytest.approx(6e-6 + 1.75e-3)
    assert c.time("hierarchical", N, 8) == math.inf  # one rank per node: nothing to be hierarchical about
    assert cm.Link.from_gbps(8, latency_us=2) == cm.Link(2e-6, 1e-9)  # 8 Gbit/s = 1 byte per ns


def test_across_nodes_ring_hierarchical_and_shared_links():
    inter, intra = cm.Link(10e-6, 1e-9), cm.Link(1e-6, 0.1e-9)
    c = cm.Cluster(inter, intra, ranks_per_node=4)  # 8 ranks: 2 nodes of 4
    assert c.layout(8) == (4, 2)
    # ring: 2(p-1) steps, each bounded by the link between nodes carrying n/p
    assert c.time("ring", N, 8) == pytest.approx(14 * (10e-6 + N * 1e-9 / 8))
    # hierarchical: ring reduce-scatter + all-gather in the node, the n/r shards across 2 nodes
    inside = 2 * 3 * 1e-6 + 2 * 3 / 4 * N * 0.1e-9
    across = 2 * 1 * 10e-6 + 2 * 1 / 2 * N * 1e-9
    assert c.time("hierarchical", N, 8) == pytest.approx(inside + across)
    # halving/doubling: 1 step across nodes carrying r flows, 2 inside
    hd = 2 * (1 * 10e-6 + 4 * N * 1e-9 * (1 - 1 / 2) + 2 * 1e-6 + N * 0.1e-9 * (1 / 2 - 1 / 8))
    assert c.time("halving_doubling", N, 8) == pytest.approx(hd)
    assert c.time("direct", N, 8) == math.inf  # shared memory does not span nodes
    # on one node every algorithm uses the intra-node link
    assert c.time("ring", N, 4) == pytest.approx(6 * 1e-6 + 1.5 * N * 0.1e-9)
    assert c.pick(N, 8) == ("hierarchical", pytest.approx(inside + across))
    assert c.pick(64, 8)[0] == "recursive_doubling"  # latency-bound: the fewest messages


def test_buckets_and_the_steps_allreduce():
    assert cm.bucket_sizes(10, 4) == [4, 4, 2]
    assert cm.bucket_sizes(8, 4) == [4, 4]
    calls = []

    def cost(n, p):
        calls.append(n)
        return "x", 1.0

    total, used = cm.step_allreduce(10, 2, 4, cost)
    assert total == 4.0 and used == ["x"] * 4 and calls == [4, 4, 2, cm.STEP_SCALARS_BYTES]
    assert cm.step_allreduce(10, 1, 4, cost) == (0.0, [])


def test_predicted_step_and_its_overlap():
    assert cm.predict_step(1.0, 0.6, 0.3) == pytest.approx(1.3)
    assert cm.predict_step(1.0, 0.6, 0.3, overlap=0.25) == pytest.approx(1.15)
    assert cm.predict_step(1.0, 0.6, 0.3, overlap=1.0) == pytest.approx(1.0)  # all hidden, never negative
    with pytest.raises(ValueError, match="overlap"):
        cm.predict_step(1.0, 0.6, 0.3, overlap=1.5)
    assert cm.overlap_for(0.9, 0.9, 1.0, 0.2) == pytest.approx(0.1)  # 0.9 / (0.9 + 0.1) = 0.9


def test_the_fit_recovers_known_alpha_and_beta():
    alpha, beta = 25e-6, 1 / 2e9
    rows = [
        dict(impl="twinhpc:ring", ranks=p, bytes=n, time_s=2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta)
        for p in (2, 3)
        for n in (4 << 10, 64 << 10, 1 << 20, 16 << 20)
    ]
    rows.append(dict(impl="memcpy", ranks=2, bytes=1 << 20, time_s=1.0))  # not a modelled row: ignored
    (fit,) = cm.fit_rows(rows)
    assert fit.algorithm == "ring" and fit.ranks == (2, 3) and fit.points == 8
    assert fit.link.alpha == pytest.approx(alpha, rel=1e-6) and fit.link.beta == pytest.approx(beta, rel=1e-6)
    assert fit.rms_relative_error < 1e-9
    # noisy points (±5 %): still within a few per cent
    rng = np.random.default_rng(0)
    noisy = [(a, b, t * (1 + 0.05 * rng.standard_normal())) for a, b, t in [(2, n, 2 * alpha + n * beta) for n in
             np.geomspace(4e3, 6e7, 12)]]  # fmt: skip
    link, rms = cm.fit_link(noisy)
    assert link.alpha == pytest.approx(alpha, rel=0.15) and link.beta == pytest.approx(beta, rel=0.05)
    assert 0.01 < rms < 0.1


def test_the_fit_keeps_alpha_and_beta_non_negative():
    # times that fall with size would need a negative beta: the fit keeps beta = 0
    link, _ = cm.fit_link([(2, 1e3, 2e-3), (2, 1e6, 1e-3)])
    assert link.beta == 0 and link.alpha > 0
    with pytest.raises(ValueError, match="at least 2"):
        cm.fit_link([(2, 1e3, 1e-3)])


def rows_of(mode, ks, samples_per_s=None, step_s=None):
    return [
        dict(
            ranks=k,
            samples_per_s=samples_per_s[i] if samples_per_s else 0.0,
            step_s=step_s[i] if step_s else 0.0,
        )
        for i, k in enumerate(ks)
    ]


def test_weak_efficiency_from_known_throughputs():
    rows = sc.add_efficiency(rows_of("weak", [1, 2, 4], samples_per_s=[100.0, 180.0, 300.0]), "weak")
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 1.8, 3.0])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.9, 0.75])  # thr(k) / (k thr(1))


def test_strong_speedup_and_efficiency_from_known_step_times():
    rows = sc.add_efficiency(rows_of("strong", [1, 2, 4], step_s=[1.0, 0.625, 0.5]), "strong")
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 1.6, 2.0])  # T(1)/T(k)
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.8, 0.5])  # speed-up / k
    # against the smallest rank count when it is not 1: k / k0 ranks more
    rows = sc.add_efficiency(rows_of("strong", [2, 4], step_s=[1.0, 0.625]), "strong")
    assert rows[1]["efficiency"] == pytest.approx(1.6 / 2)


def job(batch=8, cpus=1) -> Job:
    return Job.from_dict(
        {
            "data": {"dataset": "data", "batch_size": batch},
            "model": {"name": "cnn"},
            "slurm": {"cpus_per_task": cpus},
        }
    )


def test_plan_weak_strong_and_oversubscription():
    weak = sc.plan(job(8), [1, 2, 4], "weak", cores=2)
    assert [(p.ranks, p.per_rank_batch, p.global_batch) for p in weak] == [(1, 8, 8), (2, 8, 16), (4, 8, 32)]
    assert [p.oversubscribed for p in weak] == [False, False, True]
    assert weak[2].note == "oversubscribed (4 ranks on 2 cores)" and weak[1].note == ""
    strong = sc.plan(job(8), [1, 2, 4], "strong", cores=8, batch=16)
    assert [(p.per_rank_batch, p.global_batch) for p in strong] == [(16, 16), (8, 16), (4, 16)]
    assert sc.plan(job(8, cpus=2), [2], "weak", cores=2)[0].oversubscribed  # 2 ranks x 2 threads
    with pytest.raises(sc.ScalingError, match=r"global batch 8 .*k=3, k=5"):
        sc.plan(job(8), [1, 3, 4, 5], "strong", cores=8)
    with pytest.raises(sc.ScalingError, match="--ranks"):
        sc.parse_ints("1,x", "--ranks")
    assert sc.parse_ints("4,1,2,2", "--ranks") == [1, 2, 4]


def test_a_row_from_per_step_records_leaves_out_the_warm_up():
    steps = {
        "step": np.arange(1, 7),
        "step_time_s": np.array([9.0, 9.0, 1.0, 2.0, 3.0, 4.0]),  # two slow warm-up steps
        "data_wait_s": np.full(6, 0.1),
        "forward_backward_s": np.array([5, 5, 0.5, 0.6, 0.7, 0.8]),
        "communication_s": np.full(6, 0.2),
        "optimizer_s": np.full(6, 0.05),
        "allreduce_bytes": np.full(6, 1000.0),
        "gradient_bytes": np.full(6, 1000.0),
    }
    point = sc.Point(2, 8, 16, 1, 2)
    row = sc.summarize({"steps": steps}, point, warmup=2, accumulate=2)
    assert row["steps"] == 4 and row["step_s"] == pytest.approx(2.5)
    assert row["samples_per_s"] == pytest.approx(16 * 2 / 2.5)  # global batch x accumulate / median step
    assert row["forward_backward_s"] == pytest.approx(0.65) and row["allreduce_bytes"] == 1000
    assert row["step_p10_s"] == pytest.approx(np.percentile([1, 2, 3, 4], 10))
    with pytest.raises(sc.ScalingError, match="k=2: no step after the 6 warm-up steps"):
        sc.summarize({"steps": steps}, point, warmup=6, accumulate=1)


def test_validation_predicts_from_the_one_rank_row():
    fit = cm.Fit("twinhpc:shared", "direct", cm.Link(1e-3, 1e-9), (2,), 5, 0.0)
    one = dict(ranks=1, per_rank_batch=8, step_s=0.1, forward_backward_s=0.08, gradient_bytes=1e6)
    two = dict(
        one, ranks=2, step_s=0.125, communication_s=0.01, oversubscribed=False, note="", gradient_bytes=1e6
    )  # fmt: skip
    (v,) = sc.validate([one, two], [fit], cap_bytes=4e6, overlap=0.0)
    # one bucket (2 ms + 1 ms) and the step's scalars (2 ms): 5 ms on top of the 1-rank step
    expected = 0.1 + (2e-3 + 1e6 * 1e-9) + (2e-3 + 64 * 1e-9)
    assert v["predicted_step_s"] == pytest.approx(expected)
    assert v["error"] == pytest.approx(expected / 0.125 - 1)


def test_help_explains(cli):
    r = cli("bench", "scaling", "--help")
    assert r.returncode == 0
    for words in ("weak", "strong", "oversubscribed (k ranks on C cores)", "efficiency", "--predict", "--submit"):
        assert words in r.stdout, words


def test_refusals_name_the_option(cli, tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[data]\ndataset = "data"\nbatch_size = 8\n[model]\nname = "cnn"\n')
    r = cli("bench", "scaling", path, "--ranks", "1,3", "--mode", "strong", "--results", tmp_path / "res")
    assert r.returncode == 2 and "k=3" in r.stderr and "global batch 8" in r.stderr
    r = cli("bench", "scaling", path)
    assert r.returncode == 2 and "--ranks" in r.stderr
    r = cli("bench", "scaling", path, "--predict", "8", "--results", tmp_path / "res")
    assert r.returncode == 2 and "no scaling record of job.toml" in r.stderr
    assert not (tmp_path / "res").exists()


def test_horovod_anchor(cli):
    r = cli("bench", "scaling", "--anchor", "horovod")
    assert r.returncode == 0, r.stderr
    assert "512 ranks, 4 per node" in r.stdout and "the model gives the published 90% at overlap" in r.stdout
    rows = cm.anchor_prediction(cm.HOROVOD, overlaps=(0.0,))
    assert 0.7 < rows[0]["efficiency"] < 0.9  # without overlap: below the published figure


def test_batch_script_of_submit(tmp_path):
    text = sc.batch_script(
        ["python", "-m", "twinhpc", "bench", "scaling", "j.toml", "--launcher", "srun"],
        4,
        2,
        job(8, cpus=2),
        "j",
        tmp_path / "w",
        tmp_path,
    )
    assert "#SBATCH --ntasks=4\n#SBATCH --cpus-per-task=2\n" in text
    assert f"#SBATCH --output={tmp_path}/w/slurm-%j.out" in text and "#SBATCH --time=60" in text
    assert text.rstrip().endswith("python -m twinhpc bench scaling j.toml --launcher srun")
