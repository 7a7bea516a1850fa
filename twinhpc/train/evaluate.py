"""Distributed evaluation: every rank infers a disjoint part of a split, the parts are merged.

::

    loader = split_loader(prep.dataset_dir, "val", job, world, fields=prep.fields)
    ev = evaluate(model, loader, prep.transform, job, world)   # the same on every rank
    ev.loss, ev.metric, ev.report()                             # report: results.h5's /report

Note:
    *Every sample exactly once.* The loader cuts an epoch into equal shares per rank; with
    ``policy="pad"`` the shares cover every sample, a few of them twice (docs/loader.md). Each
    rank therefore keeps the global sample index of every row it infers
    (``loader.indices(epoch)``), the rows of all ranks are gathered (``MPI_Allgatherv`` of
    numpy buffers; no pickling), sorted by index and de-duplicated. Loss and metrics are then
    computed from the same arrays on every rank, so they do not depend on the number of ranks
    or batches (up to float rounding inside the model), and every rank takes the same
    early-stopping and schedule decisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..comm.watchdog import fault_point
from ..config import Job
from ..data.loader import ShardedLoader
from .device import to_device
from .losses import make_loss, metric_value, predictions
from .metrics import confusion_report, regression_report

#: epoch whose permutation evaluation reads (any fixed number would do)
EVAL_EPOCH = 0


def split_loader(directory, split: str, job: Job, world, fields=None) -> ShardedLoader:
    """A loader that covers every sample of ``split`` (``pad``) with batches of at most the job's
    per-rank batch size (smaller for a split with fewer samples than ranks × batch)."""
    from ..data.format import Manifest

    n = Manifest.load(directory).split(split).count
    batch = max(1, min(job.data.per_rank_batch(world.size), -(-n // world.size)))
    loader = ShardedLoader(
        directory,
        split,
        batch,
        seed=job.data.seed,
        fields=fields,
        policy="pad",
        prefetch=job.data.prefetch,
        world=world,
    )
    loader.set_epoch(EVAL_EPOCH)
    return loader


def autocast(bf16: bool, device: torch.device):
    """bfloat16 autocast for a model on ``device`` (its type: ``cpu`` or ``cuda``), or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def infer(
    model: torch.nn.Module, loader: ShardedLoader, transform: Callable, *, loss_fn=None, bf16: bool = False
) -> dict[str, np.ndarray]:
    """This rank's outputs over its share of the split (the loader's epoch :data:`EVAL_EPOCH`).

    Returns ``index`` (int64 global sample indices), ``output`` (float32 model outputs), and,
    when the batches have targets, ``target`` and, with ``loss_fn``, ``loss`` (per sample).
    """
    was_training = model.training
    model.eval()
    loader.set_epoch(EVAL_EPOCH)
    order = loader.indices(EVAL_EPOCH)
    parts: dict[str, list[np.ndarray]] = {"output": [], "target": [], "loss": []}
    device = next(model.parameters()).device
    for batch in loader:
        x, y = transform(batch)
        x, y = to_device(x, device), to_device(y, device)
        with autocast(bf16, device):
            out = model(x)
        parts["output"].append(out.float().cpu().numpy())
        if y is not None:
            parts["target"].append(y.cpu().numpy())
            if loss_fn is not None:
                parts["loss"].append(loss_fn(out, y).float().cpu().numpy())
    model.train(was_training)
    result = {"index": order[: sum(len(o) for o in parts["output"])].astype(np.int64)}
    result.update({k: np.concatenate(v) for k, v in parts.items() if v})
    return result


def merge(world, local: dict[str, np.ndarray], root: int | None = None) -> dict[str, np.ndarray] | None:
    """Rows of every rank, ordered by global index, each index once.

    Parameters
    ----------
    local : equal-length arrays per name, ``index`` among them (what :func:`infer` returns).
    root : gather on this rank only (others get ``None``); ``None``: on every rank.
    """
    merged = {name: gather_rows(world, arr, root, name=f"rows: {name}") for name, arr in sorted(local.items())}
    if root is not None and world.rank != root:
        return None
    index, first = np.unique(merged["index"], return_index=True)
    return {name: arr[first] for name, arr in merged.items()} | {"index": index}


def gather_rows(world, arr: np.ndarray, root: int | None = None, name: str = "rows") -> np.ndarray | None:
    """Concatenate every rank's ``arr`` along axis 0 in rank order (``Allgatherv``/``Gatherv``)."""
    return world.gather_rows(arr, root, name=name)


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate` (identical on every rank)."""

    task: str
    split: str
    loss: float
    metric_name: str
    metric: float
    rows: dict[str, np.ndarray]  # index, output, target, loss: one row per sample, by index
    classes: tuple[str, ...] = ()

    def metrics(self, prefix: str = "val_") -> dict[str, float]:
        """``{val_loss, val_<metric>}`` for results.h5's ``/metrics``."""
        return {f"{prefix}loss": self.loss, f"{prefix}{self.metric_name}": self.metric}

    def report(self) -> dict[str, Any]:
        """The final report (results.h5 ``/report``): confusion matrix and per-class precision,
        recall, F1 (classification), MAE, RMSE, R² (regression) or the one-step MSE, nRMSE and
        RMSE (field, :func:`~twinhpc.train.field.field_report`), plus ``loss`` and ``split``."""
        if self.task == "field":
            from .field import field_report

            return {**field_report(self.rows), "loss": self.loss, "split": self.split}
        pred = predictions(self.task, torch.from_numpy(self.rows["output"])).numpy()
        if self.task == "classification":
            n = len(self.classes) or self.rows["output"].shape[1]
            report = confusion_report(self.rows["target"], pred, n, self.classes or None)
        else:
            report = regression_report(self.rows["target"].reshape(pred.shape), pred)
        return {**report, "loss": self.loss, "split": self.split}


def evaluate(
    model: torch.nn.Module,
    loader: ShardedLoader,
    transform: Callable,
    job: Job,
    world,
    classes: tuple[str, ...] = (),
    *,
    field=None,
) -> Evaluation:
    """Loss and ``train.metric`` of ``model`` over the loader's split; collective.

    ``field``: the :class:`~twinhpc.train.field.FieldTask` of a field job, whose one-step errors
    are evaluated per scenario (:func:`~twinhpc.train.field.infer_field`).

    Raises
    ------
    TwinError
        Naming the split, when its batches hold no targets (a split without labels).
    """
    from ..errors import TwinError

    task = job.train.task
    if field is not None:
        from .field import field_report, infer_field

        rows = merge(world, infer_field(model, loader, transform, field, bf16=job.train.bf16))
        report = field_report(rows)
        metric = job.train.task_metric
        return Evaluation(task, loader.split, report["mse"], metric, report[metric], rows)
    local = infer(model, loader, transform, loss_fn=make_loss(job.train.task_loss), bf16=job.train.bf16)
    fault_point("validation")
    rows = merge(world, local)
    if "target" not in rows:
        raise TwinError(f"split {loader.split!r} of {loader.directory} has no label field to evaluate against")
    pred = predictions(task, torch.from_numpy(rows["output"])).numpy()
    n_classes = (len(classes) or rows["output"].shape[1]) if task == "classification" else None
    metric = metric_value(job.train.task_metric, pred, rows["target"], n_classes)
    return Evaluation(
        task,
        loader.split,
        float(rows["loss"].astype(np.float64).mean()),
        job.train.task_metric,
        float(metric),
        rows,
        tuple(classes),
    )
