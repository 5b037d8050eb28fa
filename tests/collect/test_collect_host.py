"""Host power collector against a real HTTP server on loopback serving Kepler's exposition."""

from __future__ import annotations

import csv
import datetime
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
from kepler_server import Vm

FIXED = {"package": 40.0, "core": 30.0, "dram": 4.0}
# Kepler 0.10 ids are QEMU uuids; 0.7 ids are libvirt's machine-qemu-<n>-<name> (the server makes them)
VMS = [Vm("2b7f0a52-8c1e-4d4e-9f3a-6c0e5d1a9b40", "fedora40", share=0.6),
       Vm("7d41c9e3-1f0b-4a57-8e2d-3b9c6a0f5e41", "fedora41", share=0.3),
       Vm("c0a8e1f2-5d6b-4c3a-9e8f-1a2b3c4d5e6f", "ubuntu", share=0.1),
       Vm("e5f6a7b8-c9d0-4e1f-a2b3-c4d5e6f7a842", "fedora42", state="terminated", share=0.5)]
HEADER = ["timestamp", "timestamp_iso", "total_cpu_watts_core", "total_cpu_watts_package",
          "total_cpu_watts_dram", "vm_count", "collection_interval", "vm_filter", "timestamp_absolute"]


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
    text = body.decode()
    assert text.startswith("# HELP go_")  # sorted by family name, Go runtime first
    for family in ("kepler_build_info", "kepler_node_cpu_watts", "kepler_node_cpu_joules", "kepler_node_cpu_info",
                   "kepler_process_cpu_watts", "kepler_process_cpu_seconds", "kepler_vm_cpu_joules",
                   "kepler_vm_cpu_watts", "process_cpu_seconds"):
        assert f"# TYPE {family}" in text, family
    # 4 VMs x 3 zones of the gauge, incl. the terminated one; kepler_vm_cpu_joules_total is not used
    assert len(parse(body.decode(), ctype)) == 12
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_patterns=["fedora4[01]"], interval=0.1, duration=1.0)
    assert hc.run() >= 9
    rows = _rows(out)
    assert list(rows[0]) == HEADER
    for r in rows:
        # fedora40 + fedora41 (the terminated fedora42 never counts)
        assert float(r["total_cpu_watts_package"]) == pytest.approx(0.9 * 40.0)
        assert float(r["total_cpu_watts_core"]) == pytest.approx(0.9 * 30.0)
        assert float(r["total_cpu_watts_dram"]) == pytest.approx(0.9 * 4.0)
        assert r["vm_count"] == "2" and r["collection_interval"] == "0.1"
        assert r["vm_filter"] == "{'fedora4[01]'}"
    ts = [float(r["timestamp"]) for r in rows]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    # absolute epoch time (UTC) of each reading, the same instant as the naive local timestamp_iso
    wall = [float(r["timestamp_absolute"]) for r in rows]
    assert all(abs(w - time.time()) < 30 for w in wall)
    assert all(abs((w1 - w0) - (t1 - t0)) < 0.002 for w0, w1, t0, t1 in zip(wall, wall[1:], ts, ts[1:]))
    for r in rows:
        local = datetime.datetime.fromtimestamp(float(r["timestamp_absolute"]))
        assert r["timestamp_iso"] == local.strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert json.loads(gaps_path(out).read_text())["gaps"] == []


def test_several_names_and_state_filter(tmp_path, kepler):
    k = kepler(VMS, update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.json"
    HostCollector(k.url, out, vm_names=["ubuntu", "fedora40", "fedora42"], interval=0.1, duration=0.5).run()
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
    HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=3.0).run()
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
    # 0.7 serves uncore for every VM, 0 J on hardware without it; platform/other are not CPU zones
    assert list(rows[0]) == HEADER[:5] + ["total_cpu_watts_uncore"] + HEADER[5:]
    assert all(float(r["total_cpu_watts_uncore"]) == 0.0 for r in rows)


def test_endpoint_dies_and_comes_back(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    port = k.port
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=4.0, timeout=0.5,
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


def _run_through_modes(k, out, duration, steps):
    """Collect from ``k`` for ``duration`` s, switching the server's answer mode after each
    (seconds, mode) step; returns (collector, the rows run() returned)."""
    _wait_for_value(k)
    hc = HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=duration, max_backoff=0.3)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rows", hc.run()))
    t.start()
    for seconds, mode in steps:
        time.sleep(seconds)
        k.mode = mode
    t.join(15)
    assert not t.is_alive(), "the collector did not finish"
    return hc, result.get("rows")


def test_garbage_and_http_errors_are_gaps_not_crashes(tmp_path, kepler):
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    out = tmp_path / "bm_power_t.csv"
    _run_through_modes(k, out, 3.0, [(0.6, "garbage"), (0.7, "http500"), (0.6, "ok")])
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
    hc = HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=2.0, timeout=0.3,
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


# ---------------------------------------------------------------- Kepler's full exposition


@pytest.mark.parametrize("version", ["0.10", "0.7"])
def test_real_kepler_families_give_rows_of_the_vms_cpu_power(tmp_path, kepler, version):
    """Against every family a real Kepler serves: rows from the first scrapes on, CPU zones only."""
    k = kepler(VMS, version=version, update_interval=0.3, fixed_watts=FIXED, gpu=True)
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=2.5)
    rows_written = hc.run()
    assert rows_written >= (20 if version == "0.10" else 12)
    rows = _rows(out)
    zones = ["core", "package", "dram"] + (["uncore"] if version == "0.7" else [])
    assert [c for c in rows[0] if c.startswith("total_cpu_watts_")] == [f"total_cpu_watts_{z}" for z in zones]
    for r in rows:
        for z in ("core", "package", "dram"):
            # 0.7 rates are quantised by the scrape grid against Kepler's updates
            assert float(r[f"total_cpu_watts_{z}"]) == pytest.approx(0.6 * FIXED[z], rel=0.35 if version == "0.7" else 1e-9)
        assert r["vm_count"] == "1"


# ---------------------------------------------------------------- VM filter


def test_cli_names_and_patterns(tmp_path, kepler):
    vms = [Vm("0e0f4c8e-6d55-4bb1-9a3e-5f2f9c1d77aa", "fedora40", share=0.5),
           Vm("3c1d2e4f-0a9b-4c8d-8e7f-6a5b4c3d20db", "web[1]", share=0.25),
           Vm("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "webby", share=0.125)]
    k = kepler(vms, update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    expect = {("--vm-names", "web[1]"): (0.25, "{'web[1]'}"),
              ("--vm-names", "web[1],fedora40"): (0.75, "{'fedora40', 'web[1]'}"),
              ("--vm-pattern", "web*"): (0.375, "{'web*'}"),
              ("--vm-names", "fedora4"): (None, None),  # no prefix matching: no rows
              ("--vm-names", "fedora*"): (None, None)}  # nor globs in names
    for i, ((opt, value), (share, flt)) in enumerate(expect.items()):
        out = tmp_path / f"bm_power_{i}.csv"
        res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url", k.url,
                              opt, value, "--duration", "0.8", "--output", str(out),
                              "--log-file", str(tmp_path / "bm.log")], env=subprocess_env(),
                             capture_output=True, text=True, timeout=60)
        if share is None:
            assert res.returncode == 2 and "no matching VM" in res.stderr
            assert ("globs go in --vm-pattern" in res.stderr) is ("*" in value)
            continue
        assert res.returncode == 0, res.stderr
        rows = _rows(out)
        assert rows and all(float(r["total_cpu_watts_package"]) == pytest.approx(share * 40.0) for r in rows)
        assert all(r["vm_filter"] == flt for r in rows)


# ---------------------------------------------------------------- broken answers


def test_truncated_body_and_bad_status_line_are_gaps(tmp_path, kepler, caplog):
    """Kepler dying mid-answer (IncompleteRead) and a non-HTTP answer (BadStatusLine) are
    http.client.HTTPException, not OSError: they must be gaps like any other failure."""
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    out = tmp_path / "bm_power_t.csv"
    hc, rows_returned = _run_through_modes(k, out, 4.0, [(0.8, "truncate"), (0.8, "ok"), (0.8, "badstatus"),
                                                         (0.8, "ok")])
    assert rows_returned == hc.rows > 0  # run() returned: no crash
    gaps = json.loads(gaps_path(out).read_text())["gaps"]
    assert len(gaps) == 2
    assert gaps[0]["reason"].startswith("IncompleteRead")
    assert gaps[1]["reason"].startswith(("BadStatusLine", "RemoteDisconnected"))
    assert any(g["reason"].startswith("BadStatusLine") or g["last_reason"].startswith("BadStatusLine") for g in gaps)
    rows = _rows(out)
    ts = [float(r["timestamp"]) for r in rows]
    assert ts[0] < 0.8 and ts[-1] > 3.5  # before, between and after the bad answers
    assert any(1.7 < t < 2.3 for t in ts)
    assert all(float(r["total_cpu_watts_package"]) == pytest.approx(24.0) for r in rows)


def test_unexpected_error_in_a_scrape_is_a_gap_logged_once(tmp_path, kepler, caplog):
    """Last resort: an error nobody foresaw (here injected into the real fetcher for a few
    scrapes) is recorded as a gap with its reason, logged once with its traceback, and the run
    goes on."""
    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    out = tmp_path / "bm_power_t.csv"
    hc = HostCollector(k.url, out, vm_names=["fedora40"], interval=0.1, duration=2.5, max_backoff=0.2)
    real = hc.fetch
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if 5 <= calls["n"] <= 8:
            raise RuntimeError("boom")
        return real()

    hc.fetch = flaky
    with caplog.at_level("WARNING", logger="vmpower.collect.host"):
        rows = hc.run()
    assert rows > 10
    gaps = json.loads(gaps_path(out).read_text())["gaps"]
    assert len(gaps) == 1 and gaps[0]["reason"] == "RuntimeError: boom" and gaps[0]["attempts"] == 4
    logged = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_host_csv_absolute_time_is_what_the_merge_aligns_on(tmp_path, kepler):
    """Guest and host collectors side by side for a few seconds; the merge reads the host CSV's
    timestamp_absolute (epoch) and aligns on it rather than on the naive local times."""
    import pandas as pd

    from vmpower.cli import main
    from vmpower.collect.features import FeatureCollector
    from collect_helpers import REPO

    k = kepler(VMS[:1], update_interval=0.2, fixed_watts=FIXED)
    _wait_for_value(k)
    host_out = tmp_path / "bm_power_m.csv"
    vm_out = tmp_path / "vm_features_m.json"
    start = time.time() + 0.5
    hc = HostCollector(k.url, host_out, vm_names=["fedora40"], interval=0.1, duration=4.0, start_at=start)
    t = threading.Thread(target=hc.run)
    t.start()
    FeatureCollector(vm_out, interval=0.5, duration=3.0, kepler_url="none", use_perf=False, progress=False,
                     start_at=start + 0.3).run()
    t.join(15)
    naive_out = tmp_path / "bm_power_naive.csv"  # the same rows as an older collector wrote them
    pd.read_csv(host_out).drop(columns=["timestamp_absolute"]).to_csv(naive_out, index=False)
    bases = {}
    for host in (host_out, naive_out):
        quality = tmp_path / f"{host.stem}.quality.json"
        rc = main(["merge", "--vm-features", str(vm_out), "--bm-power", str(host), "--alignment", "window",
                   "--output", str(tmp_path / f"{host.stem}.parquet"), "--quality", str(quality),
                   "--config", str(REPO / "config.yaml")])
        assert rc == 0
        q = json.loads(quality.read_text())
        bases[host.name] = q["time_base"]
        assert q["match_rate"] >= 0.8
        merged = pd.read_parquet(tmp_path / f"{host.stem}.parquet")
        assert len(merged) >= 4 and (merged["power_package"] - 24.0).abs().max() < 1e-9
    assert bases == {host_out.name: "epoch", naive_out.name: "naive"}
