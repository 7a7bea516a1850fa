"""The job's model: a registered builder, its structure from the preprocessed data and the job.

::

    model = build_model(job, open_prepared(job))   # an nn.Module on the CPU, in training mode

The data decides what the model's edges must be (features, channels, image size, vocabulary,
sequence length, classes: ``prep.model_defaults``); ``[model.structure]`` decides the rest and
may override those too, within what the data allows (:func:`check_structure_against_data`).
Training (:mod:`.loop`), validation and prediction (:mod:`.predict`) all build the model here,
so a checkpoint always loads into the network it was saved from.
"""

from __future__ import annotations

import inspect

import torch

from ..config import Job, JobFileError, check_structure
from ..models import build, builder

#: ``[model.structure]`` keys that must equal what the preprocessed data says, and what it is
DATA_EQUAL = {
    "in_features": "features per sample",
    "in_channels": "image channels",
    "input_size": "pixels of image height",
    "classes": "outputs (classes, or regression targets)",
}
#: keys that must be at least what the data says (embedding rows and positions may be spare)
DATA_AT_LEAST = {
    "vocab_size": "token ids (vocabulary and special tokens)",
    "max_len": "tokens per sample",
    "block_size": "tokens per sample",
}


def check_structure_against_data(name: str, structure: dict, defaults: dict, data_dir) -> None:
    """Raise :class:`JobFileError` naming ``model.structure.<key>`` when a key set in the job
    cannot work with the preprocessed data ``data_dir`` (e.g. ``in_features = 30000`` for a
    vocabulary of 29,000 terms), which would otherwise fail inside the first forward pass.

    Parameters
    ----------
    name : the model's registered name (for the message).
    structure : the keys the job sets, with the values it gives them.
    defaults : what the data says, for the keys the builder takes.
    data_dir : the preprocessed data's directory (for the message).
    """
    for k, v in structure.items():
        if k not in defaults or isinstance(v, bool) or not isinstance(v, int):
            continue
        data = int(defaults[k])
        if k in DATA_EQUAL and v != data:
            wanted, what = "exactly", DATA_EQUAL[k]
        elif k in DATA_AT_LEAST and v < data:
            wanted, what = "at least", DATA_AT_LEAST[k]
        else:
            continue
        raise JobFileError(
            f"model.structure.{k}",
            f"is {v}, but the preprocessed data {data_dir} has "
            f"{data} {what} (model {name!r} needs {wanted} that "
            f"many); leave the key out to take it from the data",
        )


def build_model(job: Job, prep) -> torch.nn.Module:
    """The job's model: the data's structure defaults (``prep.model_defaults``, only keys the
    builder takes) overridden by ``[model.structure]``; ``train.dropout`` set on every dropout.

    It draws its initial weights from torch's global generator: seed it first for a
    reproducible model.

    Raises
    ------
    JobFileError
        For a structure key the builder does not take, or one that contradicts the data
        (:func:`check_structure_against_data`).
    """
    name = job.model.name
    make = builder(name)  # raises the registry's error naming the known models
    params = inspect.signature(make).parameters
    defaults = {k: v for k, v in prep.model_defaults.items() if k in params}
    structure = check_structure(make, {**defaults, **job.model.structure}, where=f"model {name!r}")
    check_structure_against_data(
        name, {k: structure[k] for k in job.model.structure if k in structure}, defaults, prep.dataset_dir
    )
    model = build(name, **structure)
    if job.train.dropout is not None:
        set_dropout(model, job.train.dropout)
    return model


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the probability of every dropout layer (and attention dropout); returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p, n = p, n + 1
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout, n = p, n + 1
    return n
