"""vmpower.collect.common: the scheduler (no drift), crash-safe writers, capped HTTP reads, logs,
signals and progress (the collectors that use them: test_collect_features.py, test_collect_host.py)."""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import random
import signal
import threading
import time
import urllib.request

import pytest

from vmpower.collect import common
from vmpower.collect.common import Schedule


class FakeClock:
    def __init__(self):
        self.t = 1000.0
        self.rng = random.Random(7)

    def __call__(self):
        return self.t

    def wait(self, seconds):
        # sleeps overshoot by up to 15 ms, like a loaded kernel
        self.t += seconds + self.rng.uniform(0, 0.015)
        return False


def test_one_hour_at_one_second_has_3600_samples_without_drift():
    clock = FakeClock()
    sched = Schedule(1.0, 3600.0, clock=clock, wait=clock.wait)
    ticks = []
    for t in sched.ticks():
        ticks.append(t)
        clock.t += clock.rng.uniform(0.02, 0.3)  # the work done per sample
    windows = len(ticks) - 1  # a sample is the window between two ticks
    assert abs(windows - 3600) <= 1
    # every tick stays within the jitter of its absolute deadline: no accumulated drift
    offsets = [t - (ticks[0] + k) for k, t in enumerate(ticks)]
    assert max(offsets) < 0.02 and min(offsets) >= 0
    assert sched.skipped == 0


def test_relative_sleeping_drifts_which_is_why_it_is_not_the_default():
    clock = FakeClock()
    sched = Schedule(1.0, 3600.0, clock=clock, wait=clock.wait, absolute=False)
    n = 0
    for _ in sched.ticks():
        n += 1
        clock.t += 0.1
    assert n - 1 < 3590  # --no-sync: sleep overshoot accumulates, samples are lost over an hour


def test_stall_skips_missed_deadlines_instead_of_bursting():
    clock = FakeClock()
    sched = Schedule(1.0, 20.0, clock=clock, wait=clock.wait)
    ticks = []
    for t in sched.ticks():
        ticks.append(t)
        if len(ticks) == 5:
            clock.t += 4.5  # e.g. the VM was paused
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    # no burst of back-to-back samples after the stall: the next tick is back on the grid
    assert min(gaps) > 0.9
    assert all(abs((t - ticks[0]) - round(t - ticks[0])) < 0.02 for t in ticks)
    assert sched.skipped >= 3
    assert ticks[-1] - ticks[0] <= 20.0 + 0.02


def test_late_start_joins_the_grid_and_keeps_the_end():
    clock = FakeClock()
    start = clock.t - 2.3  # the common start instant passed while this side was starting up
    sched = Schedule(1.0, 10.0, clock=clock, wait=clock.wait)
    ticks = list(sched.ticks(start))
    assert ticks[0] == pytest.approx(start + 3, abs=0.02)
    assert ticks[-1] == pytest.approx(start + 10, abs=0.02)
    assert len(ticks) - 1 == 7


def test_real_clock_short_run_keeps_the_grid():
    sched = Schedule(0.1, 1.5)
    ticks = [t for t in sched.ticks()]
    assert len(ticks) - 1 == 15
    assert all(abs((t - ticks[0]) - 0.1 * k) < 0.03 for k, t in enumerate(ticks))


def test_stop_ends_the_iteration_promptly():
    sched = Schedule(10.0, None)
    it = sched.ticks()
    next(it)
    sched.stop()
    t0 = time.monotonic()
    assert list(it) == []
    assert time.monotonic() - t0 < 0.5


# ---------------------------------------------------------------- time stamps


@pytest.fixture
def tz(monkeypatch):
    """Run in a fixed zone, 5 h behind UTC (a POSIX TZ rule: no tz database needed)."""
    monkeypatch.setenv("TZ", "XXX+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_iso_local_is_naive_local_time_always_with_microseconds(tz):
    assert common.iso_local(1700000000) == "2023-11-14T17:13:20.000000"  # 22:13:20 UTC
    assert common.iso_local(1700000000.25) == "2023-11-14T17:13:20.250000"
    assert common.file_stamp(1700000000.9) == "20231114_171320"
    assert len(common.file_stamp()) == len("20231114_171320")


# ---------------------------------------------------------------- writers


def test_jsonl_writer_writes_compact_lines_and_refuses_nan(tmp_path):
    w = common.JsonlWriter(tmp_path / "d" / "x.jsonl", fsync_every=0)
    assert w.fsync_every == 1  # at least every line
    w.write({"a": 1, "b": [1.5, None]})
    w.write({"c": "é"})
    with pytest.raises(ValueError):
        w.write({"bad": float("nan")})  # never written as NaN (clean_number first)
    assert w.count == 2
    # flushed per line: a reader (or a kill -9) sees every complete line at once
    assert (tmp_path / "d" / "x.jsonl").read_text() == '{"a":1,"b":[1.5,null]}\n{"c":"\\u00e9"}\n'
    w.close()
    w.close()  # idempotent


def test_finalize_json_array_replaces_the_lines_atomically(tmp_path):
    path = tmp_path / "vm.json"
    path.write_text('{"a":1}\n')
    common.finalize_json_array(path, [{"a": 1}, {"a": 2.5}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"a": 2.5}]
    common.finalize_json_array(tmp_path / "empty.json", [])
    assert (tmp_path / "empty.json").read_text() == "[\n]\n" and json.loads("[\n]\n") == []
    with pytest.raises(ValueError):
        common.finalize_json_array(path, [{"a": float("inf")}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"a": 2.5}]  # the old file, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_clean_number():
    assert [common.clean_number(v) for v in (float("nan"), float("inf"), -float("inf"))] == [None] * 3
    assert [common.clean_number(v) for v in (1.5, 0, -3, None, True, "x")] == [1.5, 0, -3, None, True, "x"]


# ---------------------------------------------------------------- capped HTTP reads (a real loopback server)


class _Handler(http.server.BaseHTTPRequestHandler):
    """/len/N: N bytes with Content-Length; /chunked/N: N bytes chunked; /short/N: says N, sends N/2."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        kind, n = self.path.strip("/").split("/")
        n = int(n)
        self.send_response(200)
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, n, 1000):
                k = min(1000, n - i)
                self.wfile.write(b"%x\r\n" % k + b"y" * k + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(n))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"x" * (n if kind == "len" else n // 2))
        self.close_connection = True


@pytest.fixture(scope="module")
def http_url():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _read(url, limit, deadline=None):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return common.read_capped(resp, limit, deadline)


def test_read_capped_reads_up_to_the_limit(http_url):
    assert _read(f"{http_url}/len/100", 100) == b"x" * 100
    assert _read(f"{http_url}/chunked/5000", 5000) == b"y" * 5000
    assert _read(f"{http_url}/len/200000", 1 << 20) == b"x" * 200000  # several reads


def test_read_capped_refuses_a_larger_answer(http_url):
    with pytest.raises(common.ResponseTooLarge, match=r"^answer of 101 bytes, more than "
                                                      r"limits\.max_http_response_bytes \(100\)$"):
        _read(f"{http_url}/len/101", 100)  # from the header, before reading
    with pytest.raises(common.ResponseTooLarge, match=r"larger than limits\.max_http_response_bytes \(5000 bytes\)"):
        _read(f"{http_url}/chunked/5001", 5000)  # no length given: counted while reading


def test_read_capped_truncated_answer_and_deadline(http_url):
    with pytest.raises(http.client.IncompleteRead):
        _read(f"{http_url}/short/100", 1000)
    with pytest.raises(TimeoutError, match=r"not complete within the timeout \(65536 bytes read\)"):
        _read(f"{http_url}/len/200000", 1 << 20, deadline=time.monotonic() - 1)


# ---------------------------------------------------------------- logs, signals, waiting, progress


def test_setup_file_log_writes_the_collectors_records(tmp_path):
    root = logging.getLogger("vmpower")
    level = root.level
    assert common.setup_file_log(None) is None
    handler = common.setup_file_log(tmp_path / "logs" / "c.log", verbose=True)
    try:
        logging.getLogger("vmpower.collect").debug("sampled %d", 3)
        handler.flush()
        line = (tmp_path / "logs" / "c.log").read_text()
        assert line.endswith(" DEBUG vmpower.collect: sampled 3\n") and line.count("\n") == 1
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)


def test_stop_on_signals_calls_back_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    calls = []
    with common.stop_on_signals(lambda: calls.append(1)):
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [1]
    assert {s: signal.getsignal(s) for s in before} == before


def test_stop_on_signals_outside_the_main_thread_installs_nothing():
    seen = []

    def run():
        with common.stop_on_signals(lambda: None):
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert seen == [before]


def test_wait_until_epoch():
    stop = threading.Event()
    assert common.wait_until_epoch(None, stop) is True
    assert common.wait_until_epoch(time.time() - 10, stop) is True
    t0 = time.monotonic()
    assert common.wait_until_epoch(time.time() + 0.2, stop) is True
    assert time.monotonic() - t0 >= 0.15
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert common.wait_until_epoch(time.time() + 30, stop) is False  # stopped first, promptly
    assert time.monotonic() - t0 < 5
    assert common.wait_until_epoch(time.time() - 10, stop) is False


def test_progress_is_silent_when_disabled_and_closes_once():
    off = common.Progress("x", 10, enabled=False)
    off.update(5, "info")
    off.close()
    assert off._progress is None
    on = common.Progress("run", 10, enabled=True)
    assert on._progress is not None
    on.update(5, "half")
    assert on._progress.tasks[0].completed == 5 and on._progress.tasks[0].fields["info"] == "half"
    on.close()
    on.close()
    on.update(6)  # after close: nothing
    assert on._progress is None
