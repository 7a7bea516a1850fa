"""``PRED.h5``: the layout its module docstring gives, for classification and regression, and a
write that fails leaves the previous file and no temporary one."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from twinhpc.io.predictions import FORMAT_NAME, FORMAT_VERSION, write_predictions

ATTRS = {"dataset": "data/new", "split": "test", "checkpoint": "runs/x/ckpt/step-4.h5", "config": '{"a": 1}'}


def test_classification_file_holds_rows_predicted_classes_and_attributes(tmp_path):
    out = tmp_path / "sub" / "pred.h5"  # the directory is created
    rows = {
        "index": np.array([0, 2, 5], dtype=np.int64),
        "output": np.array([[0.1, 2.0], [3.0, -1.0], [0.5, 0.25]], dtype=np.float64),
        "target": np.array([1, 0, -1], dtype=np.int64),
    }
    write_predictions(out, rows, task="classification", classes=["cat", "dog"], **ATTRS)
    with h5py.File(out, "r") as f:
        assert dict(f.attrs) == {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "task": "classification",
            "classes": json.dumps(["cat", "dog"]),
            **ATTRS,
        }
        assert sorted(f) == ["index", "output", "prediction", "target"]
        assert f["index"].dtype == np.int64 and np.array_equal(f["index"][()], [0, 2, 5])
        assert f["output"].dtype == np.float32 and f["output"].shape == (3, 2)
        assert f["prediction"].dtype == np.int64 and np.array_equal(f["prediction"][()], [1, 0, 0])
        assert np.array_equal(f["target"][()], [1, 0, -1])
    assert [p.name for p in out.parent.iterdir()] == ["pred.h5"]


def test_regression_file_has_no_prediction_and_no_target_without_labels(tmp_path):
    out = tmp_path / "pred.h5"
    rows = {"index": np.arange(4, dtype=np.int64), "output": np.linspace(0, 1, 4, dtype=np.float32).reshape(4, 1)}
    write_predictions(out, rows, task="regression", classes=[], **ATTRS)
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["index", "output"] and f.attrs["classes"] == "[]" and f.attrs["task"] == "regression"
        assert np.array_equal(f["output"][()], rows["output"])


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    out = tmp_path / "pred.h5"
    good = {"index": np.arange(2, dtype=np.int64), "output": np.ones((2, 1), dtype=np.float32)}
    write_predictions(out, good, task="regression", classes=[], **ATTRS)
    before = out.read_bytes()
    with pytest.raises(KeyError):
        write_predictions(out, {"index": np.arange(3)}, task="regression", classes=[], **ATTRS)  # no output
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred.h5"]
