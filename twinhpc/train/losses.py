"""Losses and metrics of the two tasks: classification (logits) and regression (values).

::

    loss_fn = make_loss("cross_entropy")               # (outputs, targets) -> per-sample losses
    loss = loss_fn(model(x), y).mean()
    metric_value("accuracy", predictions, targets)     # over a whole split (numpy arrays)

Per-sample losses (never a batch mean) let validation average over the samples of a split
exactly once, whatever the number of ranks or batches (see :mod:`twinhpc.train.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TwinError
from .metrics import confusion_report, regression_report

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(loss: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the sample axis: one float32 value per sample."""
    return loss.float().reshape(loss.shape[0], -1).mean(dim=1)


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets.long(), reduction="none")


def _regression(f) -> LossFn:
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(torch.float32).reshape(outputs.shape)
        return _per_sample(f(outputs.float(), targets, reduction="none"))

    return loss


#: loss name -> function of (outputs, targets) returning float32 per-sample losses
LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _regression(F.mse_loss),
    "l1": _regression(F.l1_loss),
    "huber": _regression(F.huber_loss),
}


def make_loss(name: str) -> LossFn:
    """The per-sample loss ``name`` (``train.loss``); TwinError naming the key if unknown."""
    if name not in LOSSES:
        raise TwinError(f"train.loss: unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def predictions(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """What a model's ``outputs`` predict: the class index (classification) or the values."""
    return outputs.argmax(dim=1) if task == "classification" else outputs.float()


def metric_value(name: str, pred: np.ndarray, target: np.ndarray, classes: int | None = None) -> float:
    """The metric ``name`` (``train.metric``) of predictions against targets over a split.

    Parameters
    ----------
    name : ``accuracy``, ``f1`` (macro over the classes present) for classification;
        ``mae``, ``rmse``, ``r2`` for regression.
    pred, target : class indices ``[n]``, or values ``[n]`` / ``[n, outputs]``.
    classes : number of classes (classification; default: the largest index + 1).
    """
    if name in ("accuracy", "f1"):
        n_classes = classes or int(max(pred.max(), target.max())) + 1
        report = confusion_report(target.astype(np.int64), pred.astype(np.int64), n_classes)
        return report["accuracy"] if name == "accuracy" else report["macro_f1"]
    if name in ("mae", "rmse", "r2"):
        return regression_report(target.reshape(pred.shape), pred)[name]
    raise TwinError(f"train.metric: unknown metric {name!r}")


# -- running metrics of the training batches --------------------------------------------------
def batch_stats(task: str, outputs: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Sufficient statistics of one batch for :func:`metric_from_stats`, as float64 that add up
    over batches and ranks: the confusion matrix (classification, ``classes²`` counts) or, per
    output, ``n, Σ|e|, Σe², Σy, Σy²`` (regression). A tensor on the outputs' device, not read
    on the host (the training loop copies it there together with the loss)."""
    with torch.no_grad():
        if task == "classification":
            pred = outputs.argmax(dim=1).long()
            cells = targets.long() * classes + pred
            # index_add_, not bincount: a CUDA bincount reads the largest index on the host
            counts = torch.zeros(classes * classes, dtype=torch.float64, device=outputs.device)
            return counts.index_add_(0, cells, torch.ones(cells.shape, dtype=torch.float64, device=cells.device))
        y = targets.double().reshape(outputs.shape[0], -1)
        e = outputs.double().reshape(y.shape) - y
        n = torch.full((y.shape[1],), float(y.shape[0]), dtype=torch.float64, device=outputs.device)
        return torch.stack([n, e.abs().sum(0), (e * e).sum(0), y.sum(0), (y * y).sum(0)]).reshape(-1)


def stats_size(task: str, classes: int) -> int:
    """Length of :func:`batch_stats`'s vector (``classes``: number of classes or outputs)."""
    return classes * classes if task == "classification" else 5 * classes


def metric_from_stats(name: str, stats: np.ndarray, classes: int) -> float:
    """The metric ``name`` of the batches whose :func:`batch_stats` were summed into ``stats``;
    NaN when no sample was seen."""
    if name in ("accuracy", "f1"):
        confusion = stats.reshape(classes, classes)
        total = confusion.sum()
        if total == 0:
            return float("nan")
        hits = np.diag(confusion)
        if name == "accuracy":
            return float(hits.sum() / total)
        support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
        precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
        recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros(classes), where=denom > 0)
        return float(f1[(support + predicted) > 0].mean())
    n, abs_err, sq_err, sum_y, sum_y2 = stats.reshape(5, classes)
    if n.sum() == 0:
        return float("nan")
    if name == "mae":
        return float(abs_err.sum() / n.sum())
    if name == "rmse":
        return float(np.sqrt(sq_err.sum() / n.sum()))
    ss_tot = sum_y2 - sum_y**2 / np.maximum(n, 1)
    r2 = np.where(ss_tot > 0, 1 - sq_err / np.where(ss_tot > 0, ss_tot, 1), (sq_err == 0).astype(float))
    return float(r2.mean())
