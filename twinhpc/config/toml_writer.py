"""Writing TOML: the values and tables of a job file (:meth:`twinhpc.config.Job.to_toml`).

Python's ``tomllib`` only reads; these few functions write the subset a job file uses
(strings, numbers, booleans, arrays, tables) so that ``tomllib`` reads it back equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def toml_value(v: Any) -> str:
    """One TOML value: strings (JSON escapes are TOML escapes), numbers, booleans, arrays, inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML form for {type(v).__name__} {v!r}")


def toml_table(name: str, table: Mapping[str, Any], lines: list[str]) -> None:
    """Append ``[name]`` with its scalar keys, then its sub-tables as ``[name.sub]``."""
    lines.append(f"[{name}]")
    subtables = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            subtables.append((k, v))
        elif v is not None:
            lines.append(f"{_toml_key(k)} = {toml_value(v)}")
    lines.append("")
    for k, v in subtables:
        toml_table(f"{name}.{_toml_key(k)}", v, lines)
