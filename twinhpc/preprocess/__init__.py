"""Preprocessing: fit statistics and vocabularies on the training split, write the preprocessed
dataset, and turn its batches into model inputs.

::

    from twinhpc.preprocess import open_prepared, preprocess

    preprocess(job)                  # collective (`twinhpc preprocess JOB.toml`)
    prep = open_prepared(job)        # every later step: dataset_dir, fields, transform, ...

Modules: :mod:`.fit` (fitting across ranks), :mod:`.transform` (stored form and per-batch
transforms), :mod:`.prepared` (the preprocessed dataset, ``state.h5``, the contract).
``docs/preprocess.md`` is the user-facing description.
"""

from .prepared import Prepared, open_prepared, preprocess

__all__ = ["Prepared", "open_prepared", "preprocess"]
