"""Which gradients travel together: the bucket assignment policy of data parallelism.

A *bucket* is a group of gradients that is packed into one buffer and all-reduced as one
message. Fewer, larger messages amortise the per-message latency; smaller buckets start
earlier during backward and so overlap more of it. The default cap between the two,
:data:`twinhpc.config.defaults.BUCKET_CAP_MB` (also the job file's ``train.bucket_cap_mb``), was
chosen with ``benchmarks/dp_overhead.py`` (the measurements are in ``docs/data-parallel.md``).

Note:
    The policy is PyTorch DDP's, kept in plain Python and free of MPI so that it can be read and
    tested alone:

    - Parameters are taken in *reverse registration order*. Backward produces gradients roughly
      from the last layer to the first, so the first bucket fills first and its all-reduce starts
      while backward is still computing the earlier layers.
    - A bucket holds one dtype and one device only (the engine packs it into one flat buffer).
      Each (dtype, device) has its own open bucket; a bucket is closed when adding the next
      tensor would exceed the cap. A tensor larger than the cap gets a bucket of its own.
    - Buckets are numbered by their first (i.e. latest-registered) member, so the numbering is
      also the order in which backward tends to complete them.

    The assignment is a pure function of the tensors' sizes, dtypes and devices, so every rank
    computes the same buckets from the same model; :class:`~twinhpc.comm.ddp.DataParallel`
    still checks that once across ranks, because a model built differently on one rank would
    otherwise pair the wrong buffers in the all-reduce.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def assign_buckets(nbytes: Sequence[int], cap_bytes: int, kinds: Sequence[Hashable] | None = None) -> list[list[int]]:
    """Group tensors into buckets of at most ``cap_bytes`` each, in reverse order.

    Parameters
    ----------
    nbytes : the size in bytes of each tensor, in registration order.
    cap_bytes : the most bytes a bucket may hold (a larger tensor gets a bucket of its own);
        must be positive.
    kinds : one hashable key per tensor (e.g. ``(dtype, device)``); only tensors of the same
        kind share a bucket. ``None``: all tensors are of one kind.

    Returns
    -------
    list of list of int
        The buckets, each a list of tensor indices (positions in ``nbytes``) in decreasing
        order; buckets ordered by their first index, decreasing. Every index appears exactly
        once. The result depends only on the arguments.

    Raises
    ------
    ValueError
        If ``cap_bytes`` is not positive or ``kinds`` has a different length than ``nbytes``.
    """
    if cap_bytes <= 0:
        raise ValueError(f"bucket cap must be positive, got {cap_bytes} bytes")
    if kinds is None:
        kinds = [None] * len(nbytes)
    if len(kinds) != len(nbytes):
        raise ValueError(f"{len(kinds)} kinds for {len(nbytes)} tensors")

    buckets: list[list[int]] = []
    members: dict[Hashable, list[int]] = {}  # kind -> its open bucket's tensor indices
    size: dict[Hashable, int] = {}  # kind -> its open bucket's bytes
    for i in reversed(range(len(nbytes))):
        kind = kinds[i]
        if kind in members and size[kind] + nbytes[i] > cap_bytes:
            buckets.append(members.pop(kind))
        if kind not in members:
            members[kind], size[kind] = [], 0
        members[kind].append(i)
        size[kind] += nbytes[i]
    buckets.extend(members.values())
    return sorted(buckets, key=lambda bucket: -bucket[0])
