"""Checkpoints ``RUN/ckpt/step-<N>.h5``: model, optimizer, loader and RNG state in HDF5.

Layout (format ``twinhpc-checkpoint`` version 1)::

    /                            attrs: format, version, step, epoch, loader (JSON), extra (JSON)
    /model/<state_dict key>      one dataset per tensor; attr torch_dtype ("torch.float32" ...)
    /optimizer                   attrs: class ("AdamW"), param_groups (JSON)
    /optimizer/state/<i>/<key>   tensors of parameter i's state; attr values (JSON) holds the
                                 entries that are not tensors
    /rng/<rank>/torch            uint8: torch's CPU generator state of that rank
    /rng/<rank>/cuda/<device>    uint8: CUDA generator states, when CUDA was in use
    /rng/<rank>                  attrs: numpy (JSON: numpy's global bit_generator state),
                                 python (JSON: random.getstate()), generators (JSON: the
                                 bit_generator.state of named numpy Generators)
    /results/<group>/<name>      optional: the run's records up to this step (results.h5's
                                 /metrics, /timing, /steps), so that the checkpoint alone is
                                 the run's commit point; root attr config (job JSON), optional

A run commits by renaming a finished checkpoint into place: ``results.h5`` is written after it
from the same records and is rebuilt from the newest checkpoint on resume, so a crash between
the two loses nothing. Checkpoints written without ``/results`` (older ones) resume from
``results.h5`` cut back to their step.

Tensors keep their shapes and dtypes exactly. A dtype numpy lacks (bfloat16, the float8 types)
is stored as unsigned integers of the same width holding its bits (bfloat16 → uint16), and the
``torch_dtype`` attribute says what they are.

Note:
    Nothing here deserialises Python objects: PyTorch's own checkpoint files are streams of
    Python objects, and reading one can run code from it, while checkpoints travel between
    users and clusters. HDF5 datasets and JSON attributes hold only data, and a reader checks
    every name, shape and dtype before it touches the model.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from ..errors import TwinError
from . import atomic

log = logging.getLogger("twinhpc")

FORMAT_NAME = "twinhpc-checkpoint"
FORMAT_VERSION = 1
CKPT_DIR = "ckpt"
_NAME_RE = re.compile(r"^step-(\d+)\.h5$")
#: bytes per element → (torch and numpy integer dtypes viewing the bits in memory, dtype on disk)
_BITS = {
    1: (torch.uint8, np.uint8, np.uint8),
    2: (torch.int16, np.int16, np.uint16),
    4: (torch.int32, np.int32, np.uint32),
    8: (torch.int64, np.int64, np.uint64),
}


class CheckpointError(TwinError):
    """A checkpoint is missing, damaged, or does not fit the model or optimizer it is loaded into."""


# -- names ------------------------------------------------------------------------------------
def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``RUN/ckpt/step-<step>.h5``."""
    return Path(run_dir) / CKPT_DIR / f"step-{step}.h5"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint of a run, oldest step first (none: ``[]``)."""
    directory = Path(run_dir) / CKPT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m[1]), directory / name) for name in os.listdir(directory) if (m := _NAME_RE.match(name))]
    return sorted(found)


def latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the highest step in ``RUN/ckpt``, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def best_step(path: str | os.PathLike[str]) -> int | None:
    """The step of the run's best checkpoint as the checkpoint ``path`` records it
    (``extra.loop.best_step``), or ``None``."""
    loop = read_info(path)["extra"].get("loop") or {}
    step = loop.get("best_step")
    return None if step is None else int(step)


def select_checkpoint(run_dir: str | os.PathLike[str], which: str = "last") -> tuple[Path, str]:
    """The checkpoint ``which`` (``"last"``: the newest; ``"best"``: the best one the newest
    records) of a run, and a description: ``"last, step 40"`` / ``"best, step 24"``.

    Raises
    ------
    CheckpointError
        Naming the run: no checkpoint, or no best one kept (``train.keep_best`` off).
    """
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    newest = latest(run_dir)
    if newest is None:
        raise CheckpointError(
            f"{run_dir}: no checkpoint in {Path(run_dir) / CKPT_DIR} (is it the run directory of `twinhpc train`?)"
        )
    step = int(_NAME_RE.match(newest.name)[1])  # type: ignore[index]
    if which == "last":
        return newest, f"last, step {step}"
    best = best_step(newest)
    path = checkpoint_path(run_dir, best) if best is not None else None
    if path is None or not path.is_file():
        raise CheckpointError(
            f"{run_dir}: no best checkpoint kept (train.keep_best was off"
            + (f", or ckpt/step-{best}.h5 was deleted)" if best is not None else ")")
            + "; use --checkpoint last"
        )
    return path, f"best, step {best}"


# -- tensors ----------------------------------------------------------------------------------
def _write_tensor(group: Any, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    try:
        data = t.numpy()
    except TypeError:  # no numpy dtype (bfloat16, float8 ...): store the bits
        as_torch, _, stored = _BITS[t.element_size()]
        data = t.view(as_torch).numpy().view(stored)
    ds = group.create_dataset(name, data=data)
    ds.attrs["torch_dtype"] = str(t.dtype)


def _read_tensor(ds: Any) -> torch.Tensor:
    """The tensor of a dataset written by :func:`_write_tensor`; ValueError if it is inconsistent."""
    name = ds.attrs["torch_dtype"]
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{ds.name}: unknown torch_dtype {name!r}")
    data = np.array(ds[()])
    if dtype.is_floating_point and data.dtype.kind == "u":  # stored as bits
        if dtype.itemsize != data.dtype.itemsize:
            raise ValueError(f"{ds.name}: {data.dtype} bits cannot hold {dtype}")
        return torch.from_numpy(data.view(_BITS[data.dtype.itemsize][1])).view(dtype)
    tensor = torch.from_numpy(data)
    if tensor.dtype != dtype:
        raise ValueError(f"{ds.name}: stored as {data.dtype} but marked {dtype}")
    return tensor


# -- RNG states -------------------------------------------------------------------------------
def _json(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, (np.ndarray, np.generic)) else _unjsonable(o))


def _unjsonable(o: Any) -> NoReturn:
    raise TypeError(f"cannot store {type(o).__name__} {o!r} in a checkpoint (JSON values only)")


def rng_state(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """This process's random-number state: torch (CPU, and CUDA when initialised), numpy's
    global generator, Python's ``random``, and the named numpy ``generators``.

    Under MPI every rank has its own state: gather one per rank and pass the list to
    :func:`save_checkpoint`.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().numpy(),
        "numpy": _json(np.random.get_state(legacy=False)),
        "python": _json(random.getstate()),
        "generators": _json({name: g.bit_generator.state for name, g in (generators or {}).items()}),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Restore a state from :func:`rng_state` (or a checkpoint).

    CUDA states are restored when this process has as many CUDA devices as the saved state;
    otherwise they are skipped with a warning (a GPU run resumed on a CPU). A named generator
    missing from ``state`` is a :class:`CheckpointError`.
    """
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(json.loads(state["numpy"]))
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([torch.from_numpy(np.asarray(s, np.uint8).copy()) for s in cuda])
        else:
            log.warning(
                "checkpoint holds %d CUDA generator state(s); this process has %s: not restored",
                len(cuda),
                torch.cuda.device_count() if torch.cuda.is_available() else "no CUDA",
            )
    saved = json.loads(state["generators"])
    for name, g in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(
                f"no state of numpy generator {name!r} in the checkpoint (it has {', '.join(saved) or 'none'})"
            )
        g.bit_generator.state = saved[name]


# -- writing ----------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loader: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep: int = 3,
    protect: Iterable[int] = (),
    config: str | None = None,
    results: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``RUN/ckpt/step-<step>.h5`` atomically, then prune old checkpoints; rank 0 only.

    Parameters
    ----------
    run_dir : the run directory.
    step, epoch : optimizer steps done, and the epoch the run is in (or about to start).
    model : its ``state_dict()`` (parameters and buffers) is saved.
    optimizer : its ``state_dict()`` is saved (any ``torch.optim`` optimizer whose param_groups
        hold JSON values: SGD, Adam, AdamW ...).
    loader : the loader's ``state_dict()`` (JSON values).
    rng : per-rank :func:`rng_state` dicts (index = rank), or one dict for rank 0; default:
        this process's state as rank 0.
    extra : any other JSON values (best metric, early-stopping counters, scheduler state ...).
    keep : checkpoints kept, this one included (the newest steps).
    protect : steps whose checkpoints are kept besides (the best one).
    config : the job as JSON, stored as the root attribute ``config``.
    results : the run's records up to this step: ``{"metrics": {name: array}, "timing": ...,
        "steps": {"step": ..., name: array}}`` (float64 arrays; ``steps/step`` int64).

    Returns
    -------
    Path
        The checkpoint written.

    Raises
    ------
    TypeError
        A value of ``loader``, ``extra`` or the optimizer's param_groups is not JSON.
    OSError
        The directory cannot be written. In every failure the previous checkpoints are intact
        and no file carries this checkpoint's name.

    Note:
        The file is written as ``.step-<N>.h5.tmp``, fsynced and renamed, so ``step-<N>.h5``
        is always complete: the rename is the commit. Checkpoints of *later* steps than this one
        are deleted too: they belong to a run that was continued from an earlier checkpoint, and
        :func:`latest` must not resume from them.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    final = checkpoint_path(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    states = [rng_state()] if rng is None else [rng] if isinstance(rng, Mapping) else list(rng)
    try:
        with atomic.hdf5_image(tmp) as f:
            f.attrs.update(
                {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "step": int(step),
                    "epoch": int(epoch),
                    "loader": _json(loader),
                    "extra": _json(extra or {}),
                }
            )
            if config is not None:
                f.attrs["config"] = config
            for group, columns in (results or {}).items():
                g = f.create_group(f"results/{group}")
                for name, values in columns.items():
                    g.create_dataset(name, data=np.asarray(values))
            g = f.create_group("model")
            for name, tensor in model.state_dict().items():
                _write_tensor(g, name, tensor)
            if optimizer is not None:
                _write_optimizer(f.create_group("optimizer"), optimizer)
            for rank, state in enumerate(states):
                _write_rng(f.create_group(f"rng/{rank}"), state)
        atomic.replace_durably(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    found = list_checkpoints(run_dir)
    later = [p for s, p in found if s > step]
    kept = set(protect)
    older = [p for s, p in found if s < step and s not in kept]
    for path in later + older[: max(0, len(older) - (keep - 1))]:
        atomic.remove_durably(path)
    return final


def _write_optimizer(group: Any, optimizer: torch.optim.Optimizer) -> None:
    sd = optimizer.state_dict()
    group.attrs["class"] = type(optimizer).__name__
    group.attrs["param_groups"] = _json(sd["param_groups"])
    state = group.create_group("state")
    for index, entries in sd["state"].items():
        g = state.create_group(str(index))
        values = {}
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                _write_tensor(g, k, v)
            else:
                values[k] = v
        g.attrs["values"] = _json(values)


def _write_rng(group: Any, state: Mapping[str, Any]) -> None:
    group.create_dataset("torch", data=np.asarray(state["torch"], dtype=np.uint8))
    for device, s in enumerate(state.get("cuda") or ()):
        group.create_dataset(f"cuda/{device}", data=np.asarray(s, dtype=np.uint8))
    for k in ("numpy", "python", "generators"):
        group.attrs[k] = state[k]


# -- reading ----------------------------------------------------------------------------------
def _info(f: Any) -> dict[str, Any]:
    """The root attributes of an open checkpoint, checked and decoded."""
    path = f.filename
    fmt = f.attrs.get("format")
    if fmt != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a twinhpc checkpoint (attribute 'format' is {fmt!r})")
    if f.attrs["version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {f.attrs['version']} is not supported (this twinhpc reads {FORMAT_VERSION})"
        )
    config = f.attrs.get("config")
    return {
        "step": int(f.attrs["step"]),
        "epoch": int(f.attrs["epoch"]),
        "loader": json.loads(f.attrs["loader"]),
        "extra": json.loads(f.attrs["extra"]),
        "config": None if config is None else str(config),
    }


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's step, epoch, loader state, extra and config (``None`` when it has none),
    without its tensors.

    Raises
    ------
    CheckpointError
        Naming the file: missing, not a checkpoint, damaged.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return _info(f)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({e})") from None


def _read(path: Path, rank: int) -> dict[str, Any]:
    """Everything a checkpoint holds, as plain values; ``OSError``/``KeyError``/``ValueError`` if
    the file is damaged."""
    import h5py

    with h5py.File(path, "r") as f:
        out = _info(f)
        out["model"] = {name: _read_tensor(ds) for name, ds in f["model"].items()}
        if "results" in f:
            out["results"] = {group: {name: ds[()] for name, ds in g.items()} for group, g in f["results"].items()}
        if "optimizer" in f:
            g = f["optimizer"]
            state = {}
            for index, entries in g["state"].items():
                state[int(index)] = {
                    **json.loads(entries.attrs["values"]),
                    **{k: _read_tensor(ds) for k, ds in entries.items()},
                }
            out["optimizer"] = {
                "class": g.attrs["class"],
                "state": state,
                "param_groups": json.loads(g.attrs["param_groups"]),
            }
        key = f"rng/{rank}"
        if key in f:
            g = f[key]
            out["rng"] = {
                "torch": g["torch"][()],
                "cuda": [g[f"cuda/{d}"][()] for d in sorted(g.get("cuda", {}), key=int)],
                **{k: g.attrs[k] for k in ("numpy", "python", "generators")},
            }
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    rank: int = 0,
    generators: Mapping[str, np.random.Generator] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` and ``optimizer`` (in place) and this rank's RNG states.

    Parameters
    ----------
    path : a ``step-<N>.h5`` file.
    model : receives the saved state_dict; names, shapes and dtypes must match exactly.
    optimizer : receives the saved optimizer state; must be of the same class over the same
        parameters.
    rank : whose RNG states to restore (this process's rank).
    generators : named numpy Generators to restore (saved through :func:`rng_state`).
    restore_rng : restore the RNG states (torch, CUDA, numpy, Python, ``generators``).

    Returns
    -------
    dict
        ``path``, ``step``, ``epoch``, ``loader`` (the loader state, or ``None``), ``extra``,
        ``config`` (the job JSON, or ``None``), ``results`` (the records, or ``None``), and
        ``rng_restored``: ``False`` when the checkpoint holds no state for ``rank`` (it was
        written by fewer ranks; a warning is logged and the RNGs are left as they are).

    Raises
    ------
    CheckpointError
        Naming the file: missing, not a checkpoint, damaged or truncated, or not fitting —
        naming the parameter that is missing, unexpected or of another shape or dtype, or the
        optimizer class or parameter groups that differ.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        saved = _read(path, rank)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({e})") from None
    if model is not None:
        _check_model(path, saved["model"], model)
        model.load_state_dict(saved["model"], strict=True)
    if optimizer is not None:
        _load_optimizer(path, saved.get("optimizer"), optimizer)
    rng_restored = False
    if restore_rng:
        if "rng" in saved:
            try:
                set_rng_state(saved["rng"], generators)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: {e}") from None
            rng_restored = True
        else:
            log.warning("%s: no random-number state for rank %d (written by fewer ranks); not restored", path, rank)
    return {
        "path": path,
        "step": saved["step"],
        "epoch": saved["epoch"],
        "loader": saved["loader"],
        "extra": saved["extra"],
        "config": saved["config"],
        "results": saved.get("results"),
        "rng_restored": rng_restored,
    }


def _check_model(path: Path, saved: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = model.state_dict()
    for name, want in expected.items():
        if name not in saved:
            raise CheckpointError(
                f"{path}: parameter {name!r} of the model is not in the checkpoint "
                f"(is it a checkpoint of another model or structure?)"
            )
        got = saved[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: parameter {name!r} is {got.dtype} {list(got.shape)} in the "
                f"checkpoint but {want.dtype} {list(want.shape)} in the model"
            )
    for name in saved:
        if name not in expected:
            raise CheckpointError(
                f"{path}: parameter {name!r} of the checkpoint is not in the model "
                f"(is it a checkpoint of another model or structure?)"
            )


def _load_optimizer(path: Path, saved: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer) -> None:
    if saved is None:
        raise CheckpointError(f"{path}: holds no optimizer state")
    if saved["class"] != type(optimizer).__name__:
        raise CheckpointError(f"{path}: optimizer state is {saved['class']}'s, not {type(optimizer).__name__}'s")
    current = optimizer.param_groups
    groups = saved["param_groups"]
    if len(groups) != len(current):
        raise CheckpointError(f"{path}: {len(groups)} optimizer parameter group(s), the optimizer has {len(current)}")
    for group, now in zip(groups, current):  # JSON made tuples (betas) lists; restore the type
        for k, v in group.items():
            if isinstance(now.get(k), tuple) and isinstance(v, list):
                group[k] = tuple(v)
    try:
        optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit the optimizer ({e})") from None
