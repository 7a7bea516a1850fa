"""``twinhpc sbatch``: the batch script of a job (twinhpc/batch.py) against golden files, every
``[slurm]`` key reaching it, bad values named by key, and the command line."""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from twinhpc.batch import render
from twinhpc.config import load_job
from twinhpc.config.fields import JobFileError
from twinhpc.config.slurm import SlurmConfig

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
WORKDIR, VENV = "/home/user/project", "/home/user/project/.venv"
JOB = """
[data]
dataset = "data/digits"
batch_size = 64
[model]
name = "cnn"
"""
FULL = (
    JOB
    + """
[train]
out = "/scratch/me/runs/digits big"

[slurm]
partition = "gpu"
nodes = 2
ntasks_per_node = 4
cpus_per_task = 8
gpus_per_node = 4
mem_gb = 64
time = "1-00:00:00"
account = "proj42"
qos = "high"
job_name = "digits-big"
constraint = "a100"
signal_seconds = 600

[slurm.additional]
mail-type = "END,FAIL"
comment = "a long run"
exclusive = true
hint = false
output = "slurm-%x-%j.log"
"""
)


def job_file(tmp_path: Path, text: str = JOB, name: str = "digits.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check_golden(name: str, got: str) -> None:
    """``got`` must equal tests/golden/<name>; the message is the diff (TWINHPC_UPDATE_GOLDEN=1
    rewrites the file)."""
    path = GOLDEN / name
    if os.environ.get("TWINHPC_UPDATE_GOLDEN"):
        path.write_text(got)
    want = path.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), f"golden/{name}", "rendered"))
    assert got == want, f"the batch script changed (TWINHPC_UPDATE_GOLDEN=1 rewrites the golden file):\n{diff}"


def test_a_job_without_a_slurm_table_gets_the_defaults(tmp_path):
    path = job_file(tmp_path)
    job = load_job(path, ["train.epochs=5"])
    check_golden("sbatch-default.sh", render(job, "jobs/digits.toml", ["train.epochs=5"], workdir=WORKDIR, venv=VENV))


def test_every_key_of_a_full_slurm_table_with_a_fixed_run_and_resume(tmp_path):
    path = job_file(tmp_path, FULL, "digits big.toml")
    sets = ["optim.lr=0.01", "train.seed=3"]
    job = load_job(path, sets)
    text = render(job, "jobs/digits big.toml", sets, workdir=WORKDIR + " 2", venv=None, out="runs/it's", resume=True)
    check_golden("sbatch-full.sh", text)


#: a non-default value of every [slurm] key, and the #SBATCH line it must give
EVERY_KEY = {
    "partition": ("gpu", "#SBATCH --partition=gpu"),
    "nodes": (3, "#SBATCH --nodes=3"),
    "ntasks_per_node": (5, "#SBATCH --ntasks-per-node=5"),
    "cpus_per_task": (6, "#SBATCH --cpus-per-task=6"),
    "gpus_per_node": (2, "#SBATCH --gpus-per-node=2"),
    "mem_gb": (1.5, "#SBATCH --mem=1536M"),
    "time": ("03:00:00", "#SBATCH --time=03:00:00"),
    "account": ("proj", "#SBATCH --account=proj"),
    "qos": ("low", "#SBATCH --qos=low"),
    "job_name": ("other", "#SBATCH --job-name=other"),
    "constraint": ("skylake", "#SBATCH --constraint=skylake"),
    "signal_seconds": (300, "#SBATCH --signal=USR2@300"),
    "additional": ({"mail-user": "me@example.org"}, "#SBATCH --mail-user=me@example.org"),
}


def test_every_slurm_key_reaches_the_script(tmp_path):
    assert set(EVERY_KEY) == {f.name for f in dataclasses.fields(SlurmConfig)}, "a [slurm] key without a case here"
    job = load_job(job_file(tmp_path))
    base = render(job, "j.toml", [], workdir=WORKDIR, venv=VENV)
    for key, (value, line) in EVERY_KEY.items():
        changed = dataclasses.replace(job, slurm=dataclasses.replace(job.slurm, **{key: value}))
        text = render(changed, "j.toml", [], workdir=WORKDIR, venv=VENV)
        assert line in text.splitlines() and line not in base, key
        assert text.splitlines()[6:].index(line) < text.splitlines()[6:].index("set -uo pipefail"), key


@pytest.mark.parametrize(
    "table, key, message",
    [
        ("time = 2\nsignal_seconds = 120", "slurm.signal_seconds", "120 s is not shorter than slurm.time (2, 2 min)"),
        ("[slurm.additional]\nntasks = 8", "slurm.additional.ntasks", "slurm.nodes and slurm.ntasks_per_node"),
        ("[slurm.additional]\nn = 8", "slurm.additional.n", "--ntasks is written by"),
        ("[slurm.additional]\ntime = 5", "slurm.additional.time", "--time is written by slurm.time"),
        ("[slurm.additional]\nsignal = 'B:USR1@60'", "slurm.additional.signal", "slurm.signal_seconds"),
        ("[slurm.additional]\nno-requeue = true", "slurm.additional.no-requeue", "the requeue needs --requeue"),
        ("[slurm.additional]\n'mail type' = 'END'", "slurm.additional.mail type", "not an sbatch option name"),
        ('[slurm.additional]\ncomment = "a\\nb"', "slurm.additional.comment", "a quote or line break"),
        ("job_name = 'say \"hi\"'", "slurm.job_name", "a quote or line break"),
    ],
)
def test_bad_values_name_the_key(tmp_path, table, key, message):
    body = table if table.startswith("[") else "[slurm]\n" + table
    job = load_job(job_file(tmp_path, JOB + body + "\n"))
    with pytest.raises(JobFileError) as e:
        render(job, "j.toml", [], workdir=WORKDIR, venv=VENV)
    assert str(e.value).startswith(f"{key}: ") and message in str(e.value), str(e.value)


def test_the_command_prints_writes_and_refuses(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_file(tmp_path)
    r = cli("sbatch", "digits.toml", "--set", "slurm.ntasks_per_node=3")
    assert r.returncode == 0 and "#SBATCH --ntasks-per-node=3" in r.stdout, r.stderr
    assert f"#SBATCH --chdir={tmp_path}" in r.stdout and 'RUN=runs/digits-"$SLURM_JOB_ID"' in r.stdout
    r = cli("sbatch", "digits.toml", "--script", "job.sh")
    assert r.returncode == 0 and r.stdout == "" and "wrote job.sh" in r.stderr, r.stderr
    assert (tmp_path / "job.sh").stat().st_mode & stat.S_IXUSR and sorted(os.listdir(tmp_path)) == [
        "digits.toml",
        "job.sh",
    ]
    r = cli("sbatch", "digits.toml", "--set", "slurm.signal_seconds=3600")
    assert r.returncode == 2 and "twinhpc sbatch: error: slurm.signal_seconds: 3600 s is not shorter" in r.stderr
    r = cli("sbatch", "digits.toml", "--resume")
    assert r.returncode == 2 and "--resume: continues a fixed run directory; give it with --out RUN" in r.stderr
    r = cli("sbatch", "digits.toml", "--script", tmp_path / "no" / "such" / "dir.sh")
    assert r.returncode == 2 and "cannot write it" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["sbatch-default.sh", "sbatch-full.sh"])
def test_the_golden_scripts_are_valid_bash(name):
    assert subprocess.run(["bash", "-n", str(GOLDEN / name)], timeout=30).returncode == 0
