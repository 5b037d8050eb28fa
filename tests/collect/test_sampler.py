"""vmpower.collect.sampler: the public sampling API (the file collector and serve use it)."""

import pytest

from vmpower.collect import procfs
from vmpower.collect.sampler import PERF_FIELDS, Sampler


def test_first_snapshot_starts_the_window_then_records_follow():
    s = Sampler(0.1, use_perf=False)
    s.start()
    try:
        assert s.next() is None and not s.perf_available and s.sources == ()
        rec = s.next()
    finally:
        s.stop()
    assert rec["perf_available"] is False and all(rec[f] is None for f in PERF_FIELDS if f not in
                                                  ("page_faults", "context_switches"))
    assert rec["context_switches"] >= 0 and rec["time_delta_seconds"] > 0  # from /proc without perf
    assert rec["stress_workload"] == "none" and rec["collection_interval"] == 0.1
    assert set(s.durations) == {"proc"} and s.durations["proc"] >= 0


def test_a_failed_snapshot_keeps_the_window_and_a_failed_record_moves_it(monkeypatch):
    real = procfs.take_snapshot
    times = iter([10.0, 11.0, 12.0, 13.0, 14.0])
    calls = {"n": 0}

    def snapshot():
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "injected")
        return real(lambda: next(times))

    monkeypatch.setattr(procfs, "take_snapshot", snapshot)
    s = Sampler(1.0, use_perf=False, workload=lambda t0, t1: f"w{t0:g}-{t1:g}")
    assert s.next() is None  # t=10
    with pytest.raises(OSError):
        s.next()
    rec = s.next()  # t=11: the window since 10 (the failed snapshot did not move it)
    assert rec["time_delta_seconds"] == 1.0 and rec["stress_workload"] == "w10-11"

    def broken(*a, **kw):
        raise RuntimeError("injected")

    monkeypatch.setattr(s, "record", broken)
    with pytest.raises(RuntimeError):
        s.next()  # t=12
    monkeypatch.undo()
    monkeypatch.setattr(procfs, "take_snapshot", lambda: real(lambda: next(times)))
    assert s.next()["stress_workload"] == "w12-13"  # the failed record's window ended at 12
