"""The classification and regression reports against hand-computed cases and a second, simpler
method."""

from __future__ import annotations

import numpy as np
import pytest

from twinhpc.train.metrics import confusion_report, regression_report


def test_confusion_report_of_a_hand_checked_case():
    r = confusion_report([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2], 3)
    np.testing.assert_array_equal(r["confusion"], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert r["confusion"].dtype == np.int64 and r["classes"] == ["0", "1", "2"]
    assert r["accuracy"] == pytest.approx(4 / 6)
    np.testing.assert_allclose(r["precision"], [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(r["recall"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(r["f1"], [1 / 2, 4 / 5, 2 / 3])
    np.testing.assert_array_equal(r["support"], [2, 2, 2])
    assert r["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_confusion_report_equals_counting_by_hand_on_random_labels():
    rng = np.random.default_rng(0)
    n_classes = 5
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 5, 200)  # class 4 never true
    r = confusion_report(y_true, y_pred, n_classes)
    for c in range(n_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        assert r["precision"][c] == pytest.approx(precision) and r["recall"][c] == pytest.approx(recall)
        assert r["f1"][c] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        assert r["support"][c] == tp + fn
    assert r["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert r["confusion"].sum() == 200


def test_a_class_never_predicted_or_present():
    r = confusion_report([0, 0, 1], [0, 0, 0], 3)  # class 1 never predicted, class 2 absent
    np.testing.assert_array_equal(r["precision"], [2 / 3, 0, 0])
    np.testing.assert_array_equal(r["recall"], [1, 0, 0])
    assert r["macro_f1"] == pytest.approx((0.8 + 0) / 2)  # over classes 0 and 1 only


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 3], [0, 1], r"y_true must hold class indices in \[0, 3\)"),
        ([0, 1], [0, -1], "y_pred must hold class indices"),
        ([0.0, 1.0], [0, 1], "y_true must hold class indices"),
        ([0, 1], [0], "equal length"),
        ([], [], "non-empty"),
    ],
)
def test_confusion_report_rejects_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        confusion_report(np.array(y_true), np.array(y_pred), 3)


def test_regression_report_of_a_hand_checked_case():
    r = regression_report([1, 2, 3, 4], [1, 2, 3, 6])
    assert r == {"task": "regression", "n": 4, "mae": 0.5, "rmse": 1.0, "r2": pytest.approx(1 - 4 / 5)}


def test_regression_report_of_several_outputs_averages_r2():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 3))
    yhat = y + rng.normal(scale=0.3, size=(50, 3))
    r = regression_report(y, yhat)
    per_output = [regression_report(y[:, k], yhat[:, k])["r2"] for k in range(3)]
    assert r["r2"] == pytest.approx(np.mean(per_output))
    assert r["mae"] == pytest.approx(np.mean([regression_report(y[:, k], yhat[:, k])["mae"] for k in range(3)]))
    assert r["rmse"] == pytest.approx(np.sqrt(np.mean((y - yhat) ** 2)))


def test_regression_report_of_a_constant_target():
    assert regression_report([2, 2], [2, 2])["r2"] == 1.0
    assert regression_report([2, 2], [2, 3])["r2"] == 0.0
    with pytest.raises(ValueError, match="equal shape"):
        regression_report([1, 2], [1, 2, 3])
