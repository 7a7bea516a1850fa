"""LSTM and GRU text classifiers over padded token-id sequences.

A batch is ``(batch, length)`` int64 token ids, right-padded with :data:`PAD` (as
:func:`twinhpc.kernels.text.encode` writes them). The sequences are packed by their lengths, so
the recurrent layers never read a pad, and the outputs are pooled (mean or max) over the valid
positions only: appending pads leaves the logits unchanged. An empty document (all pads) is read
as a single pad token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import TwinError

#: the padding token id of every sequence model (``twinhpc.kernels.text.PAD``, BERT's ``[PAD]``)
PAD = 0

POOLINGS = ("mean", "max")


def valid_positions(ids: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` bool: True at the non-pad positions, and at position 0 of an empty row."""
    valid = ids != PAD
    valid[:, 0] = True
    return valid


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(batch, length, width)`` over the positions where ``valid`` is True."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1)


class RNNClassifier(nn.Module):
    """Embedding → LSTM or GRU (packed) → mean or max over valid positions → dropout → linear."""

    def __init__(
        self,
        cell: type[nn.LSTM] | type[nn.GRU],
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        pooling: str,
        dropout: float,
        classes: int,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = cell(
            embed_dim,
            hidden,
            num_layers=layers,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = valid_positions(ids)
        lengths = valid.sum(1).cpu()  # pack_padded_sequence wants the lengths on the CPU
        x = self.dropout(self.embed(ids))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        if self.pooling == "mean":
            pooled = masked_mean(out, valid)
        else:
            pooled = out.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
        return self.head(self.dropout(pooled))


def _build(
    name: str,
    cell: type[nn.LSTM] | type[nn.GRU],
    vocab_size: int,
    embed_dim: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    pooling: str,
    dropout: float,
    classes: int,
) -> RNNClassifier:
    if pooling not in POOLINGS:
        raise TwinError(f"model {name!r}: unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return RNNClassifier(cell, vocab_size, embed_dim, hidden, layers, bidirectional, pooling, dropout, classes)


_PARAMETERS = """
    Parameters
    ----------
    vocab_size : number of token ids, pad (0) included.
    embed_dim : width of the token embeddings.
    hidden : units of the recurrent layers, per direction.
    layers : stacked recurrent layers (1 or 2 is typical).
    bidirectional : read the sequences both ways and concatenate the two outputs.
    pooling : ``"max"`` or ``"mean"`` over the valid (non-pad) positions.
    dropout : dropout probability on the embeddings, between recurrent layers and before the
        classifier.
    classes : outputs (logits).

    Returns
    -------
    RNNClassifier
        Maps ``(batch, length)`` int64 token ids, right-padded with 0, to ``(batch, classes)``
        float32 logits.
"""


def lstm(
    vocab_size: int = 20000,
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = True,
    pooling: str = "max",
    dropout: float = 0.2,
    classes: int = 2,
) -> RNNClassifier:
    return _build("lstm", nn.LSTM, vocab_size, embed_dim, hidden, layers, bidirectional, pooling, dropout, classes)


def gru(
    vocab_size: int = 20000,
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = True,
    pooling: str = "max",
    dropout: float = 0.2,
    classes: int = 2,
) -> RNNClassifier:
    return _build("gru", nn.GRU, vocab_size, embed_dim, hidden, layers, bidirectional, pooling, dropout, classes)


lstm.__doc__ = "An LSTM text classifier.\n" + _PARAMETERS
gru.__doc__ = "A GRU text classifier.\n" + _PARAMETERS
