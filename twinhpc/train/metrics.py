"""The reports of a model's predictions over a split: the classification report (confusion matrix,
per-class precision, recall and F1) and the regression report (MAE, RMSE, R²). numpy only.

::

    report = confusion_report(y_true, y_pred, n_classes, class_names)   # dict, see the function
    report = regression_report(y, yhat)

Validation (:mod:`.evaluate`) stores them as ``results.h5``'s ``/report`` (``docs/results-format.md``),
and :func:`.losses.metric_value` reads the metrics ``accuracy``, ``f1`` (``macro_f1``), ``mae``,
``rmse`` and ``r2`` from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_report(y_true, y_pred, n_classes: int, class_names=None) -> dict[str, Any]:
    """The classification report of predicted against true class indices.

    Parameters
    ----------
    y_true, y_pred : 1-D integer arrays of equal length, values in ``[0, n_classes)``.
    n_classes : number of classes.
    class_names : names of the classes (default ``"0"``, ``"1"`` ...).

    Returns
    -------
    dict
        ``task="classification"``, ``n`` (samples), ``accuracy``, ``macro_f1`` (mean F1 over
        the classes that occur in ``y_true`` or ``y_pred``), ``confusion`` (int64
        ``[n_classes, n_classes]``, row = true class, column = predicted), per class
        ``precision``, ``recall``, ``f1`` (float64; 0 where undefined: nothing predicted, or no
        sample, of that class) and ``support`` (int64: true samples), ``classes`` (names).

    Raises
    ------
    ValueError
        For empty or unequal inputs, or a class index outside ``[0, n_classes)``.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and of equal length, got {y_true.size} and {y_pred.size}"
        )
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {n_classes}), got {y.dtype} values in [{y.min()}, {y.max()}]"
            )
    names = [str(c) for c in (class_names if class_names is not None else range(n_classes))]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    confusion = np.bincount(y_true.astype(np.int64) * n_classes + y_pred, minlength=n_classes**2)
    confusion = confusion.reshape(n_classes, n_classes).astype(np.int64)
    hits = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)
    seen = (support + predicted) > 0
    return {
        "task": "classification",
        "n": int(y_true.size),
        "accuracy": float(hits.sum() / y_true.size),
        "macro_f1": float(f1[seen].mean()),
        "confusion": confusion,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "classes": names,
    }


def regression_report(y, yhat) -> dict[str, Any]:
    """The regression report of predictions ``yhat`` against targets ``y``.

    Parameters
    ----------
    y, yhat : arrays of equal shape ``[n]`` or ``[n, outputs]``.

    Returns
    -------
    dict
        ``task="regression"``, ``n`` (samples), ``mae`` and ``rmse`` over all values, ``r2``:
        the mean over outputs of ``1 - SS_res / SS_tot``; an output with constant targets
        (``SS_tot = 0``) counts 1.0 if predicted exactly, else 0.0 (as scikit-learn).

    Raises
    ------
    ValueError
        For empty inputs or unequal shapes.
    """
    y = np.asarray(y, dtype=np.float64)
    yhat = np.asarray(yhat, dtype=np.float64)
    if y.shape != yhat.shape or y.size == 0 or y.ndim not in (1, 2):
        raise ValueError(
            f"y and yhat must be non-empty [n] or [n, outputs] arrays of equal shape, got {y.shape} and {yhat.shape}"
        )
    err = yhat - y
    y2, e2 = y.reshape(len(y), -1), err.reshape(len(y), -1)
    ss_res = (e2**2).sum(axis=0)
    ss_tot = ((y2 - y2.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), (ss_res == 0).astype(float))
    return {
        "task": "regression",
        "n": len(y),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(r2.mean()),
    }
