"""scripts/gpu-check.sh's recording step on CPU (``STEPS=records``): the page of the records it
finds in $OUT/records, with the GPU rows in its summary. The GPU steps themselves need a GPU."""

import os
import subprocess
import sys
from pathlib import Path

from twinhpc.io.bench_results import write_record

ROOT = Path(__file__).resolve().parents[2]
H200 = {
    "machine_host": "gpu1",
    "machine_cpu": "Test CPU",
    "machine_cores": 16,
    "machine_memory_bytes": 128 << 30,
    "machine_memory_gbps": 20.0,
    "machine_gpus": "NVIDIA H200",
}


def _check(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, STEPS="records", OUT=str(out), PY=sys.executable)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_records_step_renders_the_gpu_rows(tmp_path):
    row = {"ranks": 1, "batch": 256, "threads": 8, "ratio": 1.04, "ratio_ddp": 1.04, "data_wait": 0.01}
    write_record(
        tmp_path / "records",
        "train_throughput",
        {"resnet18": [row]},
        {"device": "cuda", "bf16": True},
        machine=H200,
        created="2026-12-01T10:00:00Z",
    )
    r = _check(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "benchmarks.md").read_text()
    gpu_row = next(line for line in page.splitlines() if line.startswith("| [training throughput, ResNet-18 on a GPU]"))
    assert "**1.040** (2026-12-01, gpu1 (16 cores, 20.0 GB/s, NVIDIA H200)" in gpu_row
    assert "not established (1 run)" in gpu_row
    summary = (tmp_path / "summary.txt").read_text()
    assert gpu_row in summary and "| [all-reduce engine on CUDA tensors (GPU)]" in summary and "PASS" in summary
    assert (tmp_path / "plots" / "train_throughput.png").is_file()


def test_the_records_step_says_when_nothing_was_recorded(tmp_path):
    r = _check(tmp_path)
    assert r.returncode != 0
    assert "no records written" in (tmp_path / "summary.txt").read_text()
