"""Helpers for multi-rank tests: run a test body on every rank, then agree on the outcome.

A bare ``assert`` that fails on one rank leaves the others waiting in the next collective. So a
multi-rank test writes its checks inside a function and hands it to :func:`collective`, which
runs it on every rank, gathers every rank's outcome, and fails on *every* rank (naming the ranks
and their messages) if any rank failed. Tests are written for any world size (1, 2, 3 ...):
expected values derive from ``world.size``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any


def collective(world, body: Callable[[], Any]) -> Any:
    """Run ``body()`` on every rank; raise AssertionError on all ranks if any rank failed."""
    result, error = None, None
    try:
        result = body()
    except BaseException as e:  # noqa: BLE001 - every failure must be agreed on
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    errors = world.allgather(error)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        raise AssertionError("\n".join(f"--- rank {r} of {world.size} ---\n{e}" for r, e in failed))
    return result


def on_root(world, body: Callable[[], Any]) -> Any:
    """Run ``body()`` on rank 0 only and broadcast its result; raise AssertionError on every rank
    if it failed there (instead of leaving the other ranks waiting in the broadcast)."""
    result, error = None, None
    if world.rank == 0:
        try:
            result = body()
        except BaseException as e:  # noqa: BLE001 - the other ranks must hear of it
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    result, error = world.bcast((result, error))
    if error:
        raise AssertionError(f"--- rank 0 of {world.size} ---\n{error}")
    return result
