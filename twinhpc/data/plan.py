"""The plan of an epoch: which samples each rank gets, in which order (pure numpy).

:class:`~twinhpc.data.loader.ShardedLoader` reads what this module plans. The plan needs only
the samples per shard, the block size, the seed, the epoch and the rank count; it opens no file
and starts no thread.

Note:
    **The permutation.** The global index space of a split is its shards concatenated in
    manifest order. It is cut into *blocks* of ``block_rows`` consecutive samples (the loader
    uses one HDF5 chunk of the largest field), never crossing a shard boundary
    (:class:`BlockLayout`). The permutation ``P`` of epoch ``e`` puts the blocks in a random
    order (seeded by ``(seed, e)``), groups them into *windows* of ``window`` consecutive blocks
    of that order, and shuffles the samples inside each window (window ``k`` seeded by
    ``(seed, e, k)``) (:class:`EpochPlan`). ``P`` depends on the dataset, ``seed``, ``e``,
    ``block_rows`` and ``window`` -- never on the number of ranks.

    **Which samples a rank gets.** With ``n`` samples, ``N`` ranks and batch size ``B``, every
    rank gets ``m`` samples, ``m / B`` batches (:func:`samples_per_rank`):

    - ``drop`` (default): ``m = B * floor(n / (N * B))``. Rank ``r`` takes ``P[r*m:(r+1)*m]``;
      the last ``n - N*m`` entries of ``P`` (fewer than ``N * B``, different samples every epoch)
      are not seen in that epoch.
    - ``pad``: ``m = B * ceil(n / (N * B))``. ``P`` is extended by wrapping around to its start
      (``P[i mod n]``), and rank ``r`` takes positions ``r*m .. (r+1)*m - 1``: every sample is
      seen at least once, fewer than ``N * B`` of them twice.

    Within an epoch no position of ``P`` is given out twice, so (``drop``) no sample is seen
    twice. ``batch_size`` may not exceed a rank's share (:func:`rank_share`: ``floor(n / N)``
    for ``drop``, ``ceil(n / N)`` for ``pad``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: how an epoch's samples are cut into equal shares per rank (see the module note)
POLICIES = ("drop", "pad")


class BlockLayout:
    """A split cut into blocks: ``starts[b]:stops[b]`` are block ``b``'s global indices.

    Global indices number the split's samples with its shards concatenated in order.

    Parameters
    ----------
    counts : samples of each shard, in order.
    rows : samples per block of each shard (``>= 1``); a shard's last block holds the rest.
    """

    def __init__(self, counts: Sequence[int], rows: Sequence[int]):
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        starts, shard_of = [], []
        for s, (count, per_block) in enumerate(zip(counts, rows, strict=True)):
            first = np.arange(0, count, per_block, dtype=np.int64)
            starts.append(self.shard_starts[s] + first)
            shard_of.append(np.full(len(first), s, dtype=np.int64))
        self.starts = np.concatenate(starts)
        self.stops = np.append(self.starts[1:], self.shard_starts[-1])
        self.stops[np.flatnonzero(np.diff(np.concatenate(shard_of)))] = self.shard_starts[1:-1]
        self.shard_of = np.concatenate(shard_of)

    @property
    def n(self) -> int:
        """Samples of the split."""
        return int(self.shard_starts[-1])


@dataclass(frozen=True)
class Window:
    """One window of an epoch's permutation.

    ``samples`` is the window's part of ``P``; the ``t``-th sample of ``blocks`` (counted through
    the blocks in order) is ``samples[position[t]]``.
    """

    blocks: np.ndarray
    samples: np.ndarray
    position: np.ndarray


class EpochPlan:
    """The permutation ``P`` of one epoch (see the module note), computed window by window."""

    def __init__(self, layout: BlockLayout, seed: int, epoch: int, window: int):
        self.layout, self.seed, self.epoch, self.per_window = layout, seed, epoch, window
        self.order = np.random.default_rng((seed, epoch)).permutation(len(layout.starts))
        sizes = layout.stops[self.order] - layout.starts[self.order]
        per_window = np.add.reduceat(sizes, np.arange(0, len(sizes), window))
        #: ``P[bounds[k]:bounds[k+1]]`` is window ``k``
        self.bounds = np.concatenate([[0], np.cumsum(per_window)])

    def window(self, k: int) -> Window:
        """Window ``k``: its blocks (in file order) and its samples ``P[bounds[k]:bounds[k+1]]``."""
        lay = self.layout
        blocks = np.sort(self.order[k * self.per_window : (k + 1) * self.per_window])
        stored = np.concatenate([np.arange(lay.starts[b], lay.stops[b]) for b in blocks])
        shuffle = np.random.default_rng((self.seed, self.epoch, k)).permutation(len(stored))
        position = np.empty_like(shuffle)
        position[shuffle] = np.arange(len(shuffle))
        return Window(blocks, stored[shuffle], position)

    def permutation(self) -> np.ndarray:
        """``P``: every global index once."""
        return np.concatenate([self.window(k).samples for k in range(len(self.bounds) - 1)])

    def pieces(self, a: int, b: int) -> Iterator[tuple[int, int, int]]:
        """Positions ``a..b-1`` of ``P`` wrapped around (``P[i mod n]``) as ``(k, lo, hi)``:
        window ``k``'s entries ``lo:hi``, in order."""
        n = self.layout.n
        while a < b:
            p = a % n
            k = int(np.searchsorted(self.bounds, p, side="right")) - 1
            hi = min(int(self.bounds[k + 1]), p + (b - a))
            yield k, p - int(self.bounds[k]), hi - int(self.bounds[k])
            a += hi - p

    def indices(self, a: int, b: int) -> np.ndarray:
        """The global indices at positions ``a..b-1`` of ``P`` wrapped around (``P[i mod n]``)."""
        return np.concatenate([self.window(k).samples[lo:hi] for k, lo, hi in self.pieces(a, b)])


# -- the ranks' slices ------------------------------------------------------------------------
def rank_share(n: int, size: int, policy: str) -> int:
    """The most samples one of ``size`` ranks may get per batch: ``floor(n / size)`` for
    ``drop``, ``ceil(n / size)`` for ``pad``."""
    return n // size if policy == "drop" else -(-n // size)


def samples_per_rank(n: int, size: int, batch_size: int, policy: str) -> int:
    """``m``, the samples each of ``size`` ranks gets per epoch: whole batches of ``batch_size``,
    the same number on every rank (``drop``: ``B * floor(n / (N * B))``, ``pad``:
    ``B * ceil(n / (N * B))``). Rank ``r`` takes positions ``r*m .. (r+1)*m - 1`` of ``P``."""
    per = size * batch_size
    return batch_size * (n // per if policy == "drop" else -(-n // per))
