"""The preprocessed dataset: written by ``twinhpc preprocess``, opened by every later step.

::

    from twinhpc.preprocess import open_prepared, preprocess

    preprocess(job)                      # collective: fit on the training split, write the dataset
    prep = open_prepared(job)            # TwinError naming the path when missing or stale
    loader = ShardedLoader(prep.dataset_dir, "train", batch, fields=prep.fields, ...)
    for batch in loader:
        x, y = prep.transform(batch, train=True, rng=batch_rng(seed, rank, epoch, step))

``job.preprocessed_dir`` holds a dataset of format v1 (``docs/dataset-format.md``: the same
splits and shard files as the source, each field transformed to its stored form, see
:mod:`.transform`) and ``state.h5``, the fitted state (HDF5, read and written by
:mod:`twinhpc.io.prepared_state`; ``h5dump state.h5`` shows it)::

    /            attrs: format = "twinhpc-preprocess-state", version = 1, kind, fingerprint,
                        settings (JSON: the transform's settings), config (JSON: the job keys
                        it was made with), source (the source dataset), label, twinhpc_version
    /mean /std   float64 per channel ([0, 1] units) or per numeric column   (image, tabular)
    /terms       UTF-8 strings: the vocabulary, column k = sequence id k + 2 (sequence, tfidf)
    /idf         float64 per term                                            (tfidf)

Note:
    The *fingerprint* is the SHA-256 of the job keys that shape the preprocessed data (the
    fields, the training split, the relevant ``[preprocess.*]`` table, the tokenizer) and of
    the source manifest's schema and shard checksums (not its creation time: re-ingesting the
    same data keeps it). ``preprocess`` with an unchanged fingerprint does nothing;
    ``open_prepared`` refuses a preprocessed dataset whose fingerprint differs from the job's,
    so a model is never trained on data prepared for another configuration.

Note:
    The output has one shard per source shard, with the same name and samples; ranks divide the
    shards among themselves (balanced by sample count) and each shard's content depends only on
    the source shard and the fitted state, which is itself the same for any number of ranks
    (:mod:`.fit`). So ``mpirun -n 1, 2, 3`` write byte-identical shard files.

Note:
    ``preprocess.text.tokenizer`` chooses the tokenizer (``job.text_tokenizer`` resolves
    ``auto``): ``minilm`` reads text with MiniLM's own WordPiece tokenizer (its vocabulary ships
    with the weights; nothing is fitted), ``words`` with twinhpc's word tokenizer and the
    fitted vocabulary; ``auto`` is ``minilm`` for ``model.name = "minilm"`` and ``words``
    otherwise (model ``minilm`` with ``words`` is refused when the job is read). Models that
    read token ids need ``preprocess.text.representation = "sequence"``, models that read
    vectors (``mlp``) ``"tfidf"``, as each declares in the model registry
    (:func:`twinhpc.models.input_kind`, which imports no model); a mismatch is an error naming
    the key before anything is fitted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, models
from ..comm.world import World, get_world
from ..config import Job, JobFileError
from ..data.format import FieldSpec, Manifest, SplitInfo
from ..data.shards import write_shard
from ..data.staging import install, staging
from ..errors import DatasetError, TwinError
from ..io.prepared_state import STATE, read_prepared_state, write_prepared_state
from ..kernels.heat_spectral import PlateConstants
from . import fit
from .transform import FIELD_ROLES, KINDS, Field, Image, MiniLM, Sequence, Tfidf

log = logging.getLogger("twinhpc")

#: a model's input kind (:func:`twinhpc.models.input_kind`) → the text representation it reads
TEXT_REPRESENTATION = {"tokens": "sequence", "vector": "tfidf"}


# -- what a job preprocesses ------------------------------------------------------------------
class Plan:
    """The input fields of a job, their kind, and the label, checked against the manifest.

    Attributes
    ----------
    kind : ``"image"``, ``"text"``, ``"tabular"`` or ``"field"`` (``train.task = "field"``).
    inputs : the source input fields.
    label : the label field, or ``None`` (a dataset without labels; always for a field task).
    categorical : ``(field, levels)`` of the tabular inputs holding categorical codes.
    roles : a field task's fields by role (``state``, ``forcing``, ``params``); else empty.
    prior : the plate of a hybrid twin (``train.prior = "plate"``); else None.
    """

    def __init__(self, job: Job, manifest: Manifest):
        self.roles: dict[str, FieldSpec] = {}
        self.prior: PlateConstants | None = None
        self.forcing_window = 1
        self.categorical, self.text_mode = [], None
        if job.train.task == "field":
            self._field_task(job, manifest)
            return
        label = job.data.label or manifest.label_field
        names = [f.name for f in manifest.fields]
        if label is not None and label not in names:
            raise JobFileError("data.label", f"names field {label!r}, but the dataset {job.data.dataset} has {names}")
        inputs = job.data.inputs or tuple(n for n in names if n != label)
        for n in inputs:
            if n not in names:
                raise JobFileError("data.inputs", f"names field {n!r}, but the dataset {job.data.dataset} has {names}")
        self.inputs = tuple(manifest.field(n) for n in inputs)
        self.label = manifest.field(label) if label is not None else None
        texts = [f for f in self.inputs if f.is_text]
        images = [f for f in self.inputs if f.dtype == "uint8" and len(f.shape) == 3]
        if (texts or images) and len(self.inputs) != 1:
            raise JobFileError(
                "data.inputs", f"a text or image field must be the only input, got {[f.name for f in self.inputs]}"
            )
        self.kind = "text" if texts else "image" if images else "tabular"
        if job.model.name in models.names():
            _check_model_input(job.model.name, self.kind, self.inputs, job.data.dataset)
        self.categorical = [
            (f.name, manifest.categorical[f.name[4:]])
            for f in self.inputs
            if f.name.startswith("cat_") and f.name[4:] in manifest.categorical
        ]
        cat = {n for n, _ in self.categorical}
        self.numeric = tuple(f for f in self.inputs if f.name not in cat)
        if (
            job.train.task == "classification"
            and self.label is not None
            and (self.label.is_text or np.dtype(self.label.dtype).kind not in "iu")
        ):
            raise JobFileError(
                "train.task",
                f"is 'classification', but the label field "
                f"{self.label.name!r} holds {self.label.dtype} values "
                f'(set train.task = "regression")',
            )
        self.text_mode = None
        if self.kind == "text":
            rep = job.preprocess.text.representation
            self.text_mode = "minilm" if job.text_tokenizer == "minilm" else rep
            reads = models.input_kind(job.model.name) if job.model.name in models.names() else None
            wants = TEXT_REPRESENTATION.get(reads, rep)
            if rep != wants:
                raise JobFileError(
                    "preprocess.text.representation", f"is {rep!r}, but model {job.model.name!r} reads {wants!r} input"
                )
            if not job.preprocess.text.lowercase:
                raise JobFileError(
                    "preprocess.text.lowercase", "false is not supported: the tokenizer always lower-cases"
                )

    def _field_task(self, job: Job, manifest: Manifest) -> None:
        """The fields of a field task (``data.state``, ``data.forcing``, ``data.params``), checked
        against the manifest: a float state of per-sample shape (T+1, *grid) with T ≥ 1 and a 1-D
        or 2-D grid, a float forcing of shape (T, *grid), float params of shape (P,) or ()."""
        names = {f.name: f for f in manifest.fields}
        data = job.data
        chosen = {
            "state": data.state or "field",
            "forcing": data.forcing if data.forcing is not None else ("forcing" if "forcing" in names else ""),
            "params": data.params if data.params is not None else ("params" if "params" in names else ""),
        }
        for role, name in chosen.items():
            if not name:
                continue
            if name not in names:
                raise JobFileError(
                    f"data.{role}", f"names field {name!r}, but the dataset {data.dataset} has {sorted(names)}"
                )
            spec = names[name]
            if spec.is_text or np.dtype(spec.dtype).kind not in "fiu":
                raise JobFileError(
                    f"data.{role}", f"field {name!r} holds {spec.dtype} values; a field task needs numbers"
                )
            self.roles[role] = spec
        state = self.roles["state"].shape
        if len(state) not in (2, 3) or state[0] < 2:
            raise JobFileError(
                "data.state",
                f"field {chosen['state']!r} has per-sample shape {state}; a field task needs (T+1, x) or (T+1, x, y) "
                f"with T ≥ 1 saved steps",
            )
        steps, grid = state[0] - 1, state[1:]
        if "forcing" in self.roles and self.roles["forcing"].shape != (steps, *grid):
            raise JobFileError(
                "data.forcing",
                f"field {chosen['forcing']!r} has per-sample shape {self.roles['forcing'].shape}, but the state "
                f"{chosen['state']!r} of shape {state} needs forcing of shape {(steps, *grid)} (one per step)",
            )
        if "params" in self.roles and len(self.roles["params"].shape) > 1:
            raise JobFileError(
                "data.params",
                f"field {chosen['params']!r} has per-sample shape {self.roles['params'].shape}; "
                f"parameters are (P,) or ()",
            )
        self.inputs = tuple(self.roles[r] for r in FIELD_ROLES if r in self.roles)
        self.label, self.kind, self.numeric = None, "field", ()
        self.prior = _plate_prior(job, manifest, self.roles) if job.train.prior == "plate" else None
        self.forcing_window = job.train.forcing_window
        if self.forcing_window != 1 and "forcing" not in self.roles:
            raise JobFileError(
                "train.forcing_window", f"is {self.forcing_window}, but the job has no forcing (data.forcing)"
            )
        if job.model.name in models.names():
            _check_model_input(job.model.name, self.kind, self.inputs, data.dataset)

    def settings(self, job: Job) -> dict[str, Any]:
        """The job keys that shape the preprocessed data (the fingerprint's configuration)."""
        if self.kind == "field":
            settings = {
                "train_split": job.data.train_split,
                "inputs": [f.name for f in self.inputs],
                "label": None,
                "kind": self.kind,
                "roles": {role: spec.name for role, spec in self.roles.items()},
            }
            if self.prior is not None:
                settings["prior"] = "plate"
            if self.forcing_window != 1:
                settings["forcing_window"] = self.forcing_window
            return settings
        table = {"image": job.preprocess.image, "text": job.preprocess.text, "tabular": job.preprocess.tabular}[
            self.kind
        ].to_dict()
        # the tokenizer counts as resolved (text_mode): "auto" and its choice make the same data
        table.pop("tokenizer", None)
        return {
            "train_split": job.data.train_split,
            "inputs": [f.name for f in self.inputs],
            "label": self.label.name if self.label else None,
            "kind": self.kind,
            "text_mode": self.text_mode,
            f"preprocess.{self.kind}": table,
        }


def _plate_prior(job: Job, manifest: Manifest, roles: dict[str, FieldSpec]) -> PlateConstants:
    """The plate of ``train.prior = "plate"``, from the dataset's ``provenance.simulate``, checked
    against the job's fields: a 2-D state on the plate's grid, a forcing and the params."""
    where = f"is 'plate', but the dataset {job.data.dataset}"
    simulate = (manifest.provenance or {}).get("simulate")
    if not simulate:
        raise JobFileError(
            "train.prior", f"{where} has no provenance.simulate (only a `twinhpc simulate` plate dataset has one)"
        )
    try:
        c = PlateConstants.from_provenance(simulate)
    except (KeyError, ValueError, TypeError) as e:
        raise JobFileError("train.prior", f"{where} has an incomplete provenance.simulate ({e})") from None
    missing = [f"data.{role}" for role in ("forcing", "params") if role not in roles]
    if missing:
        raise JobFileError(
            "train.prior", f"is 'plate', which needs {' and '.join(missing)} (the plate's step reads them)"
        )
    grid = roles["state"].shape[1:]
    if tuple(grid) != (c.H, c.W):
        raise JobFileError("train.prior", f"{where} simulated a {c.H}×{c.W} plate, but its state has grid {grid}")
    if roles["params"].shape != (len(simulate["params"]),):
        raise JobFileError(
            "train.prior",
            f"{where}: its params field has shape {roles['params'].shape}, the plate has "
            f"{len(simulate['params'])} parameters",
        )
    return c


#: a model's input kind → the inputs it can read, in words
MODEL_EXPECTS = {
    "image": "one uint8 image field of per-sample shape (height, width, channels)",
    "tokens": "one text field (read as token ids)",
    "vector": "numeric fields (flattened into one feature vector) or one text field (TF-IDF)",
    "field": 'a field trajectory with train.task = "field" (data.state of per-sample shape (T+1, *grid))',
}
#: a model's input kind → the kinds of :class:`Plan` it can read
MODEL_READS = {"image": ("image",), "tokens": ("text",), "vector": ("tabular", "text"), "field": ("field",)}


def _check_model_input(model: str, kind: str, inputs: tuple[FieldSpec, ...], dataset: str) -> None:
    """Raise :class:`JobFileError` (key ``model.name``) when the registered ``model`` cannot read
    the job's ``inputs`` (of :class:`Plan` kind ``kind``): one line naming each input field,
    its dtype and per-sample shape, and what the model reads."""
    reads = models.input_kind(model)
    if kind in MODEL_READS[reads]:
        return
    if kind == "field":
        raise JobFileError(
            "model.name",
            f'is {model!r}, which reads {MODEL_EXPECTS[reads]}; train.task = "field" needs a model '
            f"that reads fields: {', '.join(n for n in models.names() if models.input_kind(n) == 'field')}",
        )
    fields = ", ".join(f"{f.name!r} ({f.dtype}, per-sample shape {f.shape})" for f in inputs)
    hint = ""
    if reads == "image":
        if any(len(f.shape) == 3 and not f.is_text for f in inputs):
            hint = "; store images as uint8 values 0-255 (a float array is read as tabular features)"
        elif any(len(f.shape) == 2 and f.dtype == "uint8" for f in inputs):
            hint = "; a greyscale image needs a channel axis: shape (height, width, 1)"
    raise JobFileError(
        "model.name",
        f"is {model!r}, which reads {MODEL_EXPECTS[reads]}, but the input field(s) of dataset {dataset} are "
        f"{fields}{hint}",
    )


def fingerprint(settings: dict[str, Any], manifest: Manifest) -> str:
    """SHA-256 (hex) of the settings and of the source's schema, splits and shard checksums."""
    source = {k: v for k, v in manifest.to_dict().items() if k != "provenance"}
    text = json.dumps({"settings": settings, "source": source}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- state.h5 ---------------------------------------------------------------------------------
def write_state(path: Path, transform, attrs: dict[str, Any]) -> None:
    """Write ``state.h5``: the transform's arrays as datasets, its kind, settings and ``attrs`` as
    attributes (:func:`twinhpc.io.prepared_state.write_prepared_state`: atomic)."""
    arrays, settings = transform.state()
    write_prepared_state(path, transform.kind, arrays, settings, attrs)


def read_state(path: Path) -> tuple[Any, dict[str, Any]]:
    """The transform stored in ``state.h5`` and the file's attributes.

    Raises
    ------
    TwinError
        Naming the file: missing, not HDF5, another format or version, or damaged.
    """
    arrays, attrs = read_prepared_state(path)
    try:
        transform = KINDS[attrs["kind"]].from_state(arrays, json.loads(attrs["settings"]))
    except (KeyError, ValueError) as e:
        raise TwinError(f"{path}: unreadable preprocessing state ({type(e).__name__}: {e})") from None
    return transform, attrs


def _stored_fingerprint(out: Path) -> str | None:
    """The fingerprint recorded in ``out/state.h5`` (``None`` if absent or unreadable)."""
    if not (out / STATE).is_file() or not (out / "manifest.json").is_file():
        return None
    try:
        return read_state(out / STATE)[1].get("fingerprint")
    except TwinError:
        return None


# -- the contract -----------------------------------------------------------------------------
class Prepared:
    """An opened preprocessed dataset (see the module docstring).

    Attributes
    ----------
    dataset_dir : Path, the preprocessed dataset (for :class:`~twinhpc.data.loader.ShardedLoader`).
    task : ``"classification"`` or ``"regression"`` (``train.task``).
    classes : class names (tuple), ``()`` for regression.
    model_defaults : structure defaults inferred from the data (``in_channels``, ``input_size``,
        ``vocab_size``, ``max_len``, ``block_size``, ``in_features``, ``classes``); a builder
        takes those of its keys it accepts, the job's ``[model.structure]`` wins.
    fields : the stored fields to read: the inputs, then the label (when the data has one).
    raw_fields : the source fields :meth:`encode` needs (inputs, then the label).
    label : the label field name, or ``None``.
    kind : ``image``, ``sequence``, ``minilm``, ``tfidf``, ``tabular`` or ``field`` (the transform's).
    state : the attributes of ``state.h5`` (fingerprint, config, source ...).
    field : the fitted :class:`~twinhpc.preprocess.transform.Field` of a field task (its fields
        and normalisation), else ``None``.
    """

    def __init__(self, dataset_dir: Path, transform, task: str, manifest: Manifest, plan: Plan, state: dict):
        self.dataset_dir = Path(dataset_dir)
        self.task = task
        self._transform = transform
        self.kind = transform.kind
        self.field = transform if isinstance(transform, Field) else None
        self.label = plan.label.name if plan.label else None
        self.classes = tuple(manifest.classes) if task == "classification" else ()
        outputs = (
            len(self.classes)
            if task == "classification"
            else int(np.prod(plan.label.shape, dtype=np.int64))
            if plan.label
            else 1
        )
        self.model_defaults = {**transform.model_defaults(), "classes": outputs}
        label = (self.label,) if self.label else ()
        self.fields = tuple(f.name for f in transform.stored) + label
        self.raw_fields = tuple(f.name for f in plan.inputs) + label
        self.state = state
        self._x_columns = _x_columns(manifest)

    def encode(self, batch) -> dict[str, np.ndarray]:
        """A batch of the *source* dataset (``raw_fields``) in the stored form (``fields``).

        A TF-IDF document with more distinct vocabulary terms than any document of the source
        dataset widens the batch's arrays (new data) instead of failing. Batches of another
        dataset go through :meth:`encoder` first.
        """
        if isinstance(self._transform, Tfidf):
            out = self._transform.encode(batch, grow=True)
        else:
            out = self._transform.encode(batch)
        if self.label and self.label in batch:
            out[self.label] = batch[self.label]
        return out

    def encoder(self, manifest: Manifest, where: str = "the input dataset"):
        """:meth:`encode` for batches of another dataset (``twinhpc predict --input``), whose
        manifest is ``manifest``.

        Such a dataset was ingested on its own, so its categorical codes (``cat_<column>``)
        index *its* levels and its class ids *its* classes (a CSV reader sorts the values it
        finds). They are mapped by name to this data's levels and classes first: a level the
        training data never had gets code -1 (an all-zero one-hot block), an unknown class -1.
        The numeric columns of a CSV/Parquet dataset (field ``x``) are taken by name, in the
        training order; a missing or extra column is a :class:`TwinError` naming ``where``.
        """
        maps: dict[str, np.ndarray] = {}
        for name, levels in getattr(self._transform, "categorical", ()):
            theirs = manifest.categorical.get(name[len("cat_") :])
            if theirs is not None and tuple(theirs) != tuple(levels):
                position = {v: i for i, v in enumerate(levels)}
                maps[name] = np.array([position.get(v, -1) for v in theirs], np.int64)
        if (
            self.task == "classification"
            and self.label
            and manifest.classes
            and tuple(manifest.classes) != self.classes
        ):
            position = {c: i for i, c in enumerate(self.classes)}
            maps[self.label] = np.array([position.get(c, -1) for c in manifest.classes], np.int64)
        order = None
        theirs = _x_columns(manifest)
        if self._x_columns and theirs and theirs != self._x_columns and "x" in self.raw_fields:
            if sorted(theirs) != sorted(self._x_columns):
                raise TwinError(
                    f"{where}: numeric columns {theirs}, but the job's model was trained on {self._x_columns}"
                )
            order = np.array([theirs.index(c) for c in self._x_columns])  # CSV columns by name
        if not maps and order is None:
            return self.encode

        def encode(batch):
            batch = dict(batch)
            if order is not None and "x" in batch:
                batch["x"] = np.asarray(batch["x"])[:, order]
            for name, table in maps.items():
                if name in batch:
                    codes = np.asarray(batch[name])
                    inside = (codes >= 0) & (codes < len(table))
                    batch[name] = np.where(inside, table[np.where(inside, codes, 0)], -1).astype(codes.dtype)
            return self.encode(batch)

        return encode

    def transform(self, batch, train: bool = False, rng: np.random.Generator | None = None, device=None):
        """``(x, y)`` torch tensors of a batch of the preprocessed dataset.

        Parameters
        ----------
        batch : ``dict`` field → numpy array with ``fields`` (the loader's batch).
        train : apply the training augmentation (image crop/flip per ``[preprocess.image]``).
        rng : numpy Generator of the augmentation, needed when ``train`` augments.
        device : a CUDA ``torch.device``: images are normalised and augmented on it (the other
            kinds are made on the host; the caller moves them). ``None``: the host.

        Returns
        -------
        x : float32 (N, C, H, W) images; int64 (N, L) token ids; float32 sparse CSR (N, V)
            TF-IDF rows; float32 (N, features); or for a field task a dict of normalised float32
            tensors ``state`` (N, T+1, *grid), ``forcing`` (N, T, *grid), ``params`` (N, P).
        y : int64 (N,) class indices, float32 (N, ...) targets for regression, or ``None``
            when the batch has no label.
        """
        import torch

        on_gpu = device is not None and torch.device(device).type == "cuda" and self._transform.kind == "image"
        x = (
            self._transform(batch, train=train, rng=rng, device=device)
            if on_gpu
            else self._transform(batch, train=train, rng=rng)
        )
        y = None
        if self.label and self.label in batch:
            dtype = np.int64 if self.task == "classification" else np.float32
            y = torch.from_numpy(np.ascontiguousarray(batch[self.label], dtype))
        return x, y


def _x_columns(manifest: Manifest) -> list[str] | None:
    """The column names of the numeric field ``x`` of a CSV/Parquet dataset (else ``None``)."""
    columns = (manifest.provenance or {}).get("details", {}).get("x_columns")
    return list(columns) if columns else None


def open_prepared(job: Job) -> Prepared:
    """The preprocessed dataset of ``job`` (``job.preprocessed_dir``), checked against the job.

    Raises
    ------
    TwinError
        Naming the directory, with "run `twinhpc preprocess JOB` first", when it is missing,
        incomplete, or was made with another configuration or source dataset; or naming the
        source dataset when that cannot be read.
    """
    out = Path(job.preprocessed_dir)
    hint = "run `twinhpc preprocess JOB` first"
    if not (out / STATE).is_file() or not (out / "manifest.json").is_file():
        raise TwinError(f"{out}: no preprocessed dataset (missing {out / STATE}); {hint}")
    manifest = Manifest.load(job.data.dataset)
    plan = Plan(job, manifest)
    transform, state = read_state(out / STATE)
    if state.get("fingerprint") != fingerprint(plan.settings(job), manifest):
        raise TwinError(
            f"{out}: preprocessed with another configuration or source dataset than "
            f"this job (state.h5 fingerprint differs); {hint}"
        )
    return Prepared(out, transform, job.train.task, manifest, plan, state)


# -- writing ----------------------------------------------------------------------------------
def _fit(world: World, job: Job, manifest: Manifest, plan: Plan):
    directory = Path(job.data.dataset)
    train = manifest.split(job.data.train_split)
    if plan.kind == "field":
        return fit.fit_field(world, directory, train, plan.roles, plan.prior, plan.forcing_window)
    if plan.kind == "image":
        return fit.fit_image(world, directory, train, plan.inputs[0], job.preprocess.image)
    if plan.kind == "tabular":
        return fit.fit_tabular(world, directory, train, plan.numeric, plan.categorical, job.preprocess.tabular)
    spec, cfg = plan.inputs[0], job.preprocess.text
    if plan.text_mode == "minilm":
        return MiniLM(spec.name, cfg.max_len)
    vocab, idf, _ = fit.fit_vocabulary(world, directory, train, spec, cfg)
    if plan.text_mode == "sequence":
        return Sequence(spec.name, vocab.terms, cfg.max_len, fit.stop_word_list(cfg.stop_words))
    return Tfidf(spec.name, vocab.terms, idf)


def _all_shards(manifest: Manifest) -> list[tuple[SplitInfo, int]]:
    return [(split, i) for split in manifest.splits for i in range(len(split.shards))]


def _tfidf_width(world: World, directory: Path, manifest: Manifest, transform: Tfidf, mine) -> int:
    """The most distinct vocabulary terms of any document of the dataset (collective)."""
    spec = manifest.field(transform.field)

    def local():
        widths = [0]
        for split, i in mine:
            sh = split.shards[i]
            for lo in range(0, sh.count, fit.FIT_BLOCK):
                docs = fit.read_rows(directory, sh.file, (spec,), lo, min(lo + fit.FIT_BLOCK, sh.count))
                widths.append(transform.widest(docs[spec.name]))
        return max(widths)

    return max(world.allgather(world.run(local, DatasetError)))


def preprocess(
    job: Job,
    *,
    world: World | None = None,
    force: bool = False,
    command: str | None = None,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Fit on the training split and write ``job.preprocessed_dir`` (collective).

    Parameters
    ----------
    force : rewrite even when the recorded fingerprint matches.
    command : the command line recorded in the manifest's provenance.
    allow_nonfinite : replace the NaN and inf values of the numeric input fields (tabular data)
        by their column's mean over the finite training values, instead of refusing them.

    Returns
    -------
    dict
        ``status`` (``"written"`` or ``"up to date"``), ``path``, ``kind``, ``fingerprint``,
        ``samples`` (per split), ``seconds``, ``summary`` (one line on the fitted state) and
        ``imputed`` (``{field: {split: values replaced}}``, with ``allow_nonfinite``); the same
        on every rank.

    Raises
    ------
    TwinError
        On every rank when any rank fails (a bad key, an unreadable shard, a NaN or inf value
        in a numeric input field without ``allow_nonfinite``: naming the field, the split and
        the first sample holding one); nothing is then left under ``job.preprocessed_dir`` but
        what was there before.
    """
    world = world or get_world()
    world.stall_timeout = job.train.stall_timeout
    t0 = time.perf_counter()
    source = Path(job.data.dataset).absolute()
    out = Path(job.preprocessed_dir).absolute()
    manifest, plan = world.run(lambda: (lambda m: (m, Plan(job, m)))(Manifest.load(source)))
    world.run(lambda: manifest.split(job.data.train_split))
    fp = fingerprint(plan.settings(job), manifest)
    samples = {s.name: s.count for s in manifest.splits}
    result = {"path": str(out), "kind": plan.kind, "fingerprint": fp, "samples": samples}
    current = world.bcast(_stored_fingerprint(out) if world.is_root else None)
    if current == fp and not force:
        transform, _ = world.run(lambda: read_state(out / STATE))
        return {
            **result,
            "status": "up to date",
            "kind": transform.kind,
            "summary": _summary(transform),
            "seconds": time.perf_counter() - t0,
        }

    imputed = _check_nonfinite(world, source, manifest, plan, allow_nonfinite, job.data.train_split)
    transform = _fit(world, job, manifest, plan)
    shards = _all_shards(manifest)
    mine = [shards[i] for i in fit.share([s.shards[i].count for s, i in shards], world.rank, world.size)]
    if isinstance(transform, Tfidf):
        transform = Tfidf(
            transform.field,
            transform.vocab.terms,
            transform.idf,
            _tfidf_width(world, source, manifest, transform, mine),
        )
    fields = transform.stored + ((plan.label,) if plan.label else ())
    raw = plan.inputs + ((plan.label,) if plan.label else ())

    with staging(world, out, "preprocess.out", overwrite=True) as tmp:

        def write_mine():
            written = []
            for split, i in mine:
                sh = split.shards[i]

                def read(idx, sh=sh):
                    batch = fit.read_rows(source, sh.file, raw, int(idx[0]), int(idx[-1]) + 1)
                    stored = transform.encode(batch)
                    if plan.label:
                        stored[plan.label.name] = batch[plan.label.name]
                    return stored

                piece = fit.field_block_rows(fields) if plan.kind == "field" else 8192
                written.append(
                    (split.name, i, write_shard(tmp / sh.file, fields, np.arange(sh.count), read, piece=piece))
                )
            return written

        everything = [w for part in world.allgather(world.run(write_mine, DatasetError)) for w in part]

        def finish():
            if not world.is_root:
                return
            splits = tuple(
                SplitInfo(
                    s.name,
                    s.count,
                    tuple(
                        info for name, _, info in sorted((w for w in everything if w[0] == s.name), key=lambda w: w[1])
                    ),
                )
                for s in manifest.splits
            )
            Manifest(
                fields=fields,
                splits=splits,
                label_field=plan.label.name if plan.label else None,
                classes=manifest.classes,
                provenance={
                    "source": str(source),
                    "kind": "preprocess",
                    "command": command or " ".join(sys.argv),
                    "twinhpc_version": __version__,
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "ranks": world.size,
                    "state": STATE,
                    **({"nonfinite_imputed": imputed} if imputed else {}),
                },
            ).save(tmp)
            write_state(
                tmp / STATE,
                transform,
                {
                    "fingerprint": fp,
                    "config": json.dumps(plan.settings(job)),
                    "source": str(source),
                    "label": plan.label.name if plan.label else "",
                    "twinhpc_version": __version__,
                },
            )
            install(tmp, out, "preprocess.out", overwrite=True)

        world.run(finish, DatasetError)
    return {
        **result,
        "status": "written",
        "kind": transform.kind,
        "summary": _summary(transform),
        "seconds": time.perf_counter() - t0,
        "imputed": imputed,
    }


def _check_nonfinite(
    world: World, source: Path, manifest: Manifest, plan: Plan, allow: bool, train_split: str
) -> dict[str, dict[str, int]]:
    """Collective. The NaN and inf values of the numeric inputs that ``preprocess`` standardises
    (tabular data), in every split: a :class:`TwinError` on every rank naming the field, the split
    and the first sample, or with ``allow`` the count per field and split (logged)."""
    if plan.kind != "tabular" or not plan.numeric:
        return {}
    found = fit.scan_nonfinite(world, source, manifest.splits, plan.numeric)
    if not found:
        return {}
    if not allow:
        first, more = found[0], sum(f.count for f in found[1:])
        also = f" (and {more} more in {', '.join(sorted({f'{f.field}/{f.split}' for f in found[1:]}))})" if more else ""
        raise TwinError(
            f"{source}: field {first.field!r}, split {first.split!r}: {first.count} NaN or inf value(s), the first "
            f"in sample {first.first}{also}; preprocess standardises this field and cannot use them: fix the data, "
            f"or run `twinhpc preprocess --allow-nonfinite` to replace each by its column's mean over the finite "
            f"values of split {train_split!r}"
        )
    imputed: dict[str, dict[str, int]] = {}
    for f in found:
        imputed.setdefault(f.field, {})[f.split] = f.count
    if world.is_root:
        log.warning(
            "%s: %d NaN or inf value(s) replaced by their column's training mean (--allow-nonfinite): %s",
            source,
            sum(f.count for f in found),
            ", ".join(f"{f.field}/{f.split} {f.count}" for f in found),
        )
    return imputed


def _summary(transform) -> str:
    """One line on the fitted state, for the command's output."""
    if isinstance(transform, Image):
        if not transform.normalize:
            return f"images {transform.shape}: no normalisation"
        fmt = lambda a: "[" + ", ".join(f"{v:.4f}" for v in a) + "]"  # noqa: E731
        return f"images {transform.shape}: mean {fmt(transform.mean)}, std {fmt(transform.std)}"
    if isinstance(transform, Tfidf):
        return f"tf-idf: vocabulary {len(transform.vocab)} terms, up to {transform.width} per document"
    if isinstance(transform, Sequence):
        return f"token ids: vocabulary {len(transform.vocab)} terms + PAD, UNK; max_len {transform.max_len}"
    if isinstance(transform, MiniLM):
        return f"token ids of MiniLM's tokenizer; max_len {transform.max_len}"
    if isinstance(transform, Field):
        st = transform.stats
        return (
            f"fields: state {transform.fields['state'][0]!r} ({transform.steps} steps on a grid {transform.grid}) "
            f"mean {float(st['state_mean']):.4g} std {float(st['state_std']):.4g}, step std {float(st['step_std']):.4g}"
            + "".join(f", {role} {name!r}" for role, (name, _) in transform.fields.items() if role != "state")
            + (f"; {int(np.sum(st['held']))} held nodes (no step changes them)" if "held" in st else "")
        )
    return (
        f"tabular: {transform.width} features ({len(transform.mean)} numeric"
        f"{', standardised' if transform.standardize else ''}, "
        f"{transform.width - len(transform.mean)} one-hot)"
    )
