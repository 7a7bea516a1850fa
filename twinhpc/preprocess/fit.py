"""Fitting preprocessing on the training split across ranks: statistics and vocabularies.

Every rank reads a disjoint part of the training split (whole *blocks* of :data:`FIT_BLOCK`
consecutive samples of a shard, contiguous runs of blocks balanced by sample count), computes
partial results with the kernels, and the partial results are merged after an ``allgather``:

- images: per-channel :func:`~twinhpc.kernels.stats.image_moments` → ``merge_moments``;
- tables: per-column :func:`~twinhpc.kernels.stats.tabular_moments` of the finite values →
  ``merge_moments`` (:func:`scan_nonfinite` first finds the NaN and inf values of every split);
- text: :func:`~twinhpc.kernels.text.count_terms` (occurrences and document frequencies) →
  ``merge_term_counts`` → ``build_vocabulary``, and the smooth idf of the vocabulary's
  document frequencies.

Note:
    Moments are computed *per block* and merged in block order, not per rank: the blocks depend
    on the dataset alone, so the fitted mean and std are the same bits for any number of ranks
    (a per-rank merge would differ in the last bits between 1 and 3 ranks, and so would the
    standardised features written with them). Term and document counts are integers, so their
    merge is exact in any grouping; each rank counts its whole share at once.

Note:
    The idf comes from the document frequencies that ``count_terms`` already merged (the
    documents of the training split containing each term, with the same tokeniser), so the
    training documents are tokenised once; it equals ``document_frequencies`` →
    ``merge_document_frequencies`` → ``idf_from_df`` over the same documents (tested against
    scikit-learn's ``TfidfVectorizer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np

from ..comm.world import World
from ..data.format import FieldSpec, SplitInfo
from ..data.shards import open_shard
from ..errors import DatasetError, TwinError
from ..kernels import stats, text, tfidf
from ..kernels.heat_spectral import PlateConstants, spectral_step_reference
from .transform import Field, Image, Tabular, stop_word_list

#: samples per block of the fitting pass (the unit of the per-block moments)
FIT_BLOCK = 4096
#: bytes of a block of field samples at most (a scenario's trajectory can be megabytes)
FIELD_BLOCK_BYTES = 32 << 20


def field_block_rows(fields: tuple[FieldSpec, ...]) -> int:
    """Samples per block of fields: :data:`FIT_BLOCK`, or fewer so that a block of the float32
    ``fields`` stays under :data:`FIELD_BLOCK_BYTES` (at least 1). Depends on the schema alone."""
    per_sample = 4 * sum(int(np.prod(f.shape, dtype=np.int64)) for f in fields)
    return max(1, min(FIT_BLOCK, FIELD_BLOCK_BYTES // max(per_sample, 1)))


@dataclass(frozen=True)
class Block:
    """Rows ``lo:hi`` of one shard file (``index``: the block's place in the split)."""

    index: int
    file: str
    lo: int
    hi: int


def split_blocks(split: SplitInfo, rows: int | None = None) -> list[Block]:
    """The blocks of ``split`` (``rows`` samples, default :data:`FIT_BLOCK`), in shard order,
    none crossing a shard boundary."""
    rows = rows or FIT_BLOCK
    out = []
    for shard in split.shards:
        for lo in range(0, shard.count, rows):
            out.append(Block(len(out), shard.file, lo, min(lo + rows, shard.count)))
    return out


def share(weights, rank: int, size: int) -> list[int]:
    """The items (indices) of ``rank``: contiguous runs of items, balanced by ``weights``.

    Item ``i`` goes to the rank whose equal share of the total weight holds the item's start,
    so every rank computes the same assignment and the runs are disjoint and cover every item.
    """
    starts = np.concatenate([[0], np.cumsum(weights)[:-1]]).astype(np.int64)
    total = int(np.sum(weights))
    owner = (starts * size) // max(total, 1)
    return [i for i in range(len(starts)) if owner[i] == rank]


def read_rows(directory: Path, file: str, fields: tuple[FieldSpec, ...], lo: int, hi: int) -> dict[str, np.ndarray]:
    """Rows ``lo:hi`` of ``fields`` of one shard (text as object arrays of ``str``).

    Raises
    ------
    DatasetError
        The shard is missing, unreadable or lacks a field (naming the file and the field).
    """
    path = directory / file
    with open_shard(path) as f:
        out = {}
        for spec in fields:
            if spec.name not in f:
                raise DatasetError(f"{path}: field {spec.name!r} is missing")
            ds = f[spec.name]
            out[spec.name] = np.array(ds.asstr()[lo:hi], dtype=object) if spec.is_text else ds[lo:hi]
    return out


def _my_blocks(world: World, split: SplitInfo, rows: int | None = None) -> list[Block]:
    blocks = split_blocks(split, rows)
    return [blocks[i] for i in share([b.hi - b.lo for b in blocks], world.rank, world.size)]


def _merge_block_moments(world: World, mine: list[tuple[int, stats.Moments]], n: int) -> stats.Moments:
    """Every rank's per-block moments, merged in block order (the same bits on every rank)."""
    parts = sorted((p for rank_parts in world.allgather(mine) for p in rank_parts), key=lambda p: p[0])
    return reduce(stats.merge_moments, (m for _, m in parts), stats.empty_moments(n))


def fit_image(world: World, directory: Path, split: SplitInfo, spec: FieldSpec, config) -> Image:
    """Per-channel mean and std of the image field ``spec`` over ``split`` (collective).

    Parameters
    ----------
    config : ``job.preprocess.image`` (``normalize``, ``crop_padding``, ``flip``).

    Raises
    ------
    TwinError
        On every rank, when any rank cannot read its blocks or the split is empty.
    """
    if not config.normalize:
        return Image(spec.name, spec.shape, None, None, config.crop_padding, config.flip)

    def local():
        return [
            (b.index, stats.image_moments(read_rows(directory, b.file, (spec,), b.lo, b.hi)[spec.name]))
            for b in _my_blocks(world, split)
        ]

    mine = world.run(local, DatasetError)
    total = _merge_block_moments(world, mine, spec.shape[-1])
    if split.count == 0 or total.count.min() == 0:
        raise TwinError(f"split {split.name!r} has no samples to fit the image statistics on")
    std = total.std / 255
    return Image(spec.name, spec.shape, total.mean / 255, np.where(std > 0, std, 1.0), config.crop_padding, config.flip)


def fit_field(
    world: World,
    directory: Path,
    split: SplitInfo,
    fields: dict[str, FieldSpec],
    prior: PlateConstants | None = None,
    forcing_window: int = 1,
) -> Field:
    """The statistics of a field task's fields over ``split`` (collective): the mean and std of
    every value of the state, of the state's increment over one saved step, of the forcing, and
    of each parameter, and the grid nodes no step changes (``held``; see
    :class:`~twinhpc.preprocess.transform.Field`).

    Parameters
    ----------
    fields : role (``state``, ``forcing``, ``params``) → its field's spec.
    prior : the plate of a hybrid twin (``train.prior = "plate"``): the increment's statistics
        are then those of what its spectral step misses, ``state[t+1] − prior(state[t])``
        (:func:`~twinhpc.kernels.heat_spectral.spectral_step_reference`), and the transform
        records the prior. Needs the forcing and the params roles.
    forcing_window : forcing frames the model reads per step, recorded in the transform.

    Raises
    ------
    TwinError
        On every rank, when any rank cannot read its blocks, the split is empty, or the split
        holds NaN or inf values (naming the field).
    """
    roles = list(fields)
    specs = tuple(fields.values())
    params = int(np.prod(fields["params"].shape, dtype=np.int64)) if "params" in fields else 0
    # columns of the merged moments: state, step, forcing (when present), then one per parameter
    columns = ["state", "step"] + (["forcing"] if "forcing" in fields else []) + ["params"] * params

    def increments(rows: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(rows[fields["state"].name])
        if prior is None:
            return np.diff(state, axis=1)
        forcing = np.asarray(rows[fields["forcing"].name])
        p = np.asarray(rows[fields["params"].name], np.float64).reshape(len(state), -1)
        steps = state.shape[1] - 1
        start = state[:, :-1].reshape(-1, *state.shape[2:])
        stepped = spectral_step_reference(
            prior, start, forcing.reshape(start.shape), np.repeat(p, steps, axis=0)
        ).reshape(len(state), steps, *state.shape[2:])
        return state[:, 1:] - stepped

    def moments(rows: dict[str, np.ndarray]) -> stats.Moments:
        state = np.asarray(rows[fields["state"].name])
        parts = [
            stats.tabular_moments(state.reshape(-1, 1)),
            stats.tabular_moments(increments(rows).reshape(-1, 1)),
        ]
        if "forcing" in fields:
            parts.append(stats.tabular_moments(np.asarray(rows[fields["forcing"].name]).reshape(-1, 1)))
        if params:
            parts.append(stats.tabular_moments(np.asarray(rows[fields["params"].name]).reshape(len(state), -1)))
        return stats.Moments(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("count", "mean", "m2")))

    rows = field_block_rows(specs)

    def local():
        out = []
        for b in _my_blocks(world, split, rows):
            block = read_rows(directory, b.file, specs, b.lo, b.hi)
            state = np.asarray(block[fields["state"].name])
            change = np.abs(np.diff(state, axis=1)).max(axis=(0, 1)) if len(state) else None
            out.append((b.index, moments(block), change))
        return out

    mine = world.run(local, DatasetError)
    total = _merge_block_moments(world, [(i, m) for i, m, _ in mine], len(columns))
    if split.count == 0:
        raise TwinError(f"split {split.name!r} has no samples to fit the field statistics on")
    # the nodes whose value no step of any scenario changes (a Dirichlet boundary): the
    # surrogate holds them (FieldTask.step); NaN compares false, so such a node is not held
    changes = [c for part in world.allgather([c for _, _, c in mine]) for c in part if c is not None]
    held = np.logical_and.reduce([c == 0 for c in changes]) if changes else None
    # NaN values are skipped by the moments (a smaller count), inf values make them non-finite
    frames, grid = fields["state"].shape[0], int(np.prod(fields["state"].shape[1:], dtype=np.int64))
    expected = {
        "state": split.count * frames * grid,
        "step": split.count * (frames - 1) * grid,
        "forcing": split.count * int(np.prod(fields["forcing"].shape)) if "forcing" in fields else 0,
        "params": split.count,
    }
    for i, role in enumerate(columns):
        if total.count[i] != expected[role] or not (np.isfinite(total.mean[i]) and np.isfinite(total.m2[i])):
            name = fields["state" if role == "step" else role].name
            raise TwinError(
                f"{directory}: field {name!r}, split {split.name!r}: NaN or inf values; a field task cannot "
                f"be trained on them (fix the data)"
            )
    std = np.where(total.std > 0, total.std, 1.0)
    stat = {
        "state_mean": total.mean[0],
        "state_std": std[0],
        "step_mean": total.mean[1],
        "step_std": std[1],
    }
    if "forcing" in fields:
        stat |= {"forcing_mean": total.mean[2], "forcing_std": std[2]}
    if params:
        stat |= {"params_mean": total.mean[-params:], "params_std": std[-params:]}
    if held is not None and held.any() and not held.all():
        stat["held"] = held.astype(np.float64)
    record = None if prior is None else {"kind": "plate", **prior.to_dict()}
    return Field({role: (fields[role].name, fields[role].shape) for role in roles}, stat, record, forcing_window)


@dataclass(frozen=True)
class NonFinite:
    """The NaN and inf values of one float field in one split."""

    field: str
    split: str
    count: int  # values (not samples)
    first: int  # the first sample holding one: its index in the split (shard order)


def scan_nonfinite(world: World, directory: Path, splits, fields: tuple[FieldSpec, ...]) -> list[NonFinite]:
    """The NaN and inf values of the float ``fields`` in every split of ``splits`` (collective).

    Every split is cut into blocks (:func:`split_blocks`), the ranks share them as in fitting,
    and the per-block counts and first places are gathered: every rank returns the same list,
    one :class:`NonFinite` per field and split that holds any, in split then field order.

    Raises
    ------
    TwinError
        On every rank, when any rank cannot read its blocks.
    """
    fields = tuple(f for f in fields if not f.is_text and np.dtype(f.dtype).kind in "fc")
    items = []  # (split, block, sample index of the block's first row)
    for split in splits:
        offsets = dict(zip((sh.file for sh in split.shards), np.cumsum([0] + [sh.count for sh in split.shards])))
        items += [(split.name, b, int(offsets[b.file]) + b.lo) for b in split_blocks(split)]
    if not fields or not items:
        return []

    def local():
        found = []
        for i in share([b.hi - b.lo for _, b, _ in items], world.rank, world.size):
            name, b, start = items[i]
            rows = read_rows(directory, b.file, fields, b.lo, b.hi)
            for spec in fields:
                bad = ~np.isfinite(np.asarray(rows[spec.name]).reshape(b.hi - b.lo, -1))
                count = int(np.count_nonzero(bad))
                if count:
                    found.append((name, spec.name, count, start + int(np.flatnonzero(bad.any(axis=1))[0])))
        return found

    mine = world.run(local, DatasetError)
    merged: dict[tuple[str, str], list[int]] = {}
    for split, name, count, first in (f for part in world.allgather(mine) for f in part):
        entry = merged.setdefault((split, name), [0, first])
        entry[0] += count
        entry[1] = min(entry[1], first)
    order = {s.name: i for i, s in enumerate(splits)}
    position = {f.name: i for i, f in enumerate(fields)}
    return [
        NonFinite(name, split, count, first)
        for (split, name), (count, first) in sorted(
            merged.items(), key=lambda kv: (order[kv[0][0]], position[kv[0][1]])
        )
    ]


def fit_tabular(
    world: World,
    directory: Path,
    split: SplitInfo,
    numeric: tuple[FieldSpec, ...],
    categorical: list[tuple[str, tuple[str, ...]]],
    config,
) -> Tabular:
    """Per-column mean and std of the finite values of the numeric fields over ``split``
    (collective): NaN and inf values are left out, so that a field the caller chose to impute
    (``preprocess --allow-nonfinite``) gets the mean of its finite values.

    A column without finite values gets mean 0; a column with std 0 (constant) or without values gets
    std 1, so standardising never divides by zero.
    """
    shapes = [(f.name, f.shape) for f in numeric]
    columns = int(sum(np.prod(f.shape, dtype=np.int64) for f in numeric))
    probe = Tabular(shapes, categorical, np.zeros(columns), np.ones(columns))

    def local():
        return (
            [
                (
                    b.index,
                    stats.tabular_moments(
                        _finite(probe.numeric_columns(read_rows(directory, b.file, numeric, b.lo, b.hi)))
                    ),
                )
                for b in _my_blocks(world, split)
            ]
            if numeric
            else []
        )

    mine = world.run(local, DatasetError)
    total = _merge_block_moments(world, mine, columns)
    mean = np.where(total.count > 0, total.mean, 0.0)
    std = np.nan_to_num(total.std, nan=1.0)
    return Tabular(shapes, categorical, mean, np.where(std > 0, std, 1.0), config.standardize)


def _finite(x: np.ndarray) -> np.ndarray:
    """``x`` with its inf values made NaN, which the moments skip."""
    return np.where(np.isinf(x), np.nan, x)


def fit_vocabulary(
    world: World, directory: Path, split: SplitInfo, spec: FieldSpec, config
) -> tuple[text.Vocabulary, np.ndarray, text.TermCounts]:
    """The vocabulary of the text field ``spec`` over ``split`` and its smooth idf (collective).

    Parameters
    ----------
    config : ``job.preprocess.text``: ``stop_words``, ``min_freq`` (documents), ``max_vocab``.

    Returns
    -------
    vocabulary : terms with document frequency >= ``min_freq``, most frequent first (ties by
        term), at most ``max_vocab``.
    idf : float64 per vocabulary term, ``ln((1 + n) / (1 + df)) + 1``.
    counts : the merged term counts of the split (every term; for reports and tests).
    """
    stop = stop_word_list(config.stop_words)

    def local():
        docs = [
            d for b in _my_blocks(world, split) for d in read_rows(directory, b.file, (spec,), b.lo, b.hi)[spec.name]
        ]
        return text.count_terms(docs, stop_words=stop or None)

    mine = world.run(local, DatasetError)
    counts = reduce(text.merge_term_counts, world.allgather(mine))
    vocab = text.build_vocabulary(counts, min_freq=config.min_freq, max_size=config.max_vocab, by="df")
    position = {t: i for i, t in enumerate(counts.terms)}
    df = counts.df[[position[t] for t in vocab.terms]] if len(vocab) else np.zeros(0, np.int64)
    idf = tfidf.idf_from_df(tfidf.DocumentFrequencies(df, counts.n_docs))
    return vocab, idf, counts
