"""The predictions file ``PRED.h5`` that ``twinhpc predict`` writes.

Layout (format ``twinhpc-predictions``, version 1)::

    /            attrs: format, version, task, dataset, split, checkpoint, config (job JSON),
                 classes (JSON list; [] for regression)
    /index       int64 [n]            the sample's index in the split (stored order), ascending
    /output      float32 [n, k]       logits (classification) or predicted values (regression)
    /prediction  int64 [n]            the predicted class: the argmax of ``output`` (classification only)
    /target      [n, ...]             the label, when the dataset has one (classification: the
                                      class index of ``classes``, mapped by name from the
                                      input's own classes; -1 for a class not among them)

One process writes it, under a temporary name in the same directory, then fsyncs and renames
it (:func:`~twinhpc.io.atomic.replace_durably`): ``PRED.h5`` is complete or absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import hdf5_image, replace_durably

FORMAT_NAME = "twinhpc-predictions"
FORMAT_VERSION = 1


def write_predictions(
    out: Path,
    rows: Mapping[str, np.ndarray],
    *,
    task: str,
    classes: Sequence[str],
    dataset: str,
    split: str,
    checkpoint: str,
    config: str,
) -> None:
    """Write ``out`` atomically (its directory created when missing).

    Parameters
    ----------
    rows : ``index``, ``output`` and optionally ``target``: one row per sample, ordered by index.
    task : ``"classification"`` (``/prediction`` is written) or ``"regression"``.
    classes : the class names (empty for regression).
    dataset, split, checkpoint : what was predicted, and with which checkpoint (for the attributes).
    config : the job as JSON.

    Raises
    ------
    OSError
        When the file cannot be written; the temporary file is removed and ``out`` is left as it was.
    """

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with hdf5_image(tmp) as f:
            f.attrs.update(
                {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "task": task,
                    "dataset": dataset,
                    "split": split,
                    "checkpoint": checkpoint,
                    "config": config,
                    "classes": json.dumps(list(classes)),
                }
            )
            f.create_dataset("index", data=rows["index"])
            f.create_dataset("output", data=rows["output"].astype(np.float32))
            if task == "classification":
                f.create_dataset("prediction", data=rows["output"].argmax(axis=1).astype(np.int64))
            if "target" in rows:
                f.create_dataset("target", data=rows["target"])
        replace_durably(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
