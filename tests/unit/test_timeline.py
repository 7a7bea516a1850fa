"""The timeline: valid Chrome trace-event JSON, one lane per phase, written atomically."""

import json

from twinhpc.comm.timeline import LANES, Timeline, now_us


def load(path):
    with open(path) as f:
        return json.load(f)


def test_trace_is_valid_chrome_json_with_named_lanes(tmp_path):
    tl = Timeline(tmp_path / "tl", rank=3)
    t0 = now_us()
    timings = {
        "enqueue": t0 + 10,
        "start": t0 + 15,
        "pack_done": t0 + 20,
        "reduce_done": t0 + 90,
        "unpack_done": t0 + 95,
    }
    tl.bucket(step=0, index=1, nbytes=4096, first_ready_us=t0, timings=timings)
    tl.span("optimizer wait", "synchronize", t0 + 50, t0 + 96, step=0)
    path = tl.write()
    assert path == tmp_path / "tl" / "trace.rank3.json"

    events = load(path)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == dict(enumerate(LANES))
    assert any(e["ph"] == "M" and e["name"] == "process_name" and e["args"]["name"] == "rank 3" for e in events)
    spans = [e for e in events if e["ph"] == "X"]
    assert all(e["pid"] == 3 and isinstance(e["ts"], int) and e["dur"] >= 0 for e in spans)
    by_lane = {LANES[e["tid"]]: e for e in spans}
    assert set(by_lane) == set(LANES)
    # the bucket's phases tile [first ready, unpack done] without gaps
    order = ["bucket ready", "queued", "pack", "allreduce", "unpack"]
    assert by_lane["bucket ready"]["ts"] == t0
    for a, b in zip(order, order[1:]):
        assert by_lane[a]["ts"] + by_lane[a]["dur"] == by_lane[b]["ts"]
    assert by_lane["unpack"]["ts"] + by_lane["unpack"]["dur"] == timings["unpack_done"]
    assert by_lane["allreduce"]["args"] == {"step": 0, "bucket": 1, "bytes": 4096}


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    tl = Timeline(tmp_path, rank=0)
    tl.write()
    tl.span("pack", "bucket 0", 100, 200)
    tl.write()
    assert [p.name for p in tmp_path.iterdir()] == ["trace.rank0.json"]
    assert sum(e["ph"] == "X" for e in load(tmp_path / "trace.rank0.json")["traceEvents"]) == 1


def test_a_phase_the_engine_skipped_has_zero_duration(tmp_path):
    tl = Timeline(tmp_path, rank=0)
    timings = {"enqueue": 110, "start": 120, "pack_done": 0, "reduce_done": 180, "unpack_done": 190}
    tl.bucket(step=0, index=0, nbytes=8, first_ready_us=100, timings=timings)
    spans = {LANES[e["tid"]]: (e["ts"], e["dur"]) for e in load(tl.write())["traceEvents"] if e["ph"] == "X"}
    assert spans["pack"] == (120, 0)
    assert spans["allreduce"] == (120, 60)
