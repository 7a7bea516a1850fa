"""The model zoo: a name → builder registry that also knows the kind of input each model reads.

A builder is a function whose keyword arguments are the model's *structure* (layer sizes,
channels, classes ...), each with a default, returning an ``nn.Module``. A job file's ``[model]``
table names the builder and sets some of those arguments::

    from twinhpc.models import build, input_kind, names

    model = build("cnn", classes=10, input_size=32)
    names()                                   # ['cnn', ...]
    input_kind("lstm")                        # 'tokens'
    input_kind("fno2d")                       # 'field'

Each model is registered with :func:`register`: its name, its input kind (a key of
:data:`INPUT_KINDS`) and its builder, a function or the ``"module:function"`` that defines it.
The zoo's models are registered at the bottom of this file by module path, so names and input
kinds are known without importing torch or any model (``twinhpc preprocess`` checks a job's
text representation against its model that way); :func:`builder` imports a model's module the
first time it is asked for it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import TwinError

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]

#: input kind → what such a model reads
INPUT_KINDS = {
    "image": "float32 images (batch, channels, height, width)",
    "tokens": "int64 token ids (batch, length), right-padded with PAD = 0",
    "vector": "float32 feature vectors (batch, features): TF-IDF rows or tabular columns",
    "field": "float32 fields on a grid (batch, channels, *grid) → (batch, out_channels, *grid)",
}

_BUILDERS: dict[str, Builder | str] = {}  # a function, or "module:function" not imported yet
_INPUTS: dict[str, str] = {}


def register(name: str, inputs: str, builder: Builder | str | None = None) -> Any:
    """Make a builder available as ``build(name, ...)`` for a model that reads ``inputs``.

    Parameters
    ----------
    name : the model name; a name is registered once.
    inputs : the model's input kind, a key of :data:`INPUT_KINDS`.
    builder : the builder, or ``"module:function"`` naming it (a module starting with ``.`` is
        inside this package), imported by the first :func:`builder` call. Omitted: ``register``
        returns a decorator that registers the function it decorates::

            @register("tiny", inputs="vector")
            def tiny(in_features: int = 8, classes: int = 2) -> nn.Module: ...

    Raises
    ------
    ValueError
        For a name registered before (naming the module that registered it) or an unknown
        input kind.
    """
    if builder is None:

        def decorate(make: Builder) -> Builder:
            register(name, inputs, make)
            return make

        return decorate
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered (by {_module(_BUILDERS[name])})")
    if inputs not in INPUT_KINDS:
        raise ValueError(f"model {name!r}: input kind must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}")
    _BUILDERS[name] = builder
    _INPUTS[name] = inputs
    return builder


def _module(builder: Builder | str) -> str:
    if isinstance(builder, str):
        module = builder.partition(":")[0]
        return __name__ + module if module.startswith(".") else module
    return builder.__module__


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def _known(name: str) -> None:
    if name not in _BUILDERS:
        raise TwinError(f"unknown model {name!r}; known models: {', '.join(names())}")


def input_kind(name: str) -> str:
    """The input kind of the model ``name`` (a key of :data:`INPUT_KINDS`); imports no model.

    Raises :class:`TwinError` naming the known models for an unknown name.
    """
    _known(name)
    return _INPUTS[name]


def builder(name: str) -> Builder:
    """The builder registered as ``name`` (its signature is the model's structure schema).

    Raises :class:`TwinError` naming the known models for an unknown name.
    """
    _known(name)
    make = _BUILDERS[name]
    if isinstance(make, str):
        module, _, function = make.partition(":")
        make = _BUILDERS[name] = getattr(importlib.import_module(module, __name__), function)
    return make


def signature(name: str) -> inspect.Signature:
    """The signature of the builder registered as ``name`` (the model's structure schema).

    A builder registered by ``"module:function"`` that is not imported yet is read from its
    module's source (parameter names and literal defaults) without importing the module, so
    without importing torch; where a default is not a literal, the module is imported.

    Raises :class:`TwinError` naming the known models for an unknown name.
    """
    _known(name)
    make = _BUILDERS[name]
    if isinstance(make, str):
        parsed = _source_signature(make)
        if parsed is not None:
            return parsed
    return inspect.signature(builder(name))


def _source_signature(path: str) -> inspect.Signature | None:
    """The signature of ``"module:function"`` parsed from the module's source, or ``None`` when
    the source cannot be read or a default is not a literal."""
    module, _, function = path.partition(":")
    try:
        spec = importlib.util.find_spec(importlib.util.resolve_name(module, __name__))
        if spec is None or spec.origin is None:
            return None
        with open(spec.origin, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if fn is None:
        return None
    a = fn.args
    kind = inspect.Parameter
    positional = [(arg, kind.POSITIONAL_ONLY) for arg in a.posonlyargs]
    positional += [(arg, kind.POSITIONAL_OR_KEYWORD) for arg in a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    listed = list(zip(positional, defaults))
    if a.vararg is not None:
        listed.append(((a.vararg, kind.VAR_POSITIONAL), None))
    listed += list(zip([(arg, kind.KEYWORD_ONLY) for arg in a.kwonlyargs], a.kw_defaults))
    if a.kwarg is not None:
        listed.append(((a.kwarg, kind.VAR_KEYWORD), None))
    try:
        params = [
            inspect.Parameter(arg.arg, k, default=kind.empty if default is None else ast.literal_eval(default))
            for (arg, k), default in listed
        ]
    except ValueError:
        return None
    return inspect.Signature(params)


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
        raise TwinError(
            f"model {name!r}: unknown structure key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(known)}"
        )
    return make(**structure)


# -- the zoo ------------------------------------------------------------------------------------
register("cnn", "image", ".cnn:seed_cnn")
register("resnet18", "image", ".resnet:resnet18")
register("mlp", "vector", ".mlp:mlp")
register("lstm", "tokens", ".rnn:lstm")
register("gru", "tokens", ".rnn:gru")
register("transformer", "tokens", ".transformer:transformer")
register("gpt", "tokens", ".gpt:gpt")
register("gpt_lm", "tokens", ".gpt:gpt_lm")
register("minilm", "tokens", ".minilm:minilm")
register("fno1d", "field", ".fno:fno1d")
register("fno2d", "field", ".fno:fno2d")
register("unet2d", "field", ".unet:unet2d")
