"""vmpower.collect.perf: the long-lived perf process, bracketed into windows."""

from __future__ import annotations

import time

import pytest

from vmpower.collect import perf as perfmod
from vmpower.collect.procfs import read_proc_stat


def test_perf_stat_windows_match_proc_counts():
    """The long-lived perf process, bracketed into a window, agrees with /proc/stat."""
    path, fields, _ = perfmod.probe()
    if path is None or not fields["context_switches"]:
        pytest.skip("perf cannot count context switches system-wide here")
    ps = perfmod.PerfStat(path, ["context_switches"], interval_ms=50)
    ps.start()
    try:
        time.sleep(0.5)
        t0, c0 = time.monotonic(), read_proc_stat()["ctxt"]
        time.sleep(1.5)
        t1, c1 = time.monotonic(), read_proc_stat()["ctxt"]
        counts = ps.counts(t0, t1, wait=1.0)
    finally:
        ps.stop()
    assert counts is not None and counts["context_switches"] is not None
    # perf's own switches add a little; proportional edge splitting adds a little noise
    assert counts["context_switches"] == pytest.approx(c1 - c0, rel=0.25)
