"""``twinhpc bench report``: the benchmark page from fixture records (golden text), the verdict
rules (met / not met on the median of >= 5 runs of the default configuration, not established
below, GPU rows not run), the figures shown beside, the PNGs and the command."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import h5py
import pytest

from twinhpc.bench import targets as tg
from twinhpc.bench.report import render
from twinhpc.io.bench_results import read_records, table_array, write_record

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MACHINE = {
    "machine_host": "vm",
    "machine_cpu": "Test CPU",
    "machine_cores": 2,
    "machine_memory_bytes": 8 << 30,
    "machine_memory_gbps": 5.25,
    "machine_gpus": "",
}
H200 = MACHINE | {"machine_host": "gpu1", "machine_cores": 16, "machine_gpus": "NVIDIA H200"}


def _record(folder, benchmark, tables, attrs, day, *, machine=MACHINE, allocator="default", commit="c" * 40):
    return write_record(
        folder,
        benchmark,
        tables,
        attrs,
        created=f"2026-12-{day:02d}T10:00:00Z",
        commit=commit,
        machine=machine,
        allocator=allocator,
        command=f"python benchmarks/{benchmark}.py",
    )


def _dp(ratio: float, model: str = "MLP 3x1024", batch: int = 64) -> tuple[dict, dict]:
    row = {"ranks": 2, "bytes": 12_600_000, "ratio": ratio, "bucket_cap_mb": 25.0, "overlap_setting": "auto"}
    other = dict(row, bucket_cap_mb=4.0, ratio=9.9)  # another cap in the same run: not the default
    attrs = {"model": model, "batch_per_rank": batch, "threads_per_rank": 1, "default_bucket_cap_mb": 25.0}
    return {"float32": [row, other]}, attrs


def _train(model: str, ranks: int, batch: int, ratio_ddp: float, ratio: float, wait: float) -> dict:
    return {
        model: [
            {"ranks": ranks, "batch": batch, "threads": 1, "ratio": ratio, "ratio_ddp": ratio_ddp, "data_wait": wait}
        ]
    }


@pytest.fixture
def records(tmp_path) -> Path:
    """A results folder: dp_overhead MLP 6 runs (met) + 2 allocator-neutral, ResNet-18 5 runs
    (not met), train_throughput 2 CNN runs (not established) and one GPU run, a loader run of
    another configuration, a legacy single-file wire_casts.h5."""
    folder = tmp_path / "results"
    for day, ratio in enumerate([1.03, 1.05, 1.17, 1.07, 1.08, 1.12], start=1):
        _record(folder, "dp_overhead", *_dp(ratio), day)
    for day, ratio in ((7, 1.18), (8, 1.22)):
        _record(folder, "dp_overhead", *_dp(ratio), day, allocator="MALLOC_TRIM_THRESHOLD_=4000000000")
    for day, ratio in enumerate([1.12, 1.15, 1.09, 1.2, 1.11], start=1):
        _record(folder, "dp_overhead", *_dp(ratio, "ResNet-18 (32x32x3)", 8), day)
    attrs = {"device": "cpu", "bf16": False}
    _record(folder, "train_throughput", _train("cnn", 2, 64, 1.30, 0.88, 0.024), attrs, 2)
    _record(folder, "train_throughput", _train("cnn", 2, 64, 1.13, 0.95, 0.031), attrs, 3)
    gpu = {"device": "cuda", "bf16": True}
    _record(folder, "train_throughput", _train("resnet18", 1, 256, 0.97, 0.97, 0.01), gpu, 4, machine=H200)
    _record(folder, "loader", {"total": [{"rank": -1, "ratio": 0.5}]}, {"world_size": 1, "ratio": 0.5}, 5)
    with h5py.File(folder / "wire_casts.h5", "w") as f:  # the single-file layout
        f.create_dataset("wire_casts", data=table_array([{"speedup": 4.7}, {"speedup": 9.4}]))
        f.attrs.update(names=["pack_float16", "sum_float16"], mib=12.0, threads=1, created="2026-11-29T04:47:45+00:00")
    return folder


def test_the_page_from_fixture_records_matches_the_golden_text(records):
    got = render(read_records(records), "benchmarks/results", {"dp_overhead": "benchmarks/dp_overhead.png"})
    path = GOLDEN / "benchmarks-page.md"
    if os.environ.get("TWINHPC_UPDATE_GOLDEN"):
        path.write_text(got)
    want = path.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered"))
    assert got == want, f"the page changed (TWINHPC_UPDATE_GOLDEN=1 rewrites the golden file):\n{diff}"


def test_verdicts_follow_the_median_of_five_runs():
    t = tg.target("dp_overhead")
    assert tg.verdict(t, []) == "no runs"
    assert tg.verdict(t, [1.0]) == "not established (1 run)"
    assert tg.verdict(t, [1.0, 1.0, 1.0, 1.0]) == "not established (4 runs)"
    assert tg.verdict(t, [1.0, 1.0, 1.3, 1.3, 1.05]) == "met"  # two runs above: the median decides
    assert tg.verdict(t, [1.2, 1.2, 1.0, 1.0, 1.11]) == "not met"
    assert tg.verdict(tg.target("loader"), [0.8] * 5) == "met"  # >=: the value itself meets it
    assert tg.verdict(tg.target("ingest_cifar"), [60.0] * 5) == "not met"  # < 60 s
    assert tg.verdict(tg.target("train_throughput_gpu"), []) == "not run"
    assert tg.verdict(tg.target("wire_casts"), [4.7] * 6) == "no target"


def test_only_runs_of_the_default_configuration_count(records):
    recs = read_records(records)
    dp = tg.judge(tg.target("dp_overhead"), recs["dp_overhead"])
    assert dp.figures == [1.03, 1.05, 1.17, 1.07, 1.08, 1.12] and dp.verdict == "met"  # not 9.9, not ResNet, not 1.18
    resnet = tg.judge(tg.target("dp_overhead_resnet18"), recs["dp_overhead"])
    assert resnet.median == pytest.approx(1.12) and resnet.verdict == "not met"
    assert tg.judge(tg.target("loader"), recs["loader"]).verdict == "no runs"  # 1 rank: another configuration
    cpu = tg.judge(tg.target("train_throughput_resnet18_1rank"), recs["train_throughput"])
    assert cpu.figures == []  # the GPU run is not a CPU run
    gpu = tg.judge(tg.target("train_throughput_gpu"), recs["train_throughput"])
    assert gpu.figures == [0.97] and gpu.verdict == "not established (1 run)"
    assert tg.judge(tg.target("allreduce_gpu"), []).verdict == "not run"


def test_every_target_is_well_formed():
    keys = [t.key for t in tg.TARGETS]
    assert len(keys) == len(set(keys))
    for t in tg.TARGETS:
        assert t.direction in (">=", ">", "<=", "<"), t.key
        assert t.default and t.figure and t.title, t.key
    assert {t.key for t in tg.TARGETS if t.gpu} == {"allreduce_gpu", "train_throughput_gpu"}
    with pytest.raises(KeyError, match="no benchmark target 'nope'"):
        tg.target("nope")


def test_the_benchmarks_print_verdicts_against_the_table():
    """The single-run PASS/FAIL of the benchmark code uses the table's values."""
    from twinhpc.bench import loader

    assert loader.TARGET == tg.target("loader").value


def test_the_command_writes_the_page_and_one_png_per_benchmark_with_runs(records, tmp_path, cli):
    out = tmp_path / "docs" / "benchmarks.md"
    r = cli("bench", "report", records, "--out", out)
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "docs" / "benchmarks").iterdir())
    assert pngs == ["dp_overhead.png", "train_throughput.png", "wire_casts.png"]
    for p in pngs:
        assert (tmp_path / "docs" / "benchmarks" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text()
    assert text.startswith("<!-- Generated by `twinhpc bench report")
    assert "![dp_overhead: the key figures over the recorded runs](benchmarks/dp_overhead.png)" in text
    assert f"{out}: 18 records" in r.stdout


def test_an_empty_folder_is_an_error_naming_it(tmp_path, cli):
    r = cli("bench", "report", tmp_path, "--out", tmp_path / "page.md")
    assert r.returncode != 0 and f"{tmp_path}: no benchmark records" in r.stderr
    assert not (tmp_path / "page.md").exists()


def test_help_explains_the_verdicts(cli):
    r = cli("bench", "report", "--help")
    assert r.returncode == 0 and "median of at least 5 runs" in r.stdout and "not run" in r.stdout


def test_the_committed_page_is_generated_from_the_committed_records():
    """docs/benchmarks.md is `twinhpc bench report`'s output for benchmarks/results (after
    recording a run: `twinhpc bench report`, then commit both)."""
    root = Path(__file__).resolve().parents[2]
    records = read_records(root / "benchmarks" / "results")
    plots = {
        t.benchmark: f"benchmarks/{t.benchmark}.png"
        for t in tg.TARGETS
        if tg.judge(t, records.get(t.benchmark, [])).figures
    }
    got = render(records, "benchmarks/results", plots)
    assert got == (root / "docs" / "benchmarks.md").read_text(), "run `twinhpc bench report` and commit the page"
    for png in plots.values():
        assert (root / "docs" / png).is_file(), png
