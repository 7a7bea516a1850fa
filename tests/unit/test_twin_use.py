"""The parts of `twin rollout` and `twin monitor` that need no trained twin: scenario keys and
out-of-range warnings, the CSV and HDF5 stream readers' errors, the residual statistics and the
scoring of alarms against labels. The commands on a trained twin: tests/integration/test_twin_cli.py."""

from __future__ import annotations

import numpy as np
import pytest

from twinhpc.errors import TwinError
from twinhpc.io.stream import read_stream, read_stream_csv, write_stream, write_stream_csv
from twinhpc.twin.monitor import Detector, runs, score_alarms
from twinhpc.twin.scenario import apply_overrides, middle, out_of_range

TABLE = [
    {"name": "k", "unit": "W/(m K)", "low": 15.0, "high": 60.0},
    {"name": "h", "unit": "W/(m2 K)", "low": 5.0, "high": 40.0},
    {"name": "source0.x", "unit": "1 (fraction of the width)", "low": 0.2, "high": 0.8},
]


def test_scenario_defaults_overrides_and_unknown_key():
    v = apply_overrides(middle(TABLE), TABLE, ["scenario.k=20", "scenario.source0.x=0.3"])
    assert v.tolist() == [20.0, 22.5, 0.3]
    with pytest.raises(TwinError, match=r"unknown scenario key 'kk'; the scenario's keys are k, h, source0.x"):
        apply_overrides(middle(TABLE), TABLE, ["scenario.kk=3"])
    with pytest.raises(TwinError, match=r"expected scenario.KEY=VALUE"):
        apply_overrides(middle(TABLE), TABLE, ["k=3"])
    with pytest.raises(TwinError, match=r"scenario.h must be a number, got 'warm'"):
        apply_overrides(middle(TABLE), TABLE, ["scenario.h=warm"])


def test_out_of_range_names_the_key_and_by_how_much():
    assert out_of_range(np.array([60.0, 5.0, 0.5]), TABLE) == []
    (w1, w2) = out_of_range(np.array([69.0, 1.0, 0.5]), TABLE)
    assert "scenario.k = 69 lies 9 W/(m K) above the trained range [15, 60], 20% of the range's width" in w1
    assert "scenario.h = 1 lies 4 W/(m2 K) below the trained range [5, 40]" in w2


def _stream(n=30, k=3, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(n) * 5.0
    label = np.zeros(n, np.int8)
    label[10:15] = 1
    arrays = {
        "time": time,
        "sensors": (300 + rng.standard_normal((n, k))).astype(np.float32),
        "truth": np.full((n, k), 300, np.float32),
        "label": label,
        "label_sensor": np.where(label > 0, 1, -1).astype(np.int16),
        "label_fault": np.where(label > 0, 0, -1).astype(np.int16),
        "field": np.zeros((n, 4, 4), np.float32),
        "forcing": np.zeros((n - 1, 4, 4), np.float32),
        "params": np.zeros((n - 1, 2), np.float32),
    }
    faults = [{"kind": "drift", "sensor": 1, "start": 50.0, "end": 75.0, "magnitude": 0.01, "x": np.nan, "y": np.nan}]
    return arrays, faults


def test_csv_stream_round_trip_and_iso_timestamps(tmp_path):
    arrays, _ = _stream()
    write_stream_csv(tmp_path / "s.csv", arrays, ["s0", "s1", "s2"])
    got = read_stream_csv(tmp_path / "s.csv")
    np.testing.assert_allclose(got["sensors"], arrays["sensors"], atol=1e-6)
    np.testing.assert_array_equal(got["time"], arrays["time"])
    np.testing.assert_array_equal(got["label"], arrays["label"])
    (tmp_path / "iso.csv").write_text("time,s0\n2026-01-01T00:00:00,300.0\n2026-01-01T00:00:05,300.5\n")
    got = read_stream_csv(tmp_path / "iso.csv")
    assert got["time"].tolist() == [0.0, 5.0] and "label" not in got


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,s0,s2\n0,1,2\n", r"bad.csv: missing column\(s\) s1"),
        ("time,s0,s1,s2\n0,1,2,3\n5,1,,3\n", r"bad.csv: column 's1', row 3: '' is not a number"),
        ("time,s0,s1,s2\n0,1,2,3\n5,1,nan,3\n", r"bad.csv: column 's1', row 3: the reading is nan"),
        ("time,s0,s1,s2\n0,1,2,3\n10,1,2,3\n5,1,2,3\n", r"bad.csv: column 'time', row 4: timestamps out of order"),
        ("time,s0,s1,s2,label\n0,1,2,3,0\n", r"bad.csv: missing column\(s\) label_sensor, label_fault"),
    ],
)
def test_bad_csv_streams_name_the_file_column_and_row(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(TwinError, match=message):
        read_stream_csv(tmp_path / "bad.csv", ["s0", "s1", "s2"])


def test_bad_hdf5_streams_name_the_column_and_sample(tmp_path):
    arrays, faults = _stream()
    attrs = {"sensor_names": ["s0", "s1", "s2"], "sensor_positions": [[0, 0]] * 3, "param_names": ["a", "b"]}
    write_stream(tmp_path / "ok.h5", arrays, faults, attrs)
    got, f, _ = read_stream(tmp_path / "ok.h5")
    assert f[0]["kind"] == "drift" and got["sensors"].shape == (30, 3)
    nan = dict(arrays, sensors=arrays["sensors"].copy())
    nan["sensors"][7, 2] = np.nan
    write_stream(tmp_path / "nan.h5", nan, faults, attrs)
    with pytest.raises(TwinError, match=r"nan.h5: column 's2', sample 7: the reading is nan"):
        read_stream(tmp_path / "nan.h5")
    late = dict(arrays, time=arrays["time"].copy())
    late["time"][12] = 0.0
    write_stream(tmp_path / "late.h5", late, faults, attrs)
    with pytest.raises(TwinError, match=r"late.h5: column '/time', sample 12: timestamps out of order"):
        read_stream(tmp_path / "late.h5")


def test_detector_statistics_see_a_shift_and_a_stuck_reading():
    rng = np.random.default_rng(1)
    det = Detector(np.zeros(2), np.ones(2), np.full(2, 0.5), window=5)
    y = rng.standard_normal((40, 2))
    e = y.copy()
    e[20:, 0] += 3.0  # a shift of sensor 0's residual
    y[30:, 1] = y[29, 1]  # sensor 1 stuck
    st = [det.update(e[t], y[t]) for t in range(40)]
    mean = np.array([s["mean"] for s in st])
    flat = np.array([s["flat"] for s in st])
    assert mean[25:, 0].min() > 2.5 * np.sqrt(5) - 3 and mean[:20, 0].max() < 3.5
    assert np.isinf(flat[36:, 1]).all() or (flat[36:, 1] > 1e6).all()
    assert flat[5:30, 1].max() < 2


def test_flatness_reads_the_noise_whatever_the_plate_does_and_has_its_own_window():
    """The flatness statistic's mean |second difference| cancels a smooth change of the reading:
    on a steep warm-up it stays at the noise's level, where the mean |first difference| would
    follow the slope; a stuck reading still drives it to infinity, within its own window."""
    rng = np.random.default_rng(2)
    n, sigma = 200, 0.05
    noise = sigma * rng.standard_normal((n, 1))
    warm = 300.0 + 0.5 * np.arange(n)[:, None] + noise  # 0.5 K per sample, ten times the noise
    floor = np.mean(np.abs(np.diff(noise, n=2, axis=0)))
    det = Detector(np.zeros(1), np.ones(1), np.array([floor]), window=5, flat_window=20)
    quiet = np.array([det.update(np.zeros(1), noise[t])["flat"][0] for t in range(n)])
    det = Detector(np.zeros(1), np.ones(1), np.array([floor]), window=5, flat_window=20)
    ramp = np.array([det.update(np.zeros(1), warm[t])["flat"][0] for t in range(n)])
    assert np.array_equal(ramp[:21], np.zeros(21)) and ramp[22] > 0  # 2 readings, then 20 differences
    assert np.allclose(ramp[22:], quiet[22:], rtol=1e-6, atol=1e-9)  # the slope cancels exactly
    assert 0.5 < np.median(ramp[22:]) < 2
    stuck = warm.copy()
    stuck[100:] = stuck[99]
    det = Detector(np.zeros(1), np.ones(1), np.array([floor]), window=5, flat_window=20)
    flat = np.array([det.update(np.zeros(1), stuck[t])["flat"][0] for t in range(n)])
    assert flat[121:].min() > 1e6 and flat[95:100].max() < 3


def test_score_alarms_precision_recall_delay_and_false_alarms():
    time = np.arange(100) * 5.0
    label = np.zeros(100, np.int8)
    label[20:40] = 1
    label[60:70] = 3
    alarm = np.zeros(100, bool)
    alarm[25:42] = True  # fault 0 from its 5th sample, 2 samples past its end
    alarm[80:83] = True  # a false alarm
    faults = [
        {"kind": "drift", "sensor": 1, "start": 100.0, "end": 200.0},
        {"kind": "source", "sensor": -1, "start": 300.0, "end": 350.0},
    ]
    s = score_alarms(time, alarm, label, faults)
    assert (s["tp"], s["fp"], s["fn"]) == (15, 5, 15)
    assert s["precision"] == 15 / 20 and s["recall"] == 15 / 30 and s["f1"] == pytest.approx(2 * 15 / (30 + 20))
    assert s["faults"][0]["delay_s"] == 25.0 and s["faults"][0]["delay_samples"] == 5
    assert not s["faults"][1]["detected"] and s["faults"][1]["delay_s"] == float("inf")
    assert s["false_alarms"] == 1 and s["false_alarms_per_1e4"] == pytest.approx(1e4 / 70)
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]


def test_a_twin_that_blows_up_on_the_stream_stops_the_monitor_naming_the_sample():
    """A twin whose state grows without bound (here ×1.5 per step) is an error naming the stream,
    the sample and the stability check, not a report of NaN levels."""
    from pathlib import Path
    from types import SimpleNamespace

    from twinhpc.config import SimulateConfig
    from twinhpc.sim.plate import param_table
    from twinhpc.twin.model import Twin
    from twinhpc.twin.monitor import Settings, Stream, run_twin

    cfg = SimulateConfig.from_dict({"grid": [8, 8], "sensors": [[0.03, 0.03], [0.07, 0.07]], "sources": 1, "steps": 5})
    table = param_table(cfg)
    n = 30
    params = np.tile(middle(table), (n - 1, 1)).astype(np.float32)
    stream = Stream(
        time=np.arange(n) * 5.0,
        sensors=np.full((n, 2), 300.0, np.float32),
        forcing=np.zeros((n - 1, 8, 8), np.float32),
        params=params,
        positions=[[0.03, 0.03], [0.07, 0.07]],
        names=["s0", "s1"],
        param_names=[p["name"] for p in table],
        path="plant.h5",
    )

    class Growing(Twin):
        def stepper(self):
            return lambda u, f, p: u * 1.5

    twin = Growing(SimpleNamespace(task=SimpleNamespace(params=len(table))), cfg, table, None, "test", Path("run"))
    with pytest.raises(TwinError, match=r"plant.h5: the twin blew up at sample (\d+) of 30 .*'stability:'") as info:
        run_twin(twin, stream, Settings(gain=0.0), None)
    # 300 K × 1.5^s passes 1e4 K at s = 9
    assert "at sample 9 of 30 (45 s)" in str(info.value), info.value
    steady = Growing(SimpleNamespace(task=SimpleNamespace(params=len(table))), cfg, table, None, "test", Path("run"))
    steady.stepper = lambda: lambda u, f, p: u
    assert len(run_twin(steady, stream, Settings(gain=0.0), None).residual) == n
