"""Bad values in real data stop the verbs as a user runs them: one line per rank, no traceback.

A label of -1 in the training split under ``mpirun -n 2 twinhpc train`` (before any step, every
rank with the same line); ``twinhpc preprocess`` of a table holding an inf.
"""

from __future__ import annotations

import re

import numpy as np

from tests.fixtures import small_cnn_job
from tests.integration.procs import MPIRUN2, TWINHPC, run


def rank_errors(stderr: str, verb: str) -> dict[int, str]:
    """``{rank: message}`` of the ``[rank r] twinhpc VERB: error: ...`` lines in ``stderr`` (the
    ranks' lines may arrive without a line break between them)."""
    pattern = rf"\[rank (\d+)\] twinhpc {verb}: error: (.*?)(?=\[rank \d+\]|\n|$)"
    return {int(rank): message.strip() for rank, message in re.findall(pattern, stderr)}


def test_a_label_outside_the_classes_stops_both_ranks_with_one_line_each(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3
    labels[[3, 17, 30]] = -1
    np.savez(tmp_path / "a.npz", image=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8), label=labels)
    (tmp_path / "job.toml").write_text(small_cnn_job("data") + '[preprocess]\nout = "pre"\n')
    run([*TWINHPC, "ingest", "npz", "a.npz", "--out", "data", "--label", "label", "--shards", "2"], tmp_path)
    run([*TWINHPC, "preprocess", "job.toml"], tmp_path)
    r = run([*MPIRUN2, *TWINHPC, "train", "job.toml", "--out", "run"], tmp_path, timeout=120, check=False)
    errors = rank_errors(r.stderr, "train")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert sorted(errors) == [0, 1] and len(set(errors.values())) == 1, r.stderr  # the same words
    assert errors[0].startswith("dataset data: labels outside the 3 classes (class indices 0..2): split 'train': ")
    assert "label -1 in" in errors[0]
    assert not (tmp_path / "run" / "results.h5").exists()


def test_preprocess_refuses_an_inf_in_one_line(tmp_path):
    rows = ["a,b,label"] + [f"{i},{i / 2},{'x' if i % 2 else 'y'}" for i in range(30)]
    rows[11] = "10,inf,y"
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "job.toml").write_text('[data]\ndataset = "data"\n[preprocess]\nout = "pre"\n[model]\nname = "mlp"\n')
    run([*TWINHPC, "ingest", "csv", "t.csv", "--out", "data", "--label", "label"], tmp_path)
    r = run([*MPIRUN2, *TWINHPC, "preprocess", "job.toml"], tmp_path, timeout=120, check=False)
    errors = rank_errors(r.stderr, "preprocess")
    assert r.returncode != 0 and "Traceback" not in r.stderr and sorted(errors) == [0, 1], r.stderr
    for line in errors.values():
        assert "field 'x', split" in line and "1 NaN or inf value(s), the first in sample" in line
    assert not (tmp_path / "pre").exists()
    r = run([*MPIRUN2, *TWINHPC, "preprocess", "job.toml", "--allow-nonfinite"], tmp_path, timeout=120)
    assert "x: 1 NaN/inf value(s) replaced by the column's training mean" in r.stdout
