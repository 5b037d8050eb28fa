"""Benchmarks of vmpower predict/serve on real exported models (``make bench``).

Numbers also go to results/bench/predict.json, each section with the machine's load average.
Goals: one-sample ONNX latency for all four zones p99 < 1 ms (soft: recorded, the hard limit is
the seed's 100 ms, see docs/performance.md), the exporter's whole tick (features + 4 zones)
p99 < 100 ms (the seed's inference budget), model load < 5 s, exporter p99 < 50 ms at 100
scrapes/s with bounded RSS growth.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench import results
from bench.predict_artifacts import build
from vmpower.serving import artifact, fallback, live, selection
from vmpower.serving.exporter import Exporter

pytestmark = pytest.mark.benchmark

OUT = Path("results/bench/predict.json")

SCRAPE_SECONDS = float(os.environ.get("VMPOWER_BENCH_SCRAPE_SECONDS", "60"))
SCRAPE_RATE = 100.0
KEYS = {
    "gbr": ("AbsPower", "SystemOnly", "GradientBoostingRegressor"),
    "xgb": ("AbsPower", "SystemOnly", "XGBRegressor"),
    "linear": ("AbsPower", "SystemOnly", "LinearRegression"),
}


def record(section: str, values: dict) -> None:
    # The machine is shared: note how busy it was when the section was measured.
    results.record(OUT, section, {**values, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]})


def stats_ms(seconds) -> dict:
    a = np.asarray(seconds) * 1e3
    return {"n": int(a.size), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bench-predict"))


@pytest.fixture(scope="module")
def features(art):
    """Real feature rows (the demo run's), computed by the pipeline's code."""
    model = artifact.Model.load(art["models"][KEYS["gbr"]])
    settings = live.load_settings(str(art["config"]))
    from vmpower.pipeline import ingest

    feats, drop = live.frame_features(ingest.read_vm_features(art["vm_files"]["run02-mix"]), settings)
    X = live.model_matrix(model, feats, drop, settings, "x")
    return X[np.isfinite(X).all(axis=1)]


@pytest.mark.parametrize("kind", ["gbr", "xgb", "linear"])
def test_one_sample_latency_all_zones(benchmark, art, features, kind):
    model = artifact.Model.load(art["models"][KEYS[kind]])
    assert model.zones == ["package", "core", "dram", "uncore"]
    x = features[:1].copy()
    benchmark.pedantic(model.predict, args=(x,), rounds=3000, iterations=1, warmup_rounds=200)
    s = stats_ms(benchmark.stats.stats.data)
    record(f"one_sample_latency_4_zones_{kind}", {**s, "goal_p99_ms": 1.0, "goal_met": s["p99_ms"] < 1.0})
    # p99 on a shared 2-core machine is at the mercy of neighbours: hard-fail on the median and
    # the seed's 100 ms; the 1 ms p99 goal is recorded above.
    assert s["p50_ms"] < 1.0 and s["p99_ms"] < 100.0


@pytest.mark.parametrize("kind", ["gbr", "chain"])
def test_exporter_tick(benchmark, art, kind):
    """Exporter.update, the whole tick after collection: two live records -> features (the
    pipeline's, via LiveFeatures) -> confidence -> 4 zones through ONNX -> Prometheus gauges.
    "chain": Activity > SystemOnly > CounterOnly from the results directory, perf present."""
    from bench.predict_artifacts import NODE_TYPE

    settings = live.load_settings(str(art["config"]))
    if kind == "chain":
        request = selection.ModelRequest(model=art["results"], node_type=NODE_TYPE, machine_spec=None,
                                         output_type="AbsPower", feature_group=None)
        models = fallback.resolve_chain(request, use_perf=True)
    else:
        models = [artifact.Model.load(art["models"][KEYS[kind]])]
    exporter = Exporter(models, settings, "vm-bench")
    records = json.loads(art["vm_files"]["run02-mix"].read_text())
    state = {"i": 0}

    def setup():  # a fresh consecutive pair each round, as a live exporter sees them
        i = state["i"] = state["i"] % (len(records) - 1) + 1
        exporter._prev = records[i - 1]
        return (records[i],), {}

    assert len(exporter.update(*setup()[0])) == 4
    benchmark.pedantic(exporter.update, setup=setup, rounds=3000, iterations=1, warmup_rounds=100)
    s = stats_ms(benchmark.stats.stats.data)
    record(f"exporter_tick_4_zones_{kind}", {**s, "models": [m.name for m in models], "goal_p99_ms": 100.0})
    assert s["p99_ms"] < 100.0
    assert s["p50_ms"] < 5.0  # a few ms at most: no pandas/pyarrow per tick


def test_batch_throughput(benchmark, art, features):
    model = artifact.Model.load(art["models"][KEYS["gbr"]])
    X = np.resize(features, (10_000, features.shape[1]))
    benchmark.pedantic(model.predict, args=(X,), rounds=10, iterations=1, warmup_rounds=1)
    mean = float(np.mean(benchmark.stats.stats.data))
    record("batch_throughput_gbr", {"rows": len(X), "zones": 4, "mean_s": mean, "rows_per_s": len(X) / mean})


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_model_load_time(benchmark, art, form):
    d = art["models"][KEYS["gbr"]]
    path = d if form == "dir" else d.with_name(d.name + ".zip")
    benchmark.pedantic(artifact.Model.load, args=(path,), rounds=10, iterations=1, warmup_rounds=1)
    s = stats_ms(benchmark.stats.stats.data)
    # A fresh process also pays the onnxruntime import: what `vmpower serve` sees at start-up.
    code = ("import time; t = time.perf_counter(); from vmpower.serving.artifact import Model; Model.load(%r); "
            "print(time.perf_counter() - t)" % str(path))
    cold = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    record(f"model_load_gbr_{form}", {**s, "cold_process_load_ms": cold * 1e3, "goal_ms": 5000})
    assert s["max_ms"] < 5000 and cold < 5


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def test_exporter_under_scrape_load(benchmark, art):
    """100 scrapes/s on loopback for SCRAPE_SECONDS (a bounded, paced loop), against a real
    `vmpower serve` subprocess collecting live features every second."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from bench.predict_artifacts import NODE_TYPE

    # From the results directory with the fallback chain working on every tick: Activity (the
    # best group) lacks its perf inputs under --no-perf, SystemOnly serves.
    cmd = [sys.executable, "-m", "vmpower", "serve", "--model", str(art["results"]), "--node-type", NODE_TYPE,
           "--feature-group", "Activity", "--config", str(art["config"]), "--address", "127.0.0.1", "--port",
           str(port), "--interval", "1", "--no-perf"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read()

    try:
        deadline = time.monotonic() + 30
        while b"kepler_node_cpu_watts{" not in (body := _try(get)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.poll() else "timeout"
            time.sleep(0.1)
        for _ in range(200):  # warm up allocator and caches before the baseline RSS
            get()
        rss0 = _rss(proc.pid)
        cpu0 = _cpu(proc.pid)

        def load():
            n = int(SCRAPE_SECONDS * SCRAPE_RATE)
            lat, errors, t0 = np.empty(n), 0, time.monotonic()
            for i in range(n):  # absolute deadlines: a slow reply does not lower the request rate
                delay = t0 + i / SCRAPE_RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t = time.perf_counter()
                try:
                    get()
                except OSError:
                    errors += 1
                lat[i] = time.perf_counter() - t
            return lat, errors, time.monotonic() - t0

        lat, errors, elapsed = benchmark.pedantic(load, rounds=1, iterations=1)
        rss1 = _rss(proc.pid)
        cpu1 = _cpu(proc.pid)
        assert len(body) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    s = stats_ms(lat)
    result = {**s, "seconds": elapsed, "requests": len(lat), "achieved_rate_per_s": len(lat) / elapsed,
              "errors": errors, "response_bytes": len(body), "rss_start_mib": rss0 / 2**20, "rss_end_mib": rss1 / 2**20,
              "rss_growth_mib": (rss1 - rss0) / 2**20, "server_cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
              "goal_p99_ms": 50.0}
    record("exporter_scrape_load", result)
    assert errors == 0 and s["p99_ms"] < 50.0
    assert result["rss_growth_mib"] < 10.0


def _try(fn) -> bytes:
    try:
        return fn()
    except OSError:
        return b""
