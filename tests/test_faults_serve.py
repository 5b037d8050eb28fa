"""Fault tests (issue 19) of the network side: serve's /metrics under 50 concurrent scrapers,
unknown paths and slowloris; Kepler answers far larger than limits.max_http_response_bytes for
the host collector and serve's --kepler-url. Loopback only, bounded loops, memory measured."""

from __future__ import annotations

import http.server
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vmpower import limits

pytestmark = pytest.mark.fault
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}


SERVER = textwrap.dedent("""
    import sys, threading, time
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from vmpower import limits
    from vmpower.serving import metrics_http

    # A registry the size of serve's (4 zones, ~30 families), changed once a second like serve's ticks.
    reg = CollectorRegistry()
    gauges = [Gauge(f"kepler_test_{i}", "a test family", ["zone", "node_name"], registry=reg) for i in range(30)]
    Counter("kepler_test_errors", "errors", ["feature"], registry=reg).labels("x").inc()
    tick = [0]
    lim = limits.defaults().replace(exporter_request_timeout_seconds=float(sys.argv[1]))
    srv, _t = metrics_http.start(reg, "127.0.0.1", 0, lim, version=lambda: tick[0])
    print(srv.server_address[1], srv.request_queue_size, flush=True)
    while True:
        for i, g in enumerate(gauges):
            for zone in ("package", "core", "dram", "uncore"):
                g.labels(zone, "vm").set(i * 1.5 + tick[0])
        tick[0] += 1
        time.sleep(1.0)
""")


@pytest.fixture()
def server():
    """(port, backlog) of the exporter's HTTP server in its own process, as in serve."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "1.0"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        port, backlog = map(int, proc.stdout.readline().split())
        yield port, backlog
    finally:
        proc.kill()
        proc.wait()


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_backlog_comes_from_limits(server):
    _port, backlog = server
    assert backlog == limits.defaults().exporter_backlog >= 64


def _burst(port: int, n: int) -> list[tuple[float, bytes]]:
    """n scrapes sent at the same instant from one thread (selectors: a light client, so the
    latency measured is the server's): (seconds, answer) each."""
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, {"t0": time.perf_counter(), "data": []})
    out, deadline = [], time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        for key, events in sel.select(timeout=1):
            s, st = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                s.sendall(request)
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            chunk = s.recv(65536)
            if chunk:
                st["data"].append(chunk)
            else:
                out.append((time.perf_counter() - st["t0"], b"".join(st["data"])))
                sel.unregister(s)
                s.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return out


def test_fifty_concurrent_scrapers_p99_under_50ms(server):
    port, _backlog = server
    n, rounds = 50, 10
    results = []
    for _ in range(rounds):  # bounded: 10 bursts of 50 simultaneous scrapes
        results += _burst(port, n)
        time.sleep(0.05)
    assert len(results) == n * rounds
    bad = [body[:40] for _s, body in results if not (body.startswith(b"HTTP/1.0 200") and b"kepler_test_29" in body)]
    assert not bad, bad[:3]
    latencies = sorted(sec for sec, _body in results)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"


@pytest.mark.parametrize("path", ["/foo", "/../../etc/passwd", "/metrics/x", "/metricsx", "/favicon.ico"])
def test_only_metrics_and_index_are_served(server, path):
    port, _backlog = server
    code, body = _get(port, path)
    assert code == 404 and b"kepler_test" not in body


def test_index_links_to_metrics(server):
    port, _backlog = server
    code, body = _get(port, "/")
    assert code == 200 and b'href="/metrics"' in body and b"kepler_test" not in body
    code, body = _get(port, "/metrics?name[]=kepler_test_3")
    assert code == 200 and b"kepler_test_3" in body


def test_metrics_follow_the_ticks(server):
    port, _backlog = server
    first = _get(port, "/metrics")[1]
    time.sleep(1.3)
    assert _get(port, "/metrics")[1] != first  # one rendering per tick, never a stale one


def test_slowloris_neither_starves_nor_holds_connections(server):
    port, _backlog = server
    slow = []
    for _ in range(40):  # half-sent requests, one more header byte every 0.3 s
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    t_end = time.monotonic() + 2.5
    worst = 0.0
    closed = set()
    while time.monotonic() < t_end:
        for i, s in enumerate(slow):
            if i not in closed:
                try:
                    s.sendall(b"X")
                except OSError:
                    closed.add(i)
        t0 = time.perf_counter()
        code, _body = _get(port, "/metrics", timeout=5)
        worst = max(worst, time.perf_counter() - t0)
        assert code == 200
        time.sleep(0.3)
    assert worst < 0.5, f"a scrape took {worst:.2f} s beside 40 slow clients"
    # exporter_request_timeout_seconds (1 s here) is the whole request's deadline: all cut off.
    for s in slow:
        s.settimeout(2)
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        s.close()


# ------------------------------------------------------------------------ oversized HTTP answers

BIG = 100 * 1024 * 1024


class _Huge(http.server.BaseHTTPRequestHandler):
    """Kepler that answers with 100 MB (valid-looking exposition lines)."""

    def do_GET(self):
        line = b'kepler_vm_cpu_watts{vm_name="x",zone="package",state="running"} 1.0\n'
        chunk = line * (65536 // len(line))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        if "nolength" not in self.path:
            self.send_header("Content-Length", str(BIG))
        self.end_headers()
        sent = 0
        try:
            while sent < BIG:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *a):
        pass


@pytest.fixture()
def huge_kepler():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Huge)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("suffix", ["/metrics", "/metrics?nolength"])
def test_host_collector_records_an_oversized_answer_as_a_gap(tmp_path, huge_kepler, suffix):
    out = tmp_path / "bm_power.csv"
    code = textwrap.dedent(f"""
        import sys
        from vmpower import cli
        rc = cli.main(["collect", "host", "--kepler-url", {huge_kepler + suffix!r}, "--output", {str(out)!r},
                       "--duration", "3", "--interval", "0.1", "--log-file", {str(tmp_path / "host.log")!r}])
        # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
        print("MAXRSS_KB", hwm, file=sys.stderr)
        sys.exit(rc)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2  # no rows: a one-line error, after the gap was recorded
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("vmpower collect: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    gaps = json.loads((tmp_path / "gaps_bm_power.json").read_text())
    assert len(gaps["gaps"]) == 1 and gaps["failed_scrapes"] >= 1 and gaps["rows"] == 0
    assert "max_http_response_bytes" in gaps["gaps"][0]["reason"]
    rss_mb = int(proc.stderr.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert rss_mb < 250, f"peak RSS {rss_mb:.0f} MB for a 100 MB answer"
    assert elapsed < 20


def test_host_collector_stops_promptly_on_sigterm(tmp_path, huge_kepler):
    out = tmp_path / "bm_power.csv"
    proc = subprocess.Popen([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url", huge_kepler + "/m?nolength",
                             "--output", str(out), "--duration", "0", "--log-file", str(tmp_path / "h.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 30
        gaps = tmp_path / "gaps_bm_power.json"
        while time.monotonic() < deadline and not (gaps.exists() and json.loads(gaps.read_text())["gaps"]):
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 3.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "max_http_response_bytes" in json.loads(gaps.read_text())["gaps"][0]["reason"]


def test_serve_kepler_url_oversized_answer_is_a_failed_read(huge_kepler):
    code = textwrap.dedent(f"""
        import logging, sys, time
        from vmpower.collect.sampler import KeplerProcessSeconds
        logging.basicConfig(level=logging.INFO)
        k = KeplerProcessSeconds({huge_kepler + "/metrics?nolength"!r}, timeout=2.0)
        t0 = time.monotonic()
        assert k.features(1.0) == {{}} and not k.reachable
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]  # own peak
        print("SECONDS", time.monotonic() - t0, "MAXRSS_KB", hwm)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    seconds, rss_mb = float(words[1]), int(words[3]) / 1024
    assert seconds < 5 and rss_mb < 150, (proc.stdout, proc.stderr[-500:])
    assert "max_http_response_bytes" in proc.stderr  # the log line says why
