"""Footprint of a real ``vmpower serve`` (``make bench``): the EP's non-functional budget is
< 100 MB memory and < 5 % of one core at a 5 s interval with all four zones.

The serve runs as deployed: real exported models (bench.predict_artifacts), selected from the
results directory with the whole fallback chain of the node_type (every AbsPower group: the most
models serve ever loads for it), perf counters when they can be counted here, a Prometheus-like
scrape every 15 s. Peak RSS is the kernel's high-water mark (VmHWM, start-up included); CPU is
the serve's and its children's (perf) CPU seconds over the steady window after the first watts.
Numbers go to results/bench/serve.json and docs/performance.md.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench import results
from bench.predict_artifacts import NODE_TYPE, build

pytestmark = pytest.mark.benchmark

OUT = Path("results/bench/serve.json")
SECONDS = float(os.environ.get("VMPOWER_BENCH_FOOTPRINT_SECONDS", "60"))
INTERVAL = 5.0
SCRAPE_EVERY = 15.0  # Prometheus' default scrape interval
ZONES = {"package", "core", "dram", "uncore"}
RSS_BUDGET_BYTES = 100e6  # decimal MB: also under 100 MiB
CPU_BUDGET_PERCENT = 5.0


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bench-footprint"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _zones(text: str) -> set[str]:
    return set(re.findall(r'^kepler_node_cpu_watts\{[^}]*zone="(\w+)"', text, re.M))


def _status_kib(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of the process (kB as the kernel counts them: KiB)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB", text, re.M)}


def _cpu_seconds(proc) -> float:
    """CPU seconds of the process, its live children (perf) and its reaped children."""
    import psutil

    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def test_serve_footprint(benchmark, art, tmp_path):
    import psutil

    port = _port()
    cmd = [sys.executable, "-m", "vmpower", "serve", "--model", str(art["results"]), "--node-type", NODE_TYPE,
           "--config", str(art["config"]), "--address", "127.0.0.1", "--port", str(port), "--interval", str(INTERVAL)]
    err = tmp_path / "serve.err"
    url = f"http://127.0.0.1:{port}/metrics"
    with open(err, "w") as fh:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline, text = time.monotonic() + 120, ""
        while _zones(text) != ZONES:
            assert server.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no watts for all four zones; last scrape: {text[-1000:]}"
            time.sleep(0.5)
            try:
                text = _scrape(url)
            except OSError:
                pass
        proc = psutil.Process(server.pid)

        def window():
            cpu0, t0, scrapes = _cpu_seconds(proc), time.monotonic(), 0
            while (left := t0 + SECONDS - time.monotonic()) > 0:
                time.sleep(min(SCRAPE_EVERY, left))
                assert _zones(_scrape(url)) == ZONES  # every zone keeps being served
                scrapes += 1
            return _cpu_seconds(proc) - cpu0, time.monotonic() - t0, scrapes

        cpu, wall, scrapes = benchmark.pedantic(window, rounds=1, iterations=1)
        mem = _status_kib(server.pid)
        models = re.search(r"fallback order: (.*)", err.read_text())
    finally:
        server.terminate()
        server.wait(timeout=20)
    peak = mem["VmHWM"] * 1024
    values = {"peak_rss_mb": peak / 1e6, "peak_rss_mib": peak / 2**20, "rss_mib": mem["VmRSS"] / 1024,
              "rss_anon_mib": mem["RssAnon"] / 1024, "rss_file_mib": mem["RssFile"] / 1024,
              "cpu_percent_one_core": 100 * cpu / wall, "seconds": wall, "interval_s": INTERVAL, "scrapes": scrapes,
              "models": models.group(1).split(" > ") if models else 1, "cpus": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "budget_rss_mb": RSS_BUDGET_BYTES / 1e6,
              "budget_cpu_percent": CPU_BUDGET_PERCENT}
    results.record(OUT, "serve_footprint", values)
    assert peak < RSS_BUDGET_BYTES, values
    assert values["cpu_percent_one_core"] < CPU_BUDGET_PERCENT, values
