"""The machinery of the job-file tables: documented fields, type checking, loading a table.

Every key of a table is a dataclass field declared with :func:`key`, whose metadata carries
the documentation (``doc``) and the constraints (``choices``, bounds, a ``check`` function) that
:mod:`twinhpc.config.reference` turns into ``docs/job-file.md``. The field's type annotation is
its TOML type.

A table is a frozen dataclass deriving from :class:`Table`. Constructing one validates it
(``__post_init__``), whether it comes from a file or from Python (``TrainConfig(epochs=3)``,
``dataclasses.replace(job.optim, lr=0.1)``): a value of the wrong type is converted where TOML
allows no better (an integer where a number is wanted, an array where a tuple is), and a wrong
type, value or combination raises :class:`JobFileError` naming the dotted key (``optim.lr``).
:meth:`Table.from_dict` reads a parsed TOML table, refusing unknown and missing keys;
:func:`twinhpc.config.load.load_job` adds the file name to the error.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ..errors import TwinError


class JobFileError(TwinError):
    """A key of a job file (or of a ``--set`` override) is unknown, missing or invalid.

    Attributes
    ----------
    key : the dotted key, e.g. ``"optim.lr"``.
    problem : what is wrong, with what was expected.
    where : the job file (or ``--set optim.lr=...``) the value came from; ``None`` if unknown.
    """

    def __init__(self, key: str, problem: str, where: str | None = None):
        self.key, self.problem, self.where = key, problem, where
        super().__init__(f"{where}: {key}: {problem}" if where else f"{key}: {problem}")

    def at(self, where: str) -> JobFileError:
        """The same error, said to come from ``where``."""
        return JobFileError(self.key, self.problem, where)


def key(
    default: Any = MISSING,
    doc: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_doc: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A documented, constrained dataclass field.

    Parameters
    ----------
    default : the value when the key is absent; leave it out for a required key. A ``dict``
        default becomes a ``default_factory``.
    doc : one or two sentences: what the key means, its unit.
    choices : the allowed values (strings).
    ge, gt, le, lt : bounds of a number, or of each number of an array.
    check : ``check(value) -> problem or None`` for rules the above cannot say.
    default_doc : how the reference shows the default when ``None`` means "derived".
    factory : computes the default when the key is absent (instead of ``default``; e.g. from an
        environment variable); give ``default_doc`` with it.
    """
    meta = {
        "doc": doc,
        "choices": choices,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "check": check,
        "default_doc": default_doc,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- types ------------------------------------------------------------------------------------
# A field type ``tp`` is a type annotation (``int``, ``str | None``, ``tuple[float, float]``, a
# Table class), so it is typed ``Any``.
def _arms(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``int | str``), or ``(tp,)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return (tp,)


def _type_names(tp: Any) -> list[str]:
    names = []
    for arm in _arms(tp):
        if arm is type(None):
            continue
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if dataclasses.is_dataclass(arm) or arm is dict or origin is dict:
            names.append("table")
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            names.append(f"array of {' or '.join(_type_names(args[0]))}s")
        elif origin is tuple:
            names.append(f"array of {len(args)} {' or '.join(_type_names(args[0]))}s")
        else:
            names.append({str: "string", int: "integer", float: "number", bool: "boolean"}[arm])
    return names


def describe_type(tp: Any, article: bool = False) -> str:
    """The TOML name of a field type: ``"integer or string"``, ``"array of 2 numbers"`` ...

    With ``article``: ``"an integer or a string"``.
    """
    names = _type_names(tp)
    if article:
        names = [("an " if n[0] in "aeiou" else "a ") + n for n in names]
    return " or ".join(names)


def toml_type_name(value: Any) -> str:
    """The TOML name of a value's type (``"integer"``, ``"array"``, ``"table"`` ...), for errors."""
    return {
        str: "string",
        int: "integer",
        float: "float",
        bool: "boolean",
        list: "array",
        tuple: "array",
        dict: "table",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


class TypeMismatch(Exception):
    """``value`` does not have type ``tp`` (raised by :func:`coerce`; the caller words the error)."""


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (an int where a float is wanted becomes a float, an array a tuple,
    a table for a dataclass field that dataclass); raises :class:`TypeMismatch`."""
    for arm in _arms(tp):
        try:
            return _coerce_one(value, arm)
        except TypeMismatch:
            continue
    raise TypeMismatch


def _coerce_one(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        ok = value is None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return typing.cast("type[Table]", tp).from_dict(value)
        ok = isinstance(value, typing.cast(type, tp))
    elif tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise TypeMismatch
        return dict(value)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise TypeMismatch
        return tuple(coerce(v, a) for v, a in zip(value, args))
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise TypeMismatch
    return value


# -- constraints ------------------------------------------------------------------------------
def _bounds_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    """The first bound or choice that ``value`` (or an element of it) breaks, worded for a user."""
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if isinstance(v, str) and meta["choices"] is not None and v not in meta["choices"]:
            return f"must be one of {', '.join(map(repr, meta['choices']))}, got {v!r}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for name, op, sym in (
                ("ge", float.__ge__, "≥"),
                ("gt", float.__gt__, ">"),
                ("le", float.__le__, "≤"),
                ("lt", float.__lt__, "<"),
            ):
                bound = meta[name]
                if bound is not None and not op(float(v), float(bound)):
                    return f"must be {sym} {bound:g}, got {v!r}"
    problem: str | None = meta["check"](value) if meta["check"] is not None and value is not None else None
    return problem


def constraint_text(meta: Mapping[str, Any]) -> str:
    """The constraints of a field in words, for the reference (``"one of 'a', 'b'"``, ``"> 0"``)."""
    parts = []
    if meta["choices"] is not None:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    for name, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if meta[name] is not None:
            parts.append(f"{sym} {meta[name]:g}")
    return " and ".join(parts)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'lr'?)"`` naming the closest of ``known`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- tables -----------------------------------------------------------------------------------
class Table:
    """Base of the table dataclasses: validation on construction, ``from_dict`` and ``to_dict``.

    Subclasses set ``TABLE`` (the dotted table name) and may override :meth:`check` for rules
    that involve several keys.
    """

    TABLE: ClassVar[str] = ""
    if TYPE_CHECKING:  # every subclass is a dataclass
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            name = f"{self.TABLE}.{f.name}"
            value = getattr(self, f.name)
            try:
                coerced = coerce(value, hints[f.name])
            except TypeMismatch:
                hint = f' (write it as a string: "{value}")' if isinstance(value, (_dt.date, _dt.time)) else ""
                raise JobFileError(
                    name,
                    f"must be {describe_type(hints[f.name], article=True)}, got "
                    f"{toml_type_name(value)} {value!r}{hint}",
                ) from None
            problem = _bounds_problem(coerced, f.metadata)
            if problem:
                raise JobFileError(name, problem)
            object.__setattr__(self, f.name, coerced)
        self.check()

    def check(self) -> None:
        """Rules across keys of this table; raises :class:`JobFileError`."""

    @classmethod
    def from_dict(cls, table: Any) -> Self:
        """The table from a parsed TOML/JSON table; unknown and missing keys are errors.

        Raises
        ------
        JobFileError
            Naming the dotted key: not a table, an unknown key (with a close match and the
            known keys), a missing required key, or a value that fails validation.
        """
        if not isinstance(table, Mapping):
            raise JobFileError(cls.TABLE, f"must be a table, got {toml_type_name(table)} {table!r}")
        known = {f.name: f for f in fields(cls)}
        for name in table:
            if name not in known:
                raise JobFileError(
                    f"{cls.TABLE}.{name}",
                    f"unknown key{did_you_mean(name, known)}; [{cls.TABLE}] has: {', '.join(known)}",
                )
        for name, f in known.items():
            if name not in table and f.default is MISSING and f.default_factory is MISSING:
                raise JobFileError(f"{cls.TABLE}.{name}", f"missing (required): {f.metadata['doc']}")
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (``None`` for an absent optional key), tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Table):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
