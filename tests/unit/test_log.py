"""Progress off a terminal (a batch job's output): a line every ``interval`` seconds with the
step, samples/s and ETAs, read from a fake clock; and the console logging a program gets."""

from __future__ import annotations

import io
import logging

import pytest

from twinhpc.log import LOGGER, Progress, duration, ensure_logging


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_with_step_rate_and_etas():
    clock, out = FakeClock(), io.StringIO()  # StringIO: not a terminal
    bar = Progress(100, "epoch 2/5", stream=out, interval=30, per_unit=64, after=300, clock=clock)
    for _ in range(100):
        clock.now += 1.0  # one step per second: 64 samples/s
        bar.update()
    lines = out.getvalue().splitlines()
    # at 30, 60, 90 s: 70, 40, 10 steps left of this epoch, 300 more after it
    assert lines == [
        "epoch 2/5: step 30/100 (30%) - 64 samples/s - ETA 1m10s, run 6m10s",
        "epoch 2/5: step 60/100 (60%) - 64 samples/s - ETA 40s, run 5m40s",
        "epoch 2/5: step 90/100 (90%) - 64 samples/s - ETA 10s, run 5m10s",
    ]


def test_a_resumed_epoch_counts_its_rate_from_where_it_started():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(100, "epoch 1/1", stream=out, interval=10, done=50, per_unit=10, clock=clock)
    for _ in range(7):
        clock.now += 2.0  # 1 step per second since the bar started at step 50: 10 samples/s
        bar.update(2)
    assert out.getvalue().splitlines() == ["epoch 1/1: step 60/100 (60%) - 10 samples/s - ETA 40s"]


def test_lines_go_to_a_logger_when_given_one(caplog):
    clock = FakeClock()
    bar = Progress(10, "epoch 1/1", stream=io.StringIO(), interval=5, log=logging.getLogger(LOGGER), clock=clock)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(10):
            clock.now += 1
            bar.update()
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/1: step 5/10 (50%) - ETA 5s",
        "epoch 1/1: step 10/10 (100%) - ETA 0s",
    ]


def test_disabled_and_decile_modes():
    out = io.StringIO()
    quiet = Progress(10, "x", enabled=False, stream=out, interval=0.001)
    for _ in range(10):
        quiet.update()
    assert out.getvalue() == ""
    deciles = Progress(20, "ingest", stream=out)  # no interval: the first update, then a line per 10 %
    for _ in range(20):
        deciles.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("ingest: 1/20 (5%)") and lines[-1].startswith("ingest: 20/20")


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (7380, "2h03m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_ensure_logging_only_when_the_program_configured_none(monkeypatch):
    twin, root = logging.getLogger(LOGGER), logging.getLogger()
    monkeypatch.setattr(twin, "handlers", [])
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])  # the program's own
    assert ensure_logging(0) is False and twin.handlers == []
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(twin, "propagate", twin.propagate)
    monkeypatch.setattr(twin, "level", twin.level)
    assert ensure_logging(0) is True
    (console,) = twin.handlers
    assert console.level == logging.INFO and console.stream is not None
