"""Host power collector against a real HTTP server on loopback serving Kepler's exposition."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import threading
import time

import pytest

from collect_helpers import free_port, subprocess_env

from vmpower.collect.host import HostCollector, gaps_path
from vmpower.collect.kepler import parse
from vmpower.collect.kepler_server import Vm

FIXED = {"package": 40.0, "core": 30.0, "dram": 4.0}
VMS = [Vm("machine-qemu\\x2d1\\x2dfedora40", "fedora40", share=0.6),
       Vm("machine-qemu\\x2d2\\x2dfedora41", "fedora41", share=0.3),
       Vm("machine-qemu\\x2d3\\x2dubuntu", "ubuntu", share=0.1),
       Vm("machine-qemu\\x2d4\\x2dfedora42", "fedora42", state="shut off", share=0.5)]
HEADER = ["timestamp", "timestamp_iso", "total_cpu_watts_core", "total_cpu_watts_package",
          "total_cpu_watts_dram", "vm_count", "collection_interval", "vm_filter"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _wait_for_value(k, timeout=3.0):
    deadline = time.monotonic() + timeout
    while k.watts()["package"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_kepler_010_watts_filter_and_sum(tmp_path, kepler, openmetrics):
    k = kepler(VMS, version="0.10", openmetrics=openmetrics, update_interval=0.2, fixed_watts=FIXED)
    body, ctype = k.exposition()
    assert ("application/openmetrics-text" in ctype) is openmetrics
    assert body.decode().startswith("# HELP kepler_build_info")
    assert len(parse(body.decode(), ctype)) == 12  # 4 VMs x 3 zones, incl. the stopped one
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_patterns=["fedora4[01]"], interval=0.1, duration=1.0)
    assert hc.run() >= 9
    rows = _rows(out)
    assert list(rows[0]) == HEADER
    for r in rows:
        # fedora40 + fedora41 (the stopped fedora42 never counts)
        assert float(r["total_cpu_watts_package"]) == pytest.approx(0.9 * 40.0)
        assert float(r["total_cpu_watts_core"]) == pytest.approx(0.9 * 30.0)
        assert float(r["total_cpu_watts_dram"]) == pytest.approx(0.9 * 4.0)
        assert r["vm_count"] == "2" and r["collection_interval"] == "0.1"
        assert r["vm_filter"] == "{'fedora4[01]'}"
    ts = [float(r["timestamp"]) for r in rows]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert json.loads(gaps_path(out).read_text())["gaps"] == []


def test_several_names_and_state_filter(tmp_path, kepler):
    k = kepler(VMS, update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.json"
    HostCollector(k.url, out, vm_patterns=["ubuntu", "fedora40", "fedora42"], interval=0.1, duration=0.5).run()
    data = json.loads(out.read_text())
    assert data and all(r["vm_count"] == 2 for r in data)
    for r in data:
        assert r["total_cpu_watts_package"] == pytest.approx(0.7 * 40.0)
        assert r["vm_filter"] == "{'fedora40', 'fedora42', 'ubuntu'}"
        assert abs(r["timestamp_absolute"] - time.time()) < 30
        assert {v["vm_name"] for v in r["vms"]} == {"fedora40", "ubuntu"}
        assert all(v["state"] == "running" and v["hypervisor"] == "kvm" and v["node_name"] == "host-1"
                   for v in r["vms"])
        assert set(r["vms"][0]) == {"vm_id", "vm_name", "hypervisor", "node_name", "zone", "watts", "state"}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_kepler_07_joules_become_watts(tmp_path, kepler, openmetrics):
    # Kepler 0.7 moves its counters every few seconds; scrapes are 10x faster
    k = kepler(VMS[:2], version="0.7", openmetrics=openmetrics, update_interval=1.0, fixed_watts=FIXED)
    assert "kepler_vm_package_joules_total{mode=\"dynamic\"" in k.exposition()[0].decode()
    out = tmp_path / "bm_power_t.csv"
    HostCollector(k.url, out, vm_patterns=["fedora40"], interval=0.1, duration=3.0).run()
    rows = _rows(out)
    assert len(rows) >= 12  # no row before the first counter change (rate unknown), none NaN
    # each rate is quantised by the 0.1 s scrape grid against a 1 s update (+-10 %, more when
    # the machine is busy); on average joules/s is the VM's watts
    package = [float(r["total_cpu_watts_package"]) for r in rows]
    core = [float(r["total_cpu_watts_core"]) for r in rows]
    assert all(0.6 * 40.0 * 0.7 < w < 0.6 * 40.0 * 1.3 for w in package)
    assert sum(package) / len(package) == pytest.approx(0.6 * 40.0, rel=0.08)
    assert sum(core) / len(core) == pytest.approx(0.6 * 30.0, rel=0.08)
    assert all(r["vm_count"] == "1" for r in rows)


def test_endpoint_dies_and_comes_back(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    port = k.port
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_patterns=["fedora40"], interval=0.1, duration=4.0, timeout=0.5,
                       max_backoff=0.4)
    t = threading.Thread(target=hc.run)
    t.start()
    time.sleep(1.0)
    k.stop()  # connection refused from now on
    time.sleep(1.5)
    # while it is down the gap is already on disk
    open_gap = json.loads(gaps_path(out).read_text())["gaps"]
    assert open_gap and open_gap[-1].get("open") is True
    k.start()
    assert k.port == port
    t.join(10)
    assert not t.is_alive()
    rows = _rows(out)
    ts = [float(r["timestamp"]) for r in rows]
    summary = json.loads(gaps_path(out).read_text())
    assert len(summary["gaps"]) == 1
    gap = summary["gaps"][0]
    # the first failure may be a reset of the in-flight request; later ones are refusals
    assert "Connection refused" in gap["last_reason"]
    assert 1.2 < gap["seconds"] < 2.2 and gap["attempts"] >= 2
    # rows before and after the gap, none inside it, no NaN anywhere
    steps = [b - a for a, b in zip(ts, ts[1:])]
    assert max(steps) > 1.2
    assert ts[0] < 1.0 and ts[-1] > 3.0
    assert all(math.isfinite(float(r["total_cpu_watts_package"])) for r in rows)


def test_garbage_and_http_errors_are_gaps_not_crashes(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_patterns=["fedora40"], interval=0.1, duration=3.0, max_backoff=0.3)
    t = threading.Thread(target=hc.run)
    t.start()
    time.sleep(0.6)
    k.mode = "garbage"
    time.sleep(0.7)
    k.mode = "http500"
    time.sleep(0.6)
    k.mode = "ok"
    t.join(10)
    gaps = json.loads(gaps_path(out).read_text())["gaps"]
    assert len(gaps) == 1
    assert "MetricsError" in gaps[0]["reason"]  # the garbage: unparsable exposition
    assert "500" in gaps[0]["last_reason"]
    rows = _rows(out)
    assert float(rows[-1]["timestamp"]) > 2.3  # resumed after the bad answers
    assert all(float(r["total_cpu_watts_package"]) == pytest.approx(24.0) for r in rows)


def test_slow_endpoint_times_out_and_the_run_ends_on_time(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    k.mode = "slow"
    k.slow_seconds = 1.0
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_patterns=["fedora40"], interval=0.1, duration=2.0, timeout=0.3,
                       max_backoff=0.3)
    t0 = time.monotonic()
    threading.Timer(1.0, lambda: setattr(k, "mode", "ok")).start()
    hc.run()
    assert time.monotonic() - t0 < 3.5
    gaps = json.loads(gaps_path(out).read_text())["gaps"]
    assert gaps and "timed out" in gaps[0]["reason"].lower()
    assert hc.rows > 0


def test_killed_collector_keeps_what_it_wrote(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    for name in ("bm_power_k.csv", "bm_power_k.json"):
        out = tmp_path / name
        proc = subprocess.Popen([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url", k.url,
                                 "--vm-names", "fedora40", "--duration", "60", "--output", str(out),
                                 "--log-file", str(tmp_path / "bm.log")], env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 6):
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lines = out.read_text().splitlines()
        assert len(lines) >= 6
        if name.endswith(".csv"):
            rows = _rows(out)
            assert list(rows[0]) == HEADER and all(r["vm_filter"] == "{'fedora40'}" for r in rows)
        else:
            assert all(json.loads(line)["vm_count"] == 1 for line in lines)  # JSON Lines, every line whole


def test_unreachable_endpoint_one_line_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/metrics"
    res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url", url,
                          "--duration", "0.5", "--output", str(tmp_path / "bm_power_x.csv"),
                          "--log-file", str(tmp_path / "bm.log")], env=subprocess_env(),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"vmpower collect: error: {url}: no power rows collected (Kepler unreachable or no matching VM)")
    assert "retrying with backoff" in (tmp_path / "bm.log").read_text()
