"""A trained checkpoint at work: validate it on a split, or predict a dataset into ``PRED.h5``.

::

    report = validate(job, run="runs/digits", split="test")      # collective; same on every rank
    predict(job, run="runs/digits", dataset="data/new", out="pred.h5")   # collective

``PRED.h5`` is written by :func:`twinhpc.io.predictions.write_predictions`, whose docstring
gives its layout (format ``twinhpc-predictions``).

Note:
    Ranks predict disjoint parts (each rank its share of the split, ``policy="pad"`` so every
    sample is covered; the few samples read twice are dropped by index), rank 0 gathers the
    rows with ``MPI_Gatherv``, orders them by index and writes the file under a temporary name,
    fsyncs and renames it: ``PRED.h5`` is complete or absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..comm.world import World, get_world
from ..config import Job
from ..data.format import Manifest
from ..errors import TwinError
from ..io.checkpoint import load_checkpoint, select_checkpoint
from ..io.predictions import write_predictions
from .evaluate import evaluate, infer, merge, split_loader

log = logging.getLogger("twinhpc")


#: ``--checkpoint`` values that name a checkpoint of the run rather than a file
CHOICES = ("last", "best")


def find_checkpoint(run=None, checkpoint=None) -> tuple[Path, str]:
    """The checkpoint to use and how it was chosen: ``checkpoint`` is ``"last"`` (the default:
    the run's newest), ``"best"`` (the best epoch's, kept by ``train.keep_best``) of the run
    directory ``run``, or a checkpoint file. Returns ``(path, which)``, ``which`` e.g.
    ``"best, step 24"`` or ``"file"``."""
    if checkpoint is not None and str(checkpoint) not in CHOICES:
        path = Path(checkpoint)
        if not path.is_file():
            raise TwinError(f"{path}: no such checkpoint file (--checkpoint takes best, last or a PATH)")
        return path, "file"
    if run is None:
        raise TwinError("give a run directory (--run RUN) or a checkpoint file (--checkpoint PATH)")
    return select_checkpoint(run, str(checkpoint or "last"))


def load_model(job: Job, prep, path: Path):
    """The job's model with the checkpoint's weights, in eval mode (no RNG state is touched)."""
    from .device import resolve_device
    from .model import build_model

    model = build_model(job, prep)
    load_checkpoint(path, model, restore_rng=False)
    return model.to(resolve_device(job.train.device)).eval()


def _prepared(job: Job, world: World, prepared):
    if prepared is not None:
        return prepared
    from ..preprocess import open_prepared

    return world.run(lambda: open_prepared(job))


def validate(
    job: Job,
    run=None,
    *,
    checkpoint=None,
    split: str | None = None,
    world: World | None = None,
    prepared=None,
    horizons=None,
    save: bool = True,
    stability_steps: int | None = None,
) -> dict:
    """Evaluate a checkpoint on a split of the preprocessed data; collective.

    A field job (``train.task = "field"``) is evaluated one step ahead and, besides, rolled out
    over the split (:func:`~twinhpc.train.twin_validation.validate_twin`: errors at ``horizons``
    against persistence and a linear baseline, the energy balance), which rank 0 writes into the
    run's results.h5 as ``/twin_validation`` (``save``; when the run directory has a results.h5).

    Parameters
    ----------
    run : the run directory.
    checkpoint : ``"last"`` (default) or ``"best"`` checkpoint of ``run``, or a checkpoint file.
    split : default ``data.val_split``; for a field job ``data.test_split`` when the dataset has
        it, else ``data.val_split``.
    horizons : a field job's rollout horizons in saved steps (default 1, 10, 50; clipped to T).
    stability_steps : a field job's stability check, in saved steps (default
        :data:`~twinhpc.train.twin_validation.STABILITY_STEPS`; 0: none).

    Returns
    -------
    dict
        The report (as results.h5's ``/report``: accuracy, confusion, per-class precision,
        recall, F1, or MAE, RMSE, R², or a field job's one-step MSE, nRMSE, RMSE; ``loss``,
        ``split``) plus ``checkpoint`` (its path) and ``which`` (``"last, step N"``, ``"best,
        step N"`` or ``"file"``); a field job's also ``twin_validation`` (a
        :class:`~twinhpc.train.twin_validation.TwinValidation`) and ``results`` (the results.h5
        written, or ``None``); on every rank.
    """
    world = world or get_world()
    world.stall_timeout = job.train.stall_timeout
    prep = _prepared(job, world, prepared)
    path, which = world.run(lambda: find_checkpoint(run, checkpoint), name="find checkpoint")
    model = world.run(lambda: load_model(job, prep, path), name="load model")
    field = None
    if job.train.task == "field":
        from .field import FieldTask
        from .twin_validation import default_split

        field = FieldTask(prep.field)
        split = split or default_split(Manifest.load(prep.dataset_dir), job)
    loader = split_loader(prep.dataset_dir, split or job.data.val_split, job, world, prep.fields)
    with loader:
        ev = evaluate(model, loader, prep.transform, job, world, tuple(prep.classes), field=field)
    report = {**ev.report(), "checkpoint": str(path), "which": which}
    if field is None:
        return report
    from .twin_validation import HORIZONS, STABILITY_STEPS, validate_twin

    tv = validate_twin(
        job,
        run,
        checkpoint=path,
        split=split,
        horizons=horizons or HORIZONS,
        world=world,
        prepared=prep,
        stability_steps=STABILITY_STEPS if stability_steps is None else stability_steps,
    )
    tv.which = which
    run_dir = Path(run) if run is not None else path.parent.parent

    def write() -> Path | None:
        if not (save and world.is_root and (run_dir / "results.h5").is_file()):
            return None
        return tv.save(run_dir)

    written = world.run(write, name="twin validation: write")
    return {**report, "twin_validation": tv, "results": None if written is None else str(written)}


def predict(
    job: Job,
    run=None,
    dataset=None,
    out=None,
    *,
    checkpoint=None,
    split: str | None = None,
    world: World | None = None,
    prepared=None,
) -> Path | None:
    """Predict every sample of ``dataset``'s split with a checkpoint into ``out``; collective.

    Parameters
    ----------
    run, checkpoint : as for :func:`validate`.
    dataset : a dataset directory as ``twinhpc ingest`` writes it, with the fields of the job's
        ``data.dataset`` (the label may be missing); it is preprocessed per batch with the
        job's fitted state.
    split : default ``data.test_split`` when the dataset has it, else its only split.

    Returns
    -------
    Path or None
        ``out`` on rank 0, ``None`` elsewhere.
    """
    world = world or get_world()
    world.stall_timeout = job.train.stall_timeout
    if dataset is None or out is None:
        raise TwinError("predict needs --input DATASET and --out PRED.h5")
    if job.train.task == "field":
        raise TwinError(
            "predict: a field job (train.task = 'field') predicts trajectories; roll it out with "
            "twinhpc.train.rollout (docs/surrogates.md)"
        )
    prep = _prepared(job, world, prepared)
    path, _ = world.run(lambda: find_checkpoint(run, checkpoint))
    manifest = Manifest.load(dataset)
    split = split or _default_split(manifest, job, dataset)
    names = {f.name for f in manifest.fields}
    missing = [f for f in prep.raw_fields if f not in names and f != prep.label]
    if missing:
        raise TwinError(f"{dataset}: no field(s) {', '.join(missing)}, which the job's model reads")
    fields = [f for f in prep.raw_fields if f in names]
    # the input's categorical codes, class ids and CSV columns, mapped by name to the training data's
    encode = world.run(lambda: prep.encoder(manifest, str(dataset)), name="encoder")
    model = world.run(lambda: load_model(job, prep, path), name="load model")
    loader = split_loader(dataset, split, job, world, fields)
    with loader:
        rows = merge(
            world, infer(model, loader, lambda batch: prep.transform(encode(batch)), bf16=job.train.bf16), root=0
        )

    def write() -> None:  # rank 0; a failure raises on every rank
        if rows is not None:
            write_predictions(
                Path(out),
                rows,
                task=job.train.task,
                classes=prep.classes,
                dataset=str(dataset),
                split=split,
                checkpoint=str(path),
                config=job.to_json(),
            )

    world.run(write, name="predictions: write")
    if rows is None:
        return None
    log.info("predicted %d samples of %s split %r into %s", len(rows["index"]), dataset, split, out)
    return Path(out)


def _default_split(manifest: Manifest, job: Job, dataset) -> str:
    splits = list(manifest.to_dict()["splits"])
    if job.data.test_split in splits:
        return job.data.test_split
    if len(splits) == 1:
        return splits[0]
    raise TwinError(
        f"{dataset}: has splits {', '.join(splits)} but no {job.data.test_split!r}; choose one with --split"
    )
