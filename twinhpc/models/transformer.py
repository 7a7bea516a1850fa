"""A BERT-like Transformer encoder classifier over padded token-id sequences.

Token embeddings plus learned position embeddings go through ``nn.TransformerEncoder`` with a
key padding mask (pad id 0), so no position attends to a pad. The sequence is summarised either
by a learned ``[CLS]`` vector prepended to every sequence (``pooling="cls"``; it needs no id in
the vocabulary) or by the mean over the valid positions (``pooling="mean"``), then classified.
Appending pads leaves the logits unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TwinError
from .rnn import PAD, masked_mean, valid_positions

POOLINGS = ("cls", "mean")


class EncoderClassifier(nn.Module):
    """Embeddings → Transformer encoder (padding-masked) → ``[CLS]`` or masked mean → linear."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        width: int,
        layers: int,
        heads: int,
        ffn: int,
        dropout: float,
        pooling: str,
        norm_first: bool,
        classes: int,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.positions = nn.Embedding(max_len + (pooling == "cls"), width)
        if pooling == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            width, heads, ffn, dropout, activation="gelu", batch_first=True, norm_first=norm_first
        )
        # pre-norm layers leave the residual stream unnormalised: normalise it once at the end
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(width) if norm_first else None, enable_nested_tensor=False
        )
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise TwinError(
                f"model 'transformer': sequences of {ids.shape[1]} tokens exceed "
                f"max_len = {self.max_len}; raise model.structure.max_len or shorten "
                f"preprocess.text.max_len"
            )
        valid = valid_positions(ids)
        x = self.tokens(ids)
        if self.pooling == "cls":
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
            valid = torch.cat([valid.new_ones(len(x), 1), valid], dim=1)
        x = x + self.positions(torch.arange(x.shape[1], device=ids.device))
        x = self.encoder(self.dropout(x), src_key_padding_mask=~valid)
        pooled = x[:, 0] if self.pooling == "cls" else masked_mean(x, valid)
        return self.head(self.dropout(pooled))


def transformer(
    vocab_size: int = 20000,
    max_len: int = 256,
    width: int = 256,
    layers: int = 4,
    heads: int = 4,
    ffn: int = 1024,
    dropout: float = 0.1,
    pooling: str = "cls",
    norm_first: bool = True,
    classes: int = 2,
) -> EncoderClassifier:
    """A BERT-like Transformer encoder text classifier.

    Parameters
    ----------
    vocab_size : number of token ids, pad (0) included.
    max_len : the longest sequence (the number of learned positions).
    width : model width (embedding size); a multiple of ``heads``.
    layers : encoder layers.
    heads : attention heads per layer.
    ffn : width of each layer's feed-forward block (4 × ``width`` is usual).
    dropout : dropout probability on the embeddings, inside every layer (attention weights and
        residual branches) and before the classifier.
    pooling : ``"cls"`` (a learned vector prepended to each sequence) or ``"mean"`` (over the
        valid positions).
    norm_first : pre-norm layers (LayerNorm before attention and feed-forward, stabler to train)
        rather than BERT's post-norm.
    classes : outputs (logits).

    Returns
    -------
    EncoderClassifier
        Maps ``(batch, length)`` int64 token ids, right-padded with 0 and ``length <= max_len``,
        to ``(batch, classes)`` float32 logits.

    Raises
    ------
    TwinError
        For an unknown pooling or a width that ``heads`` does not divide.
    """
    if pooling not in POOLINGS:
        raise TwinError(f"model 'transformer': unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if width % heads:
        raise TwinError(f"model 'transformer': width {width} is not a multiple of heads {heads}")
    return EncoderClassifier(vocab_size, max_len, width, layers, heads, ffn, dropout, pooling, norm_first, classes)
