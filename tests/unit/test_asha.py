"""ASHA as exact scenarios: given these reports in this order, these decisions (with the values
each compared): promotion at a report, promotion of a paused trial when more results arrive,
ties, minimise vs maximise, NaN, a failed trial, a requeued trial, the end of the budget."""

from __future__ import annotations

import math

import pytest

from twinhpc.tune.asha import ASHA, Step, TuneError, rungs


def brief(scheduler: ASHA, since: int = 0) -> list[tuple]:
    """``(trial, rung, action, rank, reports, keep)`` of the decisions from ``since`` on."""
    return [(d.trial, d.rung, d.action, d.rank, d.reports, d.keep) for d in scheduler.decisions[since:]]


def statuses(scheduler: ASHA) -> list[str]:
    return [t.status for t in scheduler.trials]


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1, 3, 9), (1, 3, 9)),
        ((1, 3, 10), (1, 3, 9, 10)),
        ((1, 3, 27), (1, 3, 9, 27)),
        ((2, 2, 16), (2, 4, 8, 16)),
        ((10, 3, 10), (10,)),
        ((1, 4, 3), (1, 3)),
    ],
)
def test_rungs_are_min_times_eta_to_the_k_then_max(args, expected):
    assert rungs(*args) == expected


def test_rungs_reject_an_eta_below_two_and_min_above_max():
    with pytest.raises(ValueError):
        rungs(1, 1, 9)
    with pytest.raises(ValueError):
        rungs(5, 3, 4)


def test_the_asynchronous_rule_of_li_et_al_maximising():
    """η = 3, rungs 1/3/9 epochs, 5 trials, 3 workers, larger is better."""
    a = ASHA((1, 3, 9), eta=3, direction="max", budget=5)
    assert a.next(3) == [Step(0, 0, 1, 0), Step(1, 0, 1, 0), Step(2, 0, 1, 0)]
    assert brief(a) == [(0, 0, "start", 0, 0, 0), (1, 0, "start", 0, 0, 0), (2, 0, "start", 0, 0, 0)]

    # fewer than η reports at a rung: ⌊n/η⌋ = 0 go on, so the first two pause
    assert a.report(0, 0, 0.50).action == "pause"
    d = a.report(1, 0, 0.70)
    assert (d.action, d.rank, d.reports, d.keep, math.isnan(d.cut)) == ("pause", 1, 2, 0, True)
    # the third: ⌊3/3⌋ = 1 goes on; trial 1 (0.70) is it, so trial 2 (0.60, rank 2) pauses ...
    d = a.report(2, 0, 0.60)
    assert (d.action, d.metric, d.rank, d.reports, d.keep, d.cut) == ("pause", 0.60, 2, 3, 1, 0.70)
    assert statuses(a) == ["paused", "paused", "paused"]
    # ... and paused trial 1 is now promotable: a free worker takes it before a new trial
    assert a.promotable() == [(1, 0)]
    seen = len(a.decisions)
    assert a.next(3) == [Step(1, 1, 3, 1), Step(3, 0, 1, 0), Step(4, 0, 1, 0)]
    assert brief(a, seen) == [(1, 0, "promote", 1, 3, 1), (3, 0, "start", 0, 0, 0), (4, 0, "start", 0, 0, 0)]
    assert a.decisions[seen].cut == 0.70 and a.decisions[seen].note.startswith("paused, now rank 1")

    # trial 3 reports the best value: in the top ⌊4/3⌋ = 1 at once, promoted at its report
    seen = len(a.decisions)
    d = a.report(3, 0, 0.90)
    assert (d.action, d.rank, d.reports, d.keep, d.cut) == ("promote", 1, 4, 1, 0.90)
    assert statuses(a)[3] == "queued" and a.queue == [3]
    # trial 4: ⌊5/3⌋ = 1, it ranks 4th: paused; nobody new is promotable (trial 1 was already)
    assert a.report(4, 0, 0.55).action == "pause"
    assert a.promotable() == []
    # the promoted trial resumes from its rung-0 checkpoint (epoch 1) up to rung 1 (epoch 3)
    assert a.next(2) == [Step(3, 1, 3, 1)]  # the budget (5) is spent: no new trial
    # at rung 1: the first two reports pause (⌊2/3⌋ = 0)
    assert a.report(1, 1, 0.80).action == "pause"
    assert a.report(3, 1, 0.95).action == "pause"
    assert brief(a, seen)[:4] == [
        (3, 0, "promote", 1, 4, 1),
        (4, 0, "pause", 4, 5, 1),
        (1, 1, "pause", 1, 1, 0),
        (3, 1, "pause", 1, 2, 0),
    ]
    # nothing runs, nothing is promotable, the budget is spent: the paused trials are stopped,
    # each with its rank at the rung it reached
    assert a.finished
    assert statuses(a) == ["stopped"] * 5
    assert brief(a, seen + 4) == [
        (0, 0, "stop", 5, 5, 1),
        (1, 1, "stop", 2, 2, 0),
        (2, 0, "stop", 3, 5, 1),
        (3, 1, "stop", 1, 2, 0),
        (4, 0, "stop", 4, 5, 1),
    ]
    assert a.next(3) == []


def test_a_trial_reaching_the_last_rung_completes():
    a = ASHA((1, 2), eta=2, direction="min", budget=2)
    a.next(2)
    assert a.report(0, 0, 0.3).action == "pause"  # ⌊1/2⌋ = 0
    assert a.report(1, 0, 0.2).action == "promote"  # ⌊2/2⌋ = 1 and 0.2 < 0.3
    assert a.next(1) == [Step(1, 1, 2, 1)]
    d = a.report(1, 1, 0.1)
    assert (d.action, d.rank, d.reports) == ("complete", 1, 1)
    assert statuses(a) == ["stopped", "completed"] and a.finished
    assert a.decisions[-1].action == "stop" and a.decisions[-1].trial == 0


@pytest.mark.parametrize(
    "direction, promoted",
    [("min", 1), ("max", 0)],
)
def test_minimise_and_maximise_promote_opposite_trials(direction, promoted):
    a = ASHA((1, 3), eta=2, direction=direction, budget=2)
    a.next(2)
    a.report(0, 0, 0.9)
    d = a.report(1, 0, 0.1)
    assert a.promotable() == ([] if promoted == 1 else [(0, 0)])
    assert d.action == ("promote" if promoted == 1 else "pause")
    assert d.cut == (0.1 if direction == "min" else 0.9)


def test_ties_go_to_the_earlier_report():
    a = ASHA((1, 3), eta=3, direction="max", budget=3)
    a.next(3)
    for t in (2, 0, 1):  # reports arrive in this order, all equal
        a.report(t, 0, 0.5)
    assert [r.trial for r in a.at_rung(0)] == [2, 0, 1]
    assert a.promotable() == [(2, 0)]  # the first to report
    assert [d.rank for d in a.decisions[3:]] == [1, 2, 3]


@pytest.mark.parametrize("direction", ["min", "max"])
def test_a_nan_metric_ranks_last_in_either_direction(direction):
    a = ASHA((1, 3), eta=2, direction=direction, budget=2)
    a.next(2)
    a.report(0, 0, math.nan)
    d = a.report(1, 0, 5.0)
    assert d.action == "promote" and d.rank == 1
    assert [r.trial for r in a.at_rung(0)] == [1, 0]


def test_a_failed_trial_frees_its_worker_and_its_reports_still_count():
    a = ASHA((1, 3, 9), eta=2, direction="min", budget=3)
    a.next(2)
    a.report(0, 0, 0.2)  # pause (⌊1/2⌋ = 0)
    a.report(1, 0, 0.1)  # promote: rank 1 of 2
    assert a.next(2) == [Step(1, 1, 3, 1), Step(2, 0, 1, 0)]
    d = a.fail(1, "exit status 1")
    assert (d.trial, d.rung, d.action, d.note) == (1, 1, "fail", "exit status 1")
    assert statuses(a) == ["paused", "failed", "running"]
    # trial 1's rung-0 report (the best) still counts: trial 2 at 0.15 ranks 2nd of 3, ⌊3/2⌋ = 1
    d = a.report(2, 0, 0.15)
    assert (d.action, d.rank, d.reports, d.keep, d.cut) == ("pause", 2, 3, 1, 0.1)
    # no report can come any more: the budget (3, the failed trial included) is spent
    assert a.finished and statuses(a) == ["stopped", "failed", "stopped"]
    with pytest.raises(TuneError, match="trial 1 failed but is failed"):
        a.fail(1, "again")


def test_an_early_stopped_trial_completes_at_its_rung_and_its_report_counts_for_the_others():
    """η = 2, rungs 1/3/9, minimising: trial 1, promoted to rung 1, is ended by early stopping at
    epoch 2; it completes at rung 1, and trial 2 is ranked against its report there."""
    a = ASHA((1, 3, 9), eta=2, direction="min", budget=3)
    a.next(2)
    a.report(0, 0, 0.2)  # pause (⌊1/2⌋ = 0)
    a.report(1, 0, 0.1)  # promote: rank 1 of 2
    assert a.next(2) == [Step(1, 1, 3, 1), Step(2, 0, 1, 0)]
    d = a.report(1, 1, 0.12, early_stopped=2)
    assert (d.trial, d.rung, d.action, d.metric, d.rank, d.reports) == (1, 1, "complete", 0.12, 1, 1)
    assert d.note == "early stopping ended it at epoch 2: completed at rung 1 (3 epochs), rank 1 of 1"
    assert statuses(a) == ["paused", "completed", "running"] and a.trials[1].reached == 1
    d = a.report(2, 0, 0.05)  # rank 1 of 3 at rung 0, ⌊3/2⌋ = 1: promoted
    assert (d.action, d.rank, d.reports, d.keep) == ("promote", 1, 3, 1)
    assert a.next(1) == [Step(2, 1, 3, 1)]
    # at rung 1 trial 1's report (0.12) ranks first: trial 2 (0.3) is 2nd of 2, ⌊2/2⌋ = 1 go on
    d = a.report(2, 1, 0.3)
    assert (d.action, d.rank, d.reports, d.keep, d.cut) == ("pause", 2, 2, 1, 0.12)
    # trial 1 is completed, not paused: nothing is promotable, and the budget is spent
    assert a.finished and statuses(a) == ["stopped", "completed", "stopped"]
    assert [x.action for x in a.decisions[-2:]] == ["stop", "stop"]


def test_an_early_stopped_trial_at_the_first_rung_takes_a_top_place_and_is_never_promoted():
    """η = 3, maximising: trial 0 is ended by early stopping in its first segment (epoch 1) with
    the best metric; it holds the top ⌊3/3⌋ = 1 place at rung 0, so no trial goes on."""
    a = ASHA((1, 3, 9), eta=3, direction="max", budget=3)
    a.next(3)
    d = a.report(0, 0, 0.9, early_stopped=1)
    assert (d.action, d.rank, d.note) == (
        "complete",
        1,
        "early stopping ended it at epoch 1: completed at rung 0 (1 epoch), rank 1 of 1",
    )
    assert a.report(1, 0, 0.5).action == "pause"
    d = a.report(2, 0, 0.6)
    assert (d.action, d.rank, d.reports, d.keep, d.cut) == ("pause", 2, 3, 1, 0.9)
    assert a.promotable() == [] and a.finished
    assert statuses(a) == ["completed", "stopped", "stopped"]


def test_a_requeued_trial_runs_its_segment_again_first():
    a = ASHA((1, 3), eta=2, direction="min", budget=4)
    a.next(2)
    d = a.requeue(1, "job 17 is gone (preempted)")
    assert (d.action, d.rung, d.note) == ("requeue", 0, "job 17 is gone (preempted)")
    assert statuses(a) == ["running", "queued"] and a.queue == [1]
    assert a.next(2) == [Step(1, 0, 1, 0), Step(2, 0, 1, 0)]
    assert a.report(1, 0, 1.0).action == "pause"
    with pytest.raises(TuneError, match="cannot be requeued: it is paused"):
        a.requeue(1, "x")


def test_a_report_that_cannot_be_is_refused():
    a = ASHA((1, 3), eta=2, direction="min", budget=2)
    a.next(1)
    with pytest.raises(TuneError, match="reported at rung 1, but its segment ends at rung 0"):
        a.report(0, 1, 0.5)
    a.report(0, 0, 0.5)
    with pytest.raises(TuneError, match="trial 0 reported at rung 0 but is paused"):
        a.report(0, 0, 0.5)
    with pytest.raises(TuneError, match="no trial 7"):
        a.report(7, 0, 0.5)


def test_concurrency_is_the_callers_free_workers_and_the_budget_ends_new_trials():
    a = ASHA((2, 4), eta=2, direction="min", budget=3)
    assert [s.trial for s in a.next(1)] == [0]
    assert [s.trial for s in a.next(5)] == [1, 2]  # the budget: 3 trials
    assert a.next(5) == [] and not a.finished


def test_one_rung_is_full_budget_trials():
    a = ASHA((9,), eta=3, direction="max", budget=2)
    assert a.next(2) == [Step(0, 0, 9, 0), Step(1, 0, 9, 0)]
    assert a.report(1, 0, 0.8).action == "complete"
    assert a.report(0, 0, 0.9).action == "complete"
    assert a.finished and [d.rank for d in a.decisions[2:]] == [1, 1]


def test_the_decision_log_says_what_was_compared():
    a = ASHA((1, 3, 9), eta=3, direction="max", budget=3)
    a.next(3)
    for t, m in ((0, 0.5), (1, 0.7), (2, 0.6)):
        a.report(t, 0, m)
    notes = [d.note for d in a.decisions]
    assert notes[:3] == ["new trial 1 of 3", "new trial 2 of 3", "new trial 3 of 3"]
    assert notes[3] == "rank 1, not in the top 0 of 1 at rung 0 (1 epoch): paused"
    assert notes[5] == "rank 2, not in the top 1 of 3 at rung 0 (1 epoch), cut 0.7 (max): paused"
    a.next(1)
    assert a.decisions[-1].note == (
        "paused, now rank 1, in the top 1 of 3 at rung 0 (1 epoch), cut 0.7 (max): continues to 3 epochs"
    )
