"""The rank-aware loader: a per-epoch permutation, chunk-friendly reads, prefetch in a thread.

:class:`ShardedLoader` gives rank ``r`` of ``N`` a disjoint, equal-sized slice of one global
permutation per epoch and yields it as batches (``dict`` field name -> numpy array; text fields
are object arrays of ``str``). It makes no MPI calls: the rank and the size are all it needs.

Which samples a rank gets, and in which order, is planned by :mod:`twinhpc.data.plan` (see its
note): one permutation ``P`` of the split per epoch, independent of the number of ranks, made
of blocks of ``block_rows`` consecutive samples shuffled window by window; rank ``r`` takes
positions ``r*m .. (r+1)*m - 1`` of it, ``m`` the same on every rank (policy ``drop`` or
``pad``).

Note:
    **Why blocks.** Samples are stored already shuffled (see ``twinhpc ingest``), so the random
    block order plus the shuffle inside a window mixes well, while every read is a whole
    contiguous block. A purely random per-sample permutation would make every sample a random
    HDF5 access. A rank works through its slice one window at a time: it reads each block of the
    window that holds some of its samples, and puts each row straight into its place in a batch.
    For numeric fields stored without compression the read is one ``preadv`` per block at the
    offset HDF5 reports for the chunk, scattering the rows into the batch arrays -- one copy, like
    a plain sequential read; text and compressed fields are read through HDF5 into a block
    buffer and copied from there. Fields with small samples (labels, ids: at most 64 KiB per
    block) are read once per shard and kept in memory. Batch arrays are reused once nobody holds
    them any more (see :class:`_BatchPool`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
from h5py import h5d

from ..errors import DatasetError, TwinError
from .format import FieldSpec, Manifest, ShardInfo, SplitInfo, chunk_rows
from .plan import POLICIES, BlockLayout, EpochPlan, Window, rank_share, samples_per_rank
from .shards import check_shard_schema, open_shard

Batch = dict[str, np.ndarray]
STATE_VERSION = 1
#: a field whose block holds at most this many bytes is read once per shard and kept in memory
RESIDENT_BLOCK_BYTES = 64 << 10


# -- reading --------------------------------------------------------------------------------
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers per preadv call


class _Shard:
    """One open shard (read-only, validated against the manifest).

    A numeric field stored chunked without filters, whole samples per chunk, is *direct*: its
    chunks' file offsets are looked up once, and :meth:`readv` reads a run of rows with one
    ``preadv`` that scatters each row straight into its place in a batch (one copy, as in a plain
    sequential read). Other fields (text, compressed) are read through HDF5 by :meth:`read`.
    """

    def __init__(self, path: Path, info: ShardInfo, fields: tuple[FieldSpec, ...]):
        self.path, self.count = path, info.count
        self.file = open_shard(path)
        try:
            problems = check_shard_schema(self.file, path, fields, info.count)
            if problems:
                raise DatasetError("; ".join(problems))
            self.datasets = {f.name: self.file[f.name] for f in fields}
            self.chunks = {f.name: c for f in fields if (c := self._chunk_offsets(f)) is not None}
            self.fd = os.open(path, os.O_RDONLY) if self.chunks else None
        except BaseException:
            self.file.close()
            raise

    def _chunk_offsets(self, spec: FieldSpec) -> tuple[int, np.ndarray, int] | None:
        """``(rows per chunk, file offset of each chunk, bytes per row)`` of a direct field,
        else ``None``."""
        ds = self.datasets[spec.name]
        dcpl = ds.id.get_create_plist()
        if spec.is_text or dcpl.get_nfilters() or dcpl.get_layout() != h5d.CHUNKED or ds.chunks[1:] != ds.shape[1:]:
            return None
        rows = ds.chunks[0]
        infos = sorted((ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())), key=lambda c: c.chunk_offset)
        if len(infos) != -(-self.count // rows) or any(c.byte_offset is None for c in infos):
            return None
        return rows, np.array([c.byte_offset for c in infos], dtype=np.int64), spec.sample_bytes

    def read(self, spec: FieldSpec, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of field ``spec`` into ``out`` (``hi - lo`` rows) through HDF5."""
        ds = self.datasets[spec.name]
        try:
            if spec.is_text:
                out[...] = ds.asstr()[lo:hi]
            else:
                ds.read_direct(out, np.s_[lo:hi])
        except (OSError, ValueError, RuntimeError) as e:
            raise DatasetError(f"{self.path}: cannot read field {spec.name!r} rows {lo}:{hi} ({e})") from None

    def readv(self, spec: FieldSpec, lo: int, hi: int, rows: list) -> None:
        """Rows ``lo:hi`` of a direct field, row ``lo + i`` into the buffer ``rows[i]``."""
        per_chunk, offsets, row_bytes = self.chunks[spec.name]
        a = lo
        while a < hi:
            c = a // per_chunk
            b = min(hi, (c + 1) * per_chunk, a + _IOV_MAX)
            got = os.preadv(self.fd, rows[a - lo : b - lo], int(offsets[c]) + (a - c * per_chunk) * row_bytes)
            if got != (b - a) * row_bytes:
                raise DatasetError(
                    f"{self.path}: field {spec.name!r} rows {a}:{b}: short read ({got} of "
                    f"{(b - a) * row_bytes} bytes); is the file truncated?"
                )
            a = b

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.file.close()


class _BatchArrays:
    """The arrays of one batch, with a buffer per row of each numeric field (``preadv`` targets)."""

    __slots__ = ("arrays", "rows")

    def __init__(self, fields: tuple[FieldSpec, ...], batch_size: int):
        self.arrays = {f.name: np.empty((batch_size, *f.shape), f.numpy_dtype()) for f in fields}
        self.rows = {}
        for f in fields:
            if not f.is_text:
                flat, size = memoryview(self.arrays[f.name]).cast("B"), f.sample_bytes
                self.rows[f.name] = [flat[i * size : (i + 1) * size] for i in range(batch_size)]


class _BatchPool:
    """Batch arrays, handed out again once nobody else holds them.

    Fresh multi-megabyte arrays cost page faults on every batch (more than the copy into them),
    so the arrays of up to ``keep`` batches are reused -- but only when they are not being filled
    and their reference counts show that the pool is their only holder: a batch the consumer
    still holds (or a view of it, or a tensor made by ``torch.from_numpy``) is never overwritten.
    """

    def __init__(self, fields: tuple[FieldSpec, ...], batch_size: int, keep: int):
        self.fields, self.batch_size, self.keep = fields, batch_size, keep
        self.kept: list[_BatchArrays] = []
        self.filling: set[int] = set()
        self.baseline = self._refs(_BatchArrays(fields, batch_size))  # held by the pool only

    @staticmethod
    def _refs(entry: _BatchArrays) -> list[int]:
        return [sys.getrefcount(a) for a in entry.arrays.values()]

    def get(self) -> _BatchArrays:
        """Arrays to fill (reused or new), until :meth:`lend` hands them out."""
        for entry in self.kept:
            if id(entry) not in self.filling and self._refs(entry) <= self.baseline:
                break
        else:
            entry = _BatchArrays(self.fields, self.batch_size)
            if len(self.kept) < self.keep:
                self.kept.append(entry)
        self.filling.add(id(entry))
        return entry

    def restart(self) -> None:
        """Forget the batches an abandoned producer was filling (nothing else holds them)."""
        self.filling.clear()

    def lend(self, entry: _BatchArrays) -> Batch:
        """The filled batch, as a new dict; from now on its holders' references protect it."""
        self.filling.discard(id(entry))
        return dict(entry.arrays)


class _Reader:
    """Puts samples into their places in batches: opens shards on first use, keeps the resident
    fields of opened shards in memory, reads the other fields block by block."""

    def __init__(
        self,
        directory: Path,
        split: SplitInfo,
        fields: tuple[FieldSpec, ...],
        layout: BlockLayout,
        resident: set[str],
        batch_size: int,
    ):
        self.directory, self.split, self.fields, self.layout = directory, split, fields, layout
        self.batch_size = batch_size
        self.resident = tuple(f for f in fields if f.name in resident)
        self.blockwise = tuple(f for f in fields if f.name not in resident)
        self.columns = {f.name: np.empty((layout.n, *f.shape), f.numpy_dtype()) for f in self.resident}
        max_block = int((layout.stops - layout.starts).max())
        self.block_buffers = {f.name: np.empty((max_block, *f.shape), f.numpy_dtype()) for f in self.blockwise}
        self.scratch = {f.name: memoryview(bytearray(f.sample_bytes)) for f in self.blockwise if not f.is_text}
        self.shards: dict[int, _Shard] = {}

    def shard(self, s: int) -> _Shard:
        if s not in self.shards:
            info = self.split.shards[s]
            shard = _Shard(self.directory / info.file, info, self.fields)
            lo = int(self.layout.shard_starts[s])
            for f in self.resident:
                shard.read(f, 0, info.count, self.columns[f.name][lo : lo + info.count])
            self.shards[s] = shard
        return self.shards[s]

    def place(self, window: Window, lo: int, hi: int, first: int, batches: list[_BatchArrays]) -> None:
        """Put ``window.samples[lo:hi]`` into slots ``first..``: slot ``q`` is row ``q % B`` of
        ``batches[q // B]``."""
        lay, B = self.layout, self.batch_size
        views = {
            f.name: list(chain.from_iterable(entry.rows[f.name] for entry in batches))
            for f in self.blockwise
            if not f.is_text
        }
        sizes = lay.stops[window.blocks] - lay.starts[window.blocks]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        slots = window.position + (first - lo)  # the slot of each sample of the blocks
        wanted = (slots >= first) & (slots < first + hi - lo)
        counts = np.add.reduceat(wanted, offsets[:-1])
        slots_, wanted_ = slots.tolist(), wanted.tolist()
        for b, size, t, count in zip(window.blocks.tolist(), sizes.tolist(), offsets.tolist(), counts.tolist()):
            if count:
                s = int(lay.shard_of[b])
                start = int(lay.starts[b] - lay.shard_starts[s])
                self._read_block(
                    self.shard(s),
                    start,
                    start + size,
                    slots_[t : t + size],
                    None if count == size else wanted_[t : t + size],
                    batches,
                    views,
                )
        samples = window.samples[lo:hi]
        for j in range(first // B, (first + len(samples) - 1) // B + 1):
            a, b = max(j * B, first), min((j + 1) * B, first + len(samples))
            for name, column in self.columns.items():
                np.take(
                    column, samples[a - first : b - first], axis=0, out=batches[j].arrays[name][a - j * B : b - j * B]
                )

    def _read_block(
        self,
        shard: _Shard,
        lo: int,
        hi: int,
        slots: list[int],
        wanted: list[bool] | None,
        batches: list[_BatchArrays],
        views: dict[str, list],
    ) -> None:
        """Rows ``lo:hi`` of ``shard``, row ``lo + i`` into slot ``slots[i]`` where ``wanted[i]``
        (``None``: every row), for every block-wise field; ``views[name][q]`` is slot ``q``'s row
        of a numeric field."""
        B = self.batch_size
        for f in self.blockwise:
            if f.name in shard.chunks:
                slot_views = views[f.name]
                if wanted is None:
                    targets = [slot_views[q] for q in slots]
                else:
                    scratch = self.scratch[f.name]
                    targets = [slot_views[q] if w else scratch for q, w in zip(slots, wanted)]
                shard.readv(f, lo, hi, targets)
            else:
                buf = self.block_buffers[f.name][: hi - lo]
                shard.read(f, lo, hi, buf)
                for i, q in enumerate(slots):
                    if wanted is None or wanted[i]:
                        batches[q // B].arrays[f.name][q % B] = buf[i]

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()


# -- prefetch -------------------------------------------------------------------------------
class _Prefetcher:
    """Runs a batch generator in a thread, ``depth`` batches ahead (a bounded queue).

    An exception in the thread is re-raised in the consumer; :meth:`close` stops the thread
    (it checks a stop flag at least every 0.1 s while the queue is full) and joins it.
    """

    _END = object()

    def __init__(self, produce: Iterator[Batch], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(produce,), name="twinhpc-loader", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _work(self, produce: Iterator[Batch]) -> None:
        try:
            for batch in produce:
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)
        finally:
            produce.close()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    raise TwinError("this loader iterator was closed") from None
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the loader -----------------------------------------------------------------------------
class ShardedLoader:
    """Batches of one split of a twinhpc dataset for rank ``rank`` of ``size``.

    Parameters
    ----------
    dataset : str or path
        The dataset directory (``manifest.json`` and the shard files).
    split : str
        The split to read (``train``, ``val``, ...).
    batch_size : int
        Samples per batch, per rank. At most a rank's share of the split.
    seed : int
        Seed of the permutation (``>= 0``); the same on every rank.
    fields : sequence of str, optional
        Fields to read (default: all fields of the manifest).
    policy : {"drop", "pad"}
        ``drop`` leaves out the tail of the permutation that does not fill a batch on every
        rank; ``pad`` wraps around so every sample is seen at least once (see :mod:`twinhpc.data.plan`).
    prefetch : int
        Batches prepared ahead by a background thread; ``0`` reads in the consumer's thread.
    window : int
        Blocks whose samples are shuffled together (memory: about ``window`` blocks per field).
    block_rows : int, optional
        Samples per block (default: the HDF5 chunk rows of the largest field).
    rank, size : int, optional
        This process's place among the readers. Default: taken from ``world``.
    world : twinhpc.comm.world.World, optional
        Used for ``rank``/``size`` when those are not given (default: the MPI world).

    Notes
    -----
    Iterating yields the rest of the current epoch (:meth:`set_epoch`), counting each batch as
    consumed when it is handed out; once the epoch is exhausted the loader moves to the next
    epoch. :meth:`state_dict` / :meth:`load_state_dict` resume exactly mid-epoch. Shard files are
    opened on first use by the thread that reads (each process its own, read-only) and closed by
    :meth:`close` or on leaving a ``with`` block.
    """

    def __init__(
        self,
        dataset,
        split: str = "train",
        batch_size: int = 32,
        *,
        seed: int = 0,
        fields=None,
        policy: str = "drop",
        prefetch: int = 2,
        window: int = 8,
        block_rows: int | None = None,
        rank: int | None = None,
        size: int | None = None,
        world=None,
    ):
        self.directory = Path(dataset)
        self.manifest = Manifest.load(self.directory)
        self.split = split
        self._split = self.manifest.split(split)
        self.fields = self.manifest.fields if fields is None else tuple(self.manifest.field(name) for name in fields)
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("prefetch", prefetch, 0),
            ("window", window, 1),
            ("block_rows", 1 if block_rows is None else block_rows, 1),
        ):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise TwinError(f"{name} must be an integer >= {low}, got {value!r}")
        if policy not in POLICIES:
            raise TwinError(f"policy must be one of {POLICIES}, got {policy!r}")
        if rank is None or size is None:
            if world is None:
                from ..comm.world import get_world

                world = get_world()
            rank, size = world.rank, world.size
        if not 0 <= rank < size:
            raise TwinError(f"rank must be in [0, size={size}), got {rank}")
        self.batch_size, self.seed, self.policy, self.prefetch = int(batch_size), int(seed), policy, int(prefetch)
        self.window, self.rank, self.size = int(window), int(rank), int(size)

        largest = max(self.fields, key=lambda f: f.sample_bytes)
        shards = self._split.shards
        self.layout = BlockLayout(
            [sh.count for sh in shards], [block_rows if block_rows else chunk_rows(largest, sh.count) for sh in shards]
        )
        max_block = self.max_block_rows = int((self.layout.stops - self.layout.starts).max())
        resident = {f.name for f in self.fields if not f.is_text and f.sample_bytes * max_block <= RESIDENT_BLOCK_BYTES}
        self._reader = _Reader(self.directory, self._split, self.fields, self.layout, resident, self.batch_size)
        open_at_once = -(-self.window * max_block // self.batch_size) + 1
        self._pool = _BatchPool(self.fields, self.batch_size, keep=open_at_once + self.prefetch + 3)

        n = self.layout.n
        share = rank_share(n, self.size, policy)
        if self.batch_size > share:
            raise TwinError(
                f"batch_size={self.batch_size} is larger than a rank's share of split {split!r} "
                f"({n} samples over {self.size} rank(s): {share} each, policy {policy!r})"
            )
        #: samples per rank per epoch
        self.samples_per_rank = samples_per_rank(n, self.size, self.batch_size, policy)
        self._epoch, self._consumed = 0, 0
        self._active: _Prefetcher | None = None
        self._token: object | None = None

    # -- the plan -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self.samples_per_rank // self.batch_size

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch``: its permutation ``P``, window by window."""
        return EpochPlan(self.layout, self.seed, epoch, self.window)

    def permutation(self, epoch: int) -> np.ndarray:
        """The global permutation ``P`` of ``epoch`` (independent of the rank count)."""
        return self.plan(epoch).permutation()

    def indices(self, epoch: int) -> np.ndarray:
        """The global indices this rank yields in ``epoch``, in order."""
        a = self.rank * self.samples_per_rank
        return self.plan(epoch).indices(a, a + self.samples_per_rank)

    # -- iterating ----------------------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        """The epoch that iterating continues (or starts)."""
        return self._epoch

    @property
    def batches_consumed(self) -> int:
        """Batches of the current epoch already handed out."""
        return self._consumed

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the current one, from its first batch -- unless it already is current
        (then a resumed position is kept, so ``set_epoch(e); for b in loader`` resumes)."""
        if epoch != self._epoch:
            self._retire()
            self._epoch, self._consumed = int(epoch), 0

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """``set_epoch(epoch)``, then iterate."""
        self.set_epoch(epoch)
        return iter(self)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; a new iteration ends the previous one."""
        self._retire()
        token = self._token = object()
        epoch = self._epoch
        produce = self._produce(epoch, self._consumed)
        self._active = _Prefetcher(produce, self.prefetch) if self.prefetch else None
        prefetcher = self._active
        try:
            for batch in prefetcher or produce:
                if self._token is not token:
                    raise TwinError(
                        "this loader iterator was closed (the loader was closed, repositioned or iterated anew)"
                    )
                self._consumed += 1
                yield batch
            self._epoch, self._consumed = epoch + 1, 0
        finally:
            if prefetcher is not None:
                prefetcher.close()
            produce.close()
            if self._token is token:
                self._token, self._active = None, None

    def _retire(self) -> None:
        """End the current iteration, if any (its thread is stopped and joined)."""
        if self._active is not None:
            self._active.close()
        self._token, self._active = None, None

    def _produce(self, epoch: int, start: int) -> Iterator[Batch]:
        """Batches ``start..`` of this rank in ``epoch``, placed window by window."""
        plan, B = self.plan(epoch), self.batch_size
        a = self.rank * self.samples_per_rank
        pool = self._pool
        pool.restart()
        batches: list[_BatchArrays] = []  # being filled; slot q is row q % B of batches[q // B]
        filled = 0
        for k, lo, hi in plan.pieces(a + start * B, a + self.samples_per_rank):
            while len(batches) * B < filled + hi - lo:
                batches.append(pool.get())
            self._reader.place(plan.window(k), lo, hi, filled, batches)
            filled += hi - lo
            done = filled // B
            for entry in batches[:done]:
                batch = pool.lend(entry)
                yield batch
            batches, filled = batches[done:], filled - done * B

    # -- state --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Identifies the split's data: a hash of its shard names and checksums."""
        h = hashlib.sha256()
        for sh in self._split.shards:
            h.update(f"{sh.file}:{sh.count}:{sh.sha256}\n".encode())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict:
        """Where iteration stands, as plain ints and strings (the same on every rank)."""
        return {
            "version": STATE_VERSION,
            "dataset": self.fingerprint(),
            "split": self.split,
            "seed": self.seed,
            "policy": self.policy,
            "batch_size": self.batch_size,
            "world_size": self.size,
            "window": self.window,
            "block_rows": self.max_block_rows,
            "epoch": self._epoch,
            "batches_consumed": self._consumed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` (from :meth:`state_dict`) stood; every key but ``epoch`` and
        ``batches_consumed`` must match this loader, else :class:`TwinError` names the key."""
        mine = self.state_dict()
        for key, value in mine.items():
            if key not in state:
                raise TwinError(f"loader state: key {key!r} is missing")
            if key not in ("epoch", "batches_consumed") and state[key] != value:
                raise TwinError(f"loader state: key {key!r} is {state[key]!r}, but this loader has {value!r}")
        consumed = state["batches_consumed"]
        if not 0 <= consumed <= len(self):
            raise TwinError(f"loader state: key 'batches_consumed' is {consumed}, an epoch has {len(self)} batches")
        self._retire()
        self._epoch, self._consumed = int(state["epoch"]), int(consumed)

    # -- files --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the prefetch thread and close the shard files (reopened if iterated again)."""
        self._retire()
        self._reader.close()

    def __enter__(self) -> ShardedLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
