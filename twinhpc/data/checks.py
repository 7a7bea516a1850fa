"""Checks of a dataset's values that a step makes before it uses them (collective).

::

    from twinhpc.data.checks import check_labels

    check_labels(world, "data/x-pre", ["train", "val"], "label", classes=10, dataset="data/x")

:func:`check_labels` is what ``train`` runs at set-up, before the first step: a class index
outside ``0 .. classes - 1`` (a ``-1`` for "no label", a class that the class list lacks) would
otherwise end training in the loss function with a traceback, on some ranks only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..comm.world import World
from ..errors import DatasetError
from .format import Manifest
from .shards import open_shard


def _outside(path: Path, field: str, classes: int) -> dict[int, int]:
    """``{value: samples}`` of the label ``field`` of one shard outside ``0 .. classes - 1``."""
    with open_shard(path) as f:
        if field not in f:
            raise DatasetError(f"{path}: field {field!r} is missing")
        labels = np.asarray(f[field][()]).reshape(-1)
    bad = labels[(labels < 0) | (labels >= classes)]
    values, counts = np.unique(bad, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def check_labels(
    world: World,
    directory: str | os.PathLike[str],
    splits: Sequence[str],
    field: str,
    classes: int,
    dataset: str | os.PathLike[str] | None = None,
) -> None:
    """Collective: every label of ``splits`` of the dataset at ``directory`` must be a class
    index ``0 .. classes - 1``.

    The ranks share the splits' shard files (contiguous runs balanced by sample count), count the
    values outside, and gather the counts, so every rank raises the same error or none. Splits
    the manifest lacks are skipped (the step that reads them reports it).

    Parameters
    ----------
    dataset : the dataset the error names (default ``directory``), e.g. the source dataset of a
        preprocessed one (which copies its labels unchanged).

    Raises
    ------
    DatasetError
        On every rank: one line naming the dataset, and for each split holding such labels the
        values and their sample counts; or naming the shard a rank could not read.
    """
    directory = Path(directory)
    manifest = world.run(lambda: Manifest.load(directory), DatasetError, name="labels: manifest")
    shards = [(s.name, sh) for s in manifest.splits if s.name in splits for sh in s.shards]
    weights = np.array([sh.count for _, sh in shards], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(weights)[:-1]]).astype(np.int64)
    owner = (starts * world.size) // max(int(weights.sum()), 1)
    mine = [shards[i] for i in range(len(shards)) if owner[i] == world.rank]

    def local() -> list[tuple[str, dict[int, int]]]:
        return [(split, _outside(directory / sh.file, field, classes)) for split, sh in mine]

    found = world.run(local, DatasetError, name="labels: read")
    merged: dict[str, dict[int, int]] = {}
    for split, counts in (item for part in world.allgather(found, name="labels: counts") for item in part):
        for value, n in counts.items():
            merged.setdefault(split, {})[value] = merged.get(split, {}).get(value, 0) + n
    problems = [
        f"split {split!r}: " + ", ".join(f"label {v} in {n} sample(s)" for v, n in sorted(merged[split].items()))
        for split in splits
        if merged.get(split)
    ]
    error = None
    if problems:
        error = (
            f"dataset {dataset or directory}: labels outside the {classes} classes (class indices 0..{classes - 1}): "
            f"{'; '.join(problems)}; a labelled split must hold class indices only (twinhpc inspect shows "
            f"the counts of a dataset; ingest them into another split, or fix the class list)"
        )
    world.check(error, DatasetError, name="labels: agree")
