"""Data parallelism: every rank trains a replica of the model on its share of each batch.

Usage (nanoGPT-style loop, one process per rank under ``mpirun``/``srun``)::

    from twinhpc.comm.ddp import DataParallel

    model = DataParallel(build_model())          # rank 0's parameters and buffers everywhere
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches:                         # this rank's share of the global batch
        loss = F.cross_entropy(model(x), y)
        loss.backward()                          # buckets are all-reduced as they fill
        model.synchronize()                      # wait for what is left: grads are now averages
        opt.step()
        opt.zero_grad()
    model.close()                                # writes the timeline, if any

Gradient accumulation: run the first micro-batches' backward inside ``with model.no_sync():``
(no communication), the last one outside; its ``synchronize()`` averages the accumulated grads.

Note:
    The design is PyTorch DDP's with the policy in Python and the hot path in the compiled
    engine (:mod:`twinhpc.comm.engine`, C++ over MPI with a background thread):

    - *Buckets* (:func:`~twinhpc.comm.buckets.assign_buckets`): the trainable parameters in
      reverse registration order, grouped up to ``bucket_cap_mb`` per bucket. Their shapes,
      dtypes and the bucket layout are compared across ranks once, at construction.
    - *Gradients as bucket views* (as DDP's ``gradient_as_bucket_view``): each bucket is one
      flat buffer and each parameter's ``.grad`` becomes a view into it, so the all-reduce works
      on the buffer in place: nothing is packed or unpacked. CPU buckets live in the engine's
      MPI-3 shared memory (:meth:`~twinhpc.comm.engine.Engine.shared_buffer`): on one node each
      rank sums its part of every rank's bucket and writes the average into all of them, the
      memory traffic of one memcpy. When a gradient arrives in a tensor of its own (the first
      backward, or after ``optimizer.zero_grad()`` set grads to ``None``), the hook copies it
      into its view once and points ``.grad`` there; ``zero_grad(set_to_none=False)`` keeps
      the views and saves that copy. (Copying at once also frees autograd's tensor at once,
      so the next gradient of the same backward reuses its memory: keeping autograd's tensors
      until the all-reduce and summing this rank's part from them, to copy only what the other
      ranks read, made the step 9-20 % slower on the 2-core VM in four A/B runs, most likely
      from page faults on fresh memory every step.)
    - *Launch*: a post-accumulate-grad hook on every parameter counts the gradients still
      missing from its bucket. Buckets are launched strictly in index order: bucket ``k`` goes to
      the engine (``allreduce_async_`` of its buffer, averaged, on the engine's thread; with a
      ``wire_dtype`` the engine casts into its fusion buffer and back) as soon as it and all
      buckets before it are complete. Since the engine
      runs collectives in FIFO order, every rank issues the same all-reduces in the same order
      whatever order its backward produced the gradients in, and the communication of the first
      buckets overlaps the rest of backward.
    - *Overlap, or not* (``overlap``; CPU buckets): handing a bucket to the engine's thread
      overlaps its sum with the rest of backward only if that thread has a core of its own.
      When the node's cores per rank do not exceed torch's intra-op threads (e.g. 2 ranks on 2
      cores, 1 thread each), the sum would take the core from backward anyway, plus two thread
      hand-offs and a cold cache. So by default (``overlap=None``) each rank compares
      :meth:`~twinhpc.comm.engine.Engine.cores_per_rank` with ``torch.get_num_threads()``; without
      a spare core every CPU bucket is reduced on the calling thread as soon as it is launched
      (in the hook, inside backward; the engine runs an operation inline when nothing is
      queued). Measured A/B on the 2-core VM (docs/data-parallel.md): 5-14 % faster steps
      (ResNet-18 0.93-0.95, the MLP at a 4 MiB cap 0.86). With overlap, the last bucket is
      still reduced by :meth:`DataParallel.synchronize` on the calling thread: when it
      completes, backward is all but over. The choice changes where a sum runs, never the
      order of the collectives, so ranks may differ in it. CUDA buckets always go to the
      thread, which waits for the gradients' stream without blocking the caller.
    - *Synchronize*: buckets that have not been launched when :meth:`DataParallel.synchronize`
      is called (because some parameter got no gradient in this backward, on this rank or
      another) are launched then, in index order, each missing gradient contributing its
      current ``.grad`` (zeros when it is ``None``). So a parameter unused on every rank gets a
      zero gradient, one unused on some ranks gets the average of the others' gradients and
      zeros, and nothing hangs. Then it waits for every bucket, in order.
    - *Accumulation*: inside :meth:`DataParallel.no_sync` the hooks do nothing; grads
      accumulate locally as usual and the next synced backward reduces the sums.
    - *One rank*: no buckets and no hooks (the average over one rank is the identity), so a
      one-rank run trains at the plain model's speed; :meth:`DataParallel.synchronize` only
      counts the step (and records it in the timeline).

    The per-step state is a count of missing gradients per bucket, the index of the next bucket
    to launch and the launched buckets' handles; the only switch is ``no_sync``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config.defaults import BUCKET_CAP_MB
from ..errors import TwinError
from .buckets import assign_buckets
from .timeline import Timeline, now_us

if TYPE_CHECKING:
    from .engine import Engine, Handle

_MIB = 1 << 20


class _Bucket:
    """One bucket: its parameters (reverse registration order), its flat gradient buffer with one
    view per parameter, and this step's progress."""

    def __init__(self, index: int, params: list[nn.Parameter], flat: torch.Tensor):
        self.index = index
        self.params = params
        self.nbytes = sum(p.numel() * p.element_size() for p in params)
        self.flat: torch.Tensor | None = flat  # the bucket's gradients, contiguous; summed in place
        # (None after DataParallel.close())
        self.views: list[torch.Tensor] = []  # views[i]: params[i]'s gradient inside flat
        offset = 0
        for p in params:
            self.views.append(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.missing = len(params)  # gradients not yet ready in this step
        self.first_ready_us = 0  # when the first of them became ready (timeline)

    def reset(self) -> None:
        self.missing = len(self.params)
        self.first_ready_us = 0


def _as_view(p: nn.Parameter, view: torch.Tensor) -> None:
    """Make ``p.grad`` the bucket view ``view``, moving its current value there."""
    grad = p.grad
    if grad is not None and grad.data_ptr() == view.data_ptr() and grad.shape == view.shape:
        return
    if grad is None:
        view.zero_()
    else:
        view.copy_(grad)
    p.grad = view


def _bucket_storage(engine: Engine, buckets_params: list[list[nn.Parameter]]) -> list[torch.Tensor]:
    """One flat buffer per bucket, carved from one allocation per device: for CPU buckets the
    engine's shared-memory buffer (summed in place with nothing copied), else device memory.
    Each bucket starts on a 64-byte boundary."""

    def aligned(n: int) -> int:
        return (n + 63) // 64 * 64

    sizes = [sum(p.numel() * p.element_size() for p in ps) for ps in buckets_params]
    devices = [ps[0].device for ps in buckets_params]
    flats: dict[int, torch.Tensor] = {}  # bucket index -> its buffer
    for device in dict.fromkeys(devices):  # each device once, in first-use order
        members = [k for k, d in enumerate(devices) if d == device]
        total = sum(aligned(sizes[k]) for k in members)
        storage = (
            engine.shared_buffer(total)
            if device.type == "cpu"
            else torch.zeros(total, dtype=torch.uint8, device=device)
        )
        offset = 0
        for k in members:
            dtype = buckets_params[k][0].dtype
            flats[k] = storage[offset : offset + sizes[k]].view(dtype)
            offset += aligned(sizes[k])
    return [flats[k] for k in range(len(buckets_params))]


class DataParallel(nn.Module):
    """Wrap ``module`` for data-parallel training over the engine's ranks.

    Parameters
    ----------
    module : the model; every rank builds the same architecture. Its parameters and buffers are
        overwritten with rank 0's at construction.
    engine : the :class:`~twinhpc.comm.engine.Engine` to communicate with; ``None`` creates one
        over ``COMM_WORLD`` (closed by :meth:`close`).
    bucket_cap_mb : the most MiB of gradients per bucket (default
        :data:`twinhpc.config.defaults.BUCKET_CAP_MB`; see :mod:`twinhpc.comm.buckets`).
    wire_dtype : ``None`` (gradients travel in their own dtype), ``torch.bfloat16`` or
        ``torch.float16``: gradients are cast for the all-reduce (the engine accumulates in
        float32) and back. Halves the bytes; the accuracy cost is in docs/data-parallel.md.
    timeline : a folder: record the phases of every step and write
        ``timeline/trace.rank<r>.json`` at :meth:`close` (see :mod:`twinhpc.comm.timeline`).
    overlap : whether CPU buckets are summed by the engine's thread while backward goes on
        (``True``), or by the calling thread when they fill (``False``); ``None`` (default):
        ``True`` if this node has more cores per rank than torch's intra-op threads
        (collective over the engine's communicator). Chosen value: :attr:`overlap`.

    Raises
    ------
    TwinError
        On every rank, if the parameters, buffers, bucket layout or wire dtype differ from
        rank 0's on some rank (the message names those ranks).

    Notes
    -----
    Collective: construction, :meth:`broadcast_state` and every synced step must be reached
    by every rank. ``forward`` is the wrapped module's.
    """

    def __init__(
        self,
        module: nn.Module,
        engine: Engine | None = None,
        bucket_cap_mb: float = BUCKET_CAP_MB,
        wire_dtype: torch.dtype | None = None,
        timeline: str | Path | None = None,
        overlap: bool | None = None,
    ):
        super().__init__()
        if engine is None:
            from .engine import Engine

            engine, self._owns_engine = Engine(), True
        else:
            self._owns_engine = False
        self.module = module
        self.engine = engine
        self.wire_dtype = wire_dtype
        self.timeline = Timeline(timeline, engine.rank) if timeline is not None else None
        self.steps = 0  # completed synchronize() calls

        params = [p for p in module.parameters() if p.requires_grad]
        layout = assign_buckets(
            [p.numel() * p.element_size() for p in params],
            int(bucket_cap_mb * _MIB),
            [(p.dtype, p.device) for p in params],
        )
        self._check_same_on_every_rank(layout)
        # one rank: the average over the ranks is the gradient itself, so there is nothing to
        # bucket or launch; backward runs with no hook and .grad stays autograd's own tensor
        # (a plain model's speed: no copy into bucket views, no Python call per parameter)
        self.local = engine.size == 1
        grouped = [] if self.local else [[params[i] for i in members] for members in layout]
        self.buckets = [
            _Bucket(k, ps, flat) for k, (ps, flat) in enumerate(zip(grouped, _bucket_storage(engine, grouped)))
        ]
        if overlap is None:  # a spare core per rank for the engine's thread? (collective)
            overlap = self.local or engine.cores_per_rank() > torch.get_num_threads()
        #: whether CPU buckets are summed by the engine's thread during backward (see ``overlap``)
        self.overlap = bool(overlap)
        # CPU buckets reduced on the calling thread: all of them without overlap (in the hooks);
        # with overlap only the last, by synchronize(); the hooks launch the others
        self._here = [
            b.params[0].device.type == "cpu" and (not self.overlap or b is self.buckets[-1]) for b in self.buckets
        ]
        self._hook_launches = len(self.buckets) - int(self.overlap and bool(self.buckets) and self._here[-1])
        self.broadcast_state()

        self._sync = True  # False inside no_sync()
        self._next = 0  # the next bucket to launch
        self._handles: list[Handle[torch.Tensor]] = []  # handles of the launched buckets, in launch order
        self._hooks: list[RemovableHandle] = []
        for bucket in self.buckets:
            for p, view in zip(bucket.params, bucket.views):
                self._hooks.append(
                    p.register_post_accumulate_grad_hook(
                        lambda p, bucket=bucket, view=view: self._grad_ready(bucket, p, view)
                    )
                )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    # -- start-up ---------------------------------------------------------------------------
    def _check_same_on_every_rank(self, layout: list[list[int]]) -> None:
        """Compare a digest of the model's tensors and the buckets with rank 0's; raise on every
        rank if any rank differs (two small collectives)."""
        described = [(tuple(t.shape), str(t.dtype)) for t in (*self.module.parameters(), *self.module.buffers())]
        text = repr((described, layout, str(self.wire_dtype)))
        mine = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")
        root = torch.tensor([mine], dtype=torch.int64)
        self.engine.broadcast_(root, root=0)
        differs = torch.zeros(self.engine.size, dtype=torch.int64)
        differs[self.engine.rank] = int(root.item() != mine)
        self.engine.allreduce_(differs, op="sum")
        if differs.any():
            ranks = ", ".join(str(r) for r in differs.nonzero().flatten().tolist())
            raise TwinError(
                f"DataParallel: the model on rank(s) {ranks} differs from rank 0's "
                f"(parameter or buffer shapes or dtypes, bucket cap or wire dtype); "
                f"every rank must build the same model with the same settings"
            )

    @torch.no_grad()
    def broadcast_state(self) -> None:
        """Overwrite every parameter and buffer with rank 0's (collective).

        Called at construction; call again to re-align buffers that ranks update on their own
        (e.g. batch-norm running statistics) before validation or a checkpoint.
        """
        for t in (*self.module.parameters(), *self.module.buffers()):
            self.engine.broadcast_(t.detach(), root=0)

    # -- during backward --------------------------------------------------------------------
    def _grad_ready(self, bucket: _Bucket, p: nn.Parameter, view: torch.Tensor) -> None:
        """Hook: ``p``'s gradient is accumulated; move it into its bucket view (unless it is
        there already) and launch the buckets that are complete."""
        if not self._sync:
            return
        if bucket.index < self._next or bucket.missing == 0:
            raise TwinError(
                "DataParallel: a gradient arrived twice in one step (backward ran again "
                "before synchronize()); use no_sync() for gradient accumulation"
            )
        if bucket.missing == len(bucket.params):
            bucket.first_ready_us = now_us()
        _as_view(p, view)
        bucket.missing -= 1
        while self._next < self._hook_launches and self.buckets[self._next].missing == 0:
            self._launch(self.buckets[self._next])

    def _launch(self, bucket: _Bucket) -> None:
        """Hand ``bucket`` to the engine's thread, or reduce it on this thread now (see ``overlap``)."""
        for p, view in zip(bucket.params, bucket.views):  # gradients that did not arrive, if any
            _as_view(p, view)
        if not bucket.first_ready_us:
            bucket.first_ready_us = now_us()
        assert bucket.flat is not None, "DataParallel.close() was called"
        reduce = self.engine.allreduce_here_ if self._here[bucket.index] else self.engine.allreduce_async_
        self._handles.append(reduce(bucket.flat, op="avg", wire_dtype=self.wire_dtype, name=f"bucket{bucket.index}"))
        self._next += 1

    # -- before the optimizer step ----------------------------------------------------------
    def synchronize(self) -> float:
        """Finish this step's gradient all-reduce; call after backward, before ``optimizer.step()``.

        Launches the buckets not launched yet (in order; a gradient that did not arrive
        contributes its current ``.grad``, zeros if ``None``; CPU buckets without ``overlap``,
        and with it the last one, are reduced on this thread), waits for them, and resets for
        the next step. Collective.

        Returns
        -------
        float
            The seconds spent here (waiting for communication that backward did not hide).
        """
        if not self._sync:
            raise TwinError(
                "DataParallel.synchronize() inside no_sync(): the gradients would not be "
                "averaged; call it after the first backward outside no_sync()"
            )
        start = now_us()
        while self._next < self._hook_launches:
            self._launch(self.buckets[self._next])
        if self._next < len(self.buckets):  # with overlap: the last CPU bucket, here
            for handle in self._handles:  # an empty queue: the engine runs it on this thread
                handle.wait()
            self._launch(self.buckets[-1])
        for bucket, handle in zip(self.buckets, self._handles):
            handle.wait()
            if self.timeline is not None:
                self.timeline.bucket(self.steps, bucket.index, bucket.nbytes, bucket.first_ready_us, handle.timings())
        end = now_us()
        if self.timeline is not None:
            self.timeline.span("optimizer wait", "synchronize", start, end, step=self.steps)
        for bucket in self.buckets:
            bucket.reset()
        self._next, self._handles = 0, []
        self.steps += 1
        return (end - start) / 1e6

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally: backward inside this context communicates nothing.

        The next backward outside it (then :meth:`synchronize`) averages the accumulated
        gradients. Entering it while a synced step is in progress (a backward since the last
        :meth:`synchronize`) raises :class:`TwinError`.
        """
        if self._next or any(b.missing < len(b.params) for b in self.buckets):
            raise TwinError("DataParallel.no_sync() entered after a synced backward; call synchronize() first")
        outer, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = outer

    def close(self) -> None:
        """Remove the hooks, write the timeline (if any) and close the engine if this object
        created it. The wrapped module stays usable on its own."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for bucket in self.buckets:  # gradients leave the engine's memory, which close() frees
            for p, view in zip(bucket.params, bucket.views):
                if p.grad is not None and p.grad.data_ptr() == view.data_ptr():
                    p.grad = view.clone()
            bucket.flat, bucket.views = None, []
        if self.timeline is not None:
            self.timeline.write()
        if self._owns_engine:
            self.engine.close()
