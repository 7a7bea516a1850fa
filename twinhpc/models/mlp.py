"""A multi-layer perceptron for TF-IDF vectors and tabular features.

``in_features → hidden[0] → … → hidden[-1] → classes``, each hidden layer followed by the
activation and dropout. The first layer also takes a sparse CSR batch (``torch.sparse_csr``, e.g.
a batch of TF-IDF rows), multiplied with ``torch.sparse.mm`` without densifying it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TwinError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Linear layers with an activation and dropout between them (not after the last)."""

    def __init__(
        self, in_features: int, hidden: tuple[int, ...], classes: int, dropout: float, activation: str
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden, classes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.linears[0]
        if x.layout == torch.sparse_csr:
            x = torch.sparse.mm(x, first.weight.t()) + first.bias
        else:
            x = first(x)
        for linear in self.linears[1:]:
            x = linear(self.dropout(self.activation(x)))
        return x


def mlp(
    in_features: int = 10000,
    hidden: tuple[int, ...] = (256,),
    classes: int = 2,
    dropout: float = 0.2,
    activation: str = "relu",
) -> MLP:
    """A multi-layer perceptron classifier (or regressor).

    Parameters
    ----------
    in_features : length of an input vector (the vocabulary size for TF-IDF, the number of
        columns for tabular data).
    hidden : widths of the hidden layers, in order; ``()`` gives a linear model.
    classes : outputs: class logits, or the number of regression targets.
    dropout : dropout probability after each hidden layer's activation.
    activation : ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"silu"``.

    Returns
    -------
    MLP
        Maps ``(batch, in_features)`` float32 inputs, dense or a sparse CSR tensor, to
        ``(batch, classes)`` float32 outputs.

    Raises
    ------
    TwinError
        For an unknown activation.
    """
    if activation not in ACTIVATIONS:
        raise TwinError(f"model 'mlp': unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    return MLP(in_features, tuple(hidden), classes, dropout, activation)
