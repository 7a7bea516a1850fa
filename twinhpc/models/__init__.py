"""The model zoo: a name → builder registry.

A builder is a function whose keyword arguments are the model's *structure* (layer sizes,
channels, classes ...), each with a default, returning an ``nn.Module``. A job file's ``[model]``
table names the builder and sets some of those arguments::

    from twinhpc.models import build, names

    model = build("cnn", classes=10, input_size=32)
    names()                                   # ['cnn', ...]

New models register themselves with :func:`register` in a module imported at the bottom of this
file.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from ..errors import TwinError

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder`` available as ``build(name, ...)``; a name is registered once."""

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered (by {_BUILDERS[name].__module__})")
        _BUILDERS[name] = builder
        return builder

    return decorate


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def builder(name: str) -> Builder:
    """The builder registered as ``name`` (its signature is the model's structure schema).

    Raises :class:`TwinError` naming the known models for an unknown name.
    """
    if name not in _BUILDERS:
        raise TwinError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _BUILDERS[name]


def build(name: str, **structure: Any) -> nn.Module:
    """Build the model ``name`` with the given structure arguments (the others take defaults).

    Raises
    ------
    TwinError
        For an unknown model name or a structure key the builder does not take (the message
        names it and lists the valid ones).
    """
    make = builder(name)
    known = list(inspect.signature(make).parameters)
    unknown = [key for key in structure if key not in known]
    if unknown:
        raise TwinError(f"model {name!r}: unknown structure key(s) {', '.join(map(repr, unknown))}; "
                        f"valid keys: {', '.join(known)}")
    return make(**structure)


from . import cnn, gpt, minilm, mlp, resnet, rnn, transformer  # noqa: E402,F401  (registers their models)
