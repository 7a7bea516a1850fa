"""A small GPT-like decoder (after nanoGPT): causal self-attention, tied input/output embeddings.

:class:`GPT` is the decoder with its language-model head: ``GPT(ids)`` gives next-token logits
at every position. Two builders use it:

- ``gpt_lm``: the :class:`GPT` itself, for next-token prediction (targets are the ids shifted by
  one; ignore the pad targets, e.g. ``cross_entropy(..., ignore_index=0)``);
- ``gpt``: a :class:`GPTClassifier`, which classifies a sequence from the hidden state of its
  last non-pad token. Its decoder keeps the language-model head (``model.gpt(ids)``), so one
  model can be pre-trained as a language model and then fine-tuned as a classifier.

Sequences are right-padded with pad id 0. Attention is causal, so a position never sees the pads
after it: appending pads changes neither the classification nor the earlier positions' logits.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TwinError
from .rnn import PAD


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` attends to positions ``<= t`` only."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """A pre-norm decoder block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(width, 4 * width),
                gelu=nn.GELU(),
                proj=nn.Linear(4 * width, width),
                dropout=nn.Dropout(dropout),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token + position embeddings → blocks → final LayerNorm → tied language-model head."""

    def __init__(self, vocab_size: int, block_size: int, width: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(block_size, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.tokens.weight  # tied: one matrix embeds and un-embeds tokens
        self.apply(self._init_weights)
        # GPT-2: the projections into the residual stream (attn.proj, mlp.proj) scaled by depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """``(batch, length, width)`` final hidden states of ``(batch, length)`` token ids."""
        if ids.shape[1] > self.block_size:
            raise TwinError(
                f"model 'gpt': sequences of {ids.shape[1]} tokens exceed block_size = "
                f"{self.block_size}; raise model.structure.block_size or shorten "
                f"preprocess.text.max_len"
            )
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(batch, length, vocab_size)`` logits of the token after each position."""
        return self.lm_head(self.hidden(ids))


class GPTClassifier(nn.Module):
    """A :class:`GPT` whose last non-pad hidden state is classified by a linear head."""

    def __init__(self, gpt: GPT, classes: int, dropout: float) -> None:
        super().__init__()
        self.gpt = gpt
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.tokens.embedding_dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.gpt.hidden(ids)
        last = ((ids != PAD).sum(1) - 1).clamp(min=0)  # an empty row: its first (pad) position
        return self.head(self.dropout(h[torch.arange(len(ids), device=ids.device), last]))


def _check(name: str, width: int, heads: int) -> None:
    if width % heads:
        raise TwinError(f"model {name!r}: width {width} is not a multiple of heads {heads}")


def gpt(
    vocab_size: int = 20000,
    block_size: int = 256,
    width: int = 256,
    layers: int = 4,
    heads: int = 4,
    dropout: float = 0.1,
    classes: int = 2,
) -> GPTClassifier:
    """A GPT-like decoder that classifies a sequence from its last non-pad token.

    Parameters
    ----------
    vocab_size : number of token ids, pad (0) included.
    block_size : the longest sequence (the number of learned positions).
    width : model width (embedding size); a multiple of ``heads``.
    layers : decoder blocks.
    heads : attention heads per block.
    dropout : dropout probability on the embeddings, the attention weights, the residual branches
        and before the classifier.
    classes : outputs (logits).

    Returns
    -------
    GPTClassifier
        ``forward(ids)`` maps ``(batch, length)`` int64 token ids, right-padded with 0 and
        ``length <= block_size``, to ``(batch, classes)`` float32 logits;
        ``model.gpt(ids)`` gives the ``(batch, length, vocab_size)`` next-token logits.
    """
    _check("gpt", width, heads)
    return GPTClassifier(GPT(vocab_size, block_size, width, layers, heads, dropout), classes, dropout)


def gpt_lm(
    vocab_size: int = 20000,
    block_size: int = 256,
    width: int = 256,
    layers: int = 4,
    heads: int = 4,
    dropout: float = 0.1,
) -> GPT:
    """A GPT-like decoder for next-token prediction.

    Parameters
    ----------
    vocab_size, block_size, width, layers, heads, dropout : as for ``gpt``.

    Returns
    -------
    GPT
        Maps ``(batch, length)`` int64 token ids, ``length <= block_size``, to
        ``(batch, length, vocab_size)`` float32 logits; position ``t`` predicts token ``t + 1``
        and depends on tokens ``0 … t`` only.
    """
    _check("gpt_lm", width, heads)
    return GPT(vocab_size, block_size, width, layers, heads, dropout)
