"""The ``debug`` executor: segments run in the driver's process, one rank, one at a time.

:meth:`~DebugExecutor.launch` only queues a segment (``pending``); each
:meth:`~DebugExecutor.states` call trains the oldest queued segment it is asked about (in this
process: ``train(TRIAL_JOB, OUT, resume=True, until_epoch=E)``) and answers with its outcome. So
a sweep's events come in a fixed order, which makes it the executor of tests and of debugging
a trial with a debugger. A segment records its job id in ``OUT/segment.json`` as it starts
(:mod:`twinhpc.tune.segments`). Each segment's log (the ``twinhpc`` logger's lines) goes to
``OUT/logs/debug-segments.log``; its end state to ``SWEEP/executor/debug/<job id>.json``, which
a later driver reads. A segment queued or in progress when the driver ended is ``gone``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

from ...config import Job, load_job
from ...errors import TwinError
from ...io.atomic import replace_durably
from ..segments import write_segment_record
from ..sweep import TrialWork
from .base import Launched, SegmentState, TrialExecutor, executor_folder, write_trial_job


class DebugExecutor(TrialExecutor):
    """Trial segments in this process (module docstring)."""

    name = "debug"
    default_poll = 0.0

    def __init__(self, directory: Path, job: Job, concurrent: int, **options: object) -> None:
        super().__init__(directory, job, concurrent)
        if options:
            raise TwinError(f"--executor debug takes no options, got {', '.join(options)}")
        self.folder = executor_folder(self.directory, "debug")
        self.queued: dict[str, TrialWork] = {}

    def launch(self, works: Sequence[TrialWork]) -> list[Launched]:
        out = []
        for w in works:
            jid = f"debug-{w.trial:04d}-r{w.rung}-{uuid.uuid4().hex[:8]}"
            self.queued[jid] = w
            out.append(Launched(w.trial, jid, str(Path(w.out) / "logs" / "debug-segments.log"), node="in-process"))
        return out

    def states(self, job_ids: Sequence[str]) -> dict[str, SegmentState]:
        first = next((j for j in job_ids if j in self.queued), None)
        if first is not None:
            self._run(first, self.queued.pop(first))
        out = {}
        for jid in job_ids:
            if jid in self.queued:
                out[jid] = SegmentState(jid, "pending", "in-process")
                continue
            try:
                saved = json.loads((self.folder / f"{jid}.json").read_text())
            except (OSError, ValueError):
                out[jid] = SegmentState(jid, "gone", error="not run to its end by a debug executor (the driver ended)")
                continue
            out[jid] = SegmentState(jid, saved["state"], "in-process", saved.get("error", ""), saved.get("log", ""))
        return out

    def _run(self, jid: str, work: TrialWork) -> None:
        from ...train.loop import train

        log = Path(work.out) / "logs" / "debug-segments.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("twinhpc")
        logger.addHandler(handler)
        state, error = "done", ""
        try:
            write_segment_record(work.out, jid, work.trial, work.rung, work.epochs, by="segment")
            job = load_job(write_trial_job(work))
            result = train(job, work.out, resume=True, until_epoch=work.epochs, progress=False)
            if result.status == "preempted":  # a signal stopped it after a checkpoint: run it again
                return
        except TwinError as e:
            state, error = "failed", str(e)
            logger.error("twinhpc train: error: %s", e)
        except Exception as e:  # a bug or a runtime error of the model: the trial fails, the sweep goes on
            state, error = "failed", f"{type(e).__name__}: {e}"
            logger.exception("segment of trial %d failed", work.trial)
        finally:
            logger.removeHandler(handler)
            handler.close()
        path = self.folder / f"{jid}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"state": state, "error": error, "log": str(log), "trial": work.trial}))
        replace_durably(tmp, path)


EXECUTOR = DebugExecutor
