"""A what-if scenario: the parameters of one plate run, by the simulator's names.

The start is the middle of each trained range (:func:`middle`) or a held-out scenario of the
dataset (``--scenario-index``); ``--set scenario.KEY=VALUE`` overrides a parameter by the name
the simulator gives it (``k``, ``h``, ``t_inf``, ``t_edge``, ``t0``, ``source<i>.<x|y|power|on|
duration|ramp|freq|depth>``; docs/twin.md). A value outside the trained range is allowed, with a
warning saying by how much (:func:`out_of_range`): the twin extrapolates there.
"""

from __future__ import annotations

import numpy as np

from ..errors import TwinError

PREFIX = "scenario."


def middle(table: list[dict]) -> np.ndarray:
    """The middle of each parameter's trained range."""
    return np.array([(p["low"] + p["high"]) / 2 for p in table], np.float64)


def apply_overrides(values: np.ndarray, table: list[dict], overrides: list[str]) -> np.ndarray:
    """``values`` with each ``scenario.KEY=VALUE`` of ``overrides`` applied.

    Raises
    ------
    TwinError
        Naming the override: not ``scenario.KEY=VALUE``, an unknown KEY (listing the valid
        ones), or a VALUE that is not a finite number.
    """
    out = np.array(values, np.float64)
    names = [p["name"] for p in table]
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key.startswith(PREFIX):
            raise TwinError(f"--set {item!r}: expected scenario.KEY=VALUE, e.g. --set scenario.{names[0]}=30")
        name = key[len(PREFIX) :]
        if name not in names:
            raise TwinError(
                f"--set {item!r}: unknown scenario key {name!r}; the scenario's keys are {', '.join(names)}"
            )
        try:
            value = float(text)
        except ValueError:
            raise TwinError(f"--set {item!r}: {key} must be a number, got {text.strip()!r}") from None
        if not np.isfinite(value):
            raise TwinError(f"--set {item!r}: {key} must be finite")
        out[names.index(name)] = value
    return out


def out_of_range(values: np.ndarray, table: list[dict]) -> list[str]:
    """One warning per parameter outside its trained ``[low, high]``, saying by how much (in its
    unit and as a fraction of the range's width)."""
    warnings = []
    for v, p in zip(values, table, strict=True):
        low, high = p["low"], p["high"]
        unit = p.get("unit", "").split(" (")[0]
        unit = "" if unit == "1" else f" {unit}"
        if low <= v <= high:
            continue
        side, by = ("below", low - v) if v < low else ("above", v - high)
        width = high - low
        share = f", {by / width:.0%} of the range's width" if width > 0 else ""
        warnings.append(
            f"scenario.{p['name']} = {v:g} lies {by:.4g}{unit} {side} the trained range [{low:g}, {high:g}]{share}: "
            "the twin extrapolates"
        )
    return warnings
