"""Which sample goes to which split and shard: a pure function of (count, seed, fractions).

Nothing here depends on the number of ranks, so the dataset that ingest writes is the same
whether one rank or many convert it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TwinError
from .format import SPLIT_ORDER, shard_name


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its split, position, file name and the global sample indices it holds
    (in stored order)."""

    split: str
    index: int
    of: int
    indices: np.ndarray

    @property
    def file(self) -> str:
        return shard_name(self.split, self.index, self.of)


def assign_splits(
    count: int, val_fraction: float, test_fraction: float, seed: int, given: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Global sample indices of each split, in stored (shuffled) order.

    Without ``given``, one permutation (seeded by ``seed``) of all samples is cut into test, val
    and train, in that order. With ``given`` (per-sample split names from the source), ``test``
    and ``unlabeled`` samples keep their split, and ``val`` is cut from the given ``train``
    samples; ``test_fraction`` must then be 0. Empty splits are left out. Samples are stored
    shuffled so that contiguous reads (whole HDF5 chunks) already mix classes.
    """
    for name, frac in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise TwinError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise TwinError(f"--val-fraction + --test-fraction must be < 1, got {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    if given is None:
        pool = np.arange(count, dtype=np.int64)
        rest: dict[str, np.ndarray] = {}
    else:
        given = np.asarray(given)
        if test_fraction:
            raise TwinError("--test-fraction does not apply: this source comes with its own test split")
        pool = np.flatnonzero(given == "train").astype(np.int64)
        rest = {s: np.flatnonzero(given == s).astype(np.int64) for s in ("test", "unlabeled")}
        unknown = set(np.unique(given)) - {"train", "test", "unlabeled"}
        if unknown:
            raise TwinError(f"reader returned unknown split names {sorted(unknown)}")
    perm = pool[rng.permutation(len(pool))]
    n_test = int(round(test_fraction * len(pool)))
    n_val = int(round(val_fraction * len(pool)))
    out["test"] = perm[:n_test]
    out["val"] = perm[n_test : n_test + n_val]
    out["train"] = perm[n_test + n_val :]
    for s, idx in rest.items():
        given_part = idx[rng.permutation(len(idx))]
        out[s] = np.concatenate([out[s], given_part]) if s in out else given_part
    return {s: out[s] for s in SPLIT_ORDER if s in out and len(out[s])}


def plan_shards(splits: dict[str, np.ndarray], shards: int) -> list[ShardPlan]:
    """Cut each split into ``min(shards, count)`` contiguous shards of near-equal size."""
    total = sum(len(v) for v in splits.values())
    if shards < 1:
        raise TwinError(f"--shards must be at least 1, got {shards}")
    if shards > total:
        raise TwinError(f"--shards {shards} is larger than the sample count ({total})")
    plans = []
    for split, idx in splits.items():
        n = min(shards, len(idx))
        bounds = [len(idx) * i // n for i in range(n + 1)]
        plans += [ShardPlan(split, i, n, idx[bounds[i] : bounds[i + 1]]) for i in range(n)]
    return plans


def shards_of_rank(plans: list[ShardPlan], rank: int, size: int) -> list[ShardPlan]:
    """The shards rank ``rank`` writes: greedy balance by sample count, same on every rank."""
    load = [0] * size
    mine = []
    for p in sorted(plans, key=lambda p: (-len(p.indices), p.file)):
        r = min(range(size), key=lambda k: (load[k], k))
        load[r] += len(p.indices)
        if r == rank:
            mine.append(p)
    return mine
