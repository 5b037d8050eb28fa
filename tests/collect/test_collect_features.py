"""The guest feature collector, for real: this machine's /proc, real stress-ng, real perf."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from collect_helpers import REPO, live_stress_ng, subprocess_env

from vmpower.collect import procfs
from vmpower.collect import perf as perfmod
from vmpower.collect.features import FeatureCollector

COUNTERS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses")
REQUIRED = {
    "timestamp", "timestamp_absolute", "timestamp_iso", "time_delta_seconds", "collection_interval",
    "vm_hostname", "target_zones", "stress_workload", "perf_available", *COUNTERS, "page_faults",
    "context_switches", "cpu_utilization", "cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait",
    "cpu_irq", "cpu_softirq", "cpu_steal", "cpu_idle", "memory_usage_percent", "memory_available_gb",
    "disk_io_read_mb", "disk_io_write_mb", "network_bytes_sent", "network_bytes_recv", "process_count",
    "load_average_1min", "load_average_5min", "load_average_15min", "instructions_per_cycle",
    "cache_miss_ratio", "branch_miss_ratio", "cpu_efficiency", "sys_cpu_user_seconds_rate",
    "sys_cpu_system_seconds_rate", "sys_cpu_idle_seconds_rate", "sys_cpu_iowait_seconds_rate",
    "sys_context_switches_rate", "sys_interrupts_rate", "sys_forks_rate", "sys_procs_running", "sys_procs_blocked",
}
# what older collectors wrote: totals since boot (the pipeline turns them into <name>_rate)
LEGACY_CUMULATIVE = ("sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_idle_seconds",
                     "sys_cpu_iowait_seconds", "sys_context_switches", "sys_interrupts", "sys_forks")

needs_stress = pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")


def _collector_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmpower", "collect", "vm", "--output", str(out), "--kepler-url", "none",
            "--log-file", str(out.parent / "vm.log"), *extra]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_lines(path: Path, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {n} lines")


def _stress_pids_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True) if c.name().startswith("stress-ng")]
    except psutil.NoSuchProcess:
        return []


def _assert_gone(pids: list[int], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in live_stress_ng() if p.pid in pids]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"stress-ng left running: {alive}")


@pytest.mark.stress
@needs_stress
def test_real_run_records_load_rise_and_exact_windows(tmp_path):
    out = tmp_path / "vm_features_t.json"
    res = subprocess.run(_collector_cmd(out, "--duration", "8", "--interval", "1",
                                        "--stress-workload", "idle:4,cpu_intensive:4"),
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())  # finished: a JSON array
    assert isinstance(data, list) and 7 <= len(data) <= 8
    for rec in data:
        assert REQUIRED <= rec.keys(), REQUIRED - rec.keys()
        assert rec["collection_interval"] == 1.0
        assert 0.0 <= rec["cpu_utilization"] <= 100.0
        assert rec["cpu_idle"] + rec["cpu_utilization"] + rec["cpu_iowait"] == pytest.approx(100.0, abs=0.01)
        assert rec["timestamp_iso"][:19] == time.strftime("%Y-%m-%dT%H:%M:%S",
                                                          time.localtime(rec["timestamp_absolute"]))
    # bracketed windows: contiguous, measured length, ~ the interval
    for a, b in zip(data, data[1:]):
        assert b["timestamp"] - a["timestamp"] == pytest.approx(b["time_delta_seconds"], abs=2e-6)
        assert b["timestamp_absolute"] - a["timestamp_absolute"] == pytest.approx(b["time_delta_seconds"],
                                                                                  abs=0.01)
        assert 0.8 < b["time_delta_seconds"] < 1.2
    for rec in data:  # rates, never totals since boot
        assert not set(LEGACY_CUMULATIVE) & rec.keys()
        assert rec["sys_context_switches_rate"] > 0 and rec["sys_cpu_user_seconds_rate"] >= 0
    assert sum(r["time_delta_seconds"] for r in data) == pytest.approx(data[-1]["timestamp"], abs=1.1)
    # workload annotation and the load it causes
    assert [r["stress_workload"] for r in data[:3]] == ["idle"] * 3
    assert [r["stress_workload"] for r in data[-3:]] == ["cpu_intensive"] * 3
    idle = [r["cpu_utilization"] for r in data[:3]]
    busy = [r["cpu_utilization"] for r in data[-3:]]
    if min(idle) > 85:
        pytest.skip(f"machine already saturated by other work (idle windows at {idle} %)")
    assert min(busy) > 90.0
    assert sum(busy) / 3 > sum(idle) / 3 + 5


@pytest.mark.stress
@needs_stress
def test_end_of_duration_stops_every_stress_process(tmp_path):
    c = FeatureCollector(tmp_path / "f.json", interval=0.5, duration=3.0, workloads="bursty_workload",
                         kepler_url="none", use_perf=False, progress=False)
    data = c.run()
    assert c.stress.started_pids, "bursty_workload starts stress-ng in its high phase"
    assert {r["stress_workload"] for r in data} == {"bursty_workload"}
    _assert_gone(c.stress.started_pids, timeout=0.5)
    # the stress-ng workers (children of those pids) are gone too
    assert not [p for p in live_stress_ng() if p.ppid() in c.stress.started_pids]


def test_perf_counters_are_counts_or_null_never_silent_zero(tmp_path):
    path, fields, reason = perfmod.probe()
    c = FeatureCollector(tmp_path / "f.json", interval=0.5, duration=2.0, workloads="none", kepler_url="none",
                         progress=False)
    data = c.run()
    assert len(data) >= 3
    hw_ok = path is not None and all(fields[f] for f in perfmod.HARDWARE_FIELDS)
    for rec in data:
        assert rec["perf_available"] is hw_ok
        for f in COUNTERS:
            if hw_ok:
                assert isinstance(rec[f], int) and rec[f] > 0
            else:
                assert rec[f] is None  # absent, not 0
        assert rec["instructions_per_cycle"] is None or rec["instructions_per_cycle"] > 0
        # software counts always present (perf or /proc)
        assert rec["context_switches"] > 0 and rec["page_faults"] >= 0

    c2 = FeatureCollector(tmp_path / "g.json", interval=0.5, duration=1.0, kepler_url="none", use_perf=False,
                          progress=False)
    for rec in c2.run():
        assert rec["perf_available"] is False and all(rec[f] is None for f in COUNTERS)


@pytest.mark.stress
@needs_stress
def test_sigkill_leaves_valid_jsonl_and_no_stress_orphans(tmp_path):
    out = tmp_path / "vm_features_k.json"
    proc = subprocess.Popen(_collector_cmd(out, "--duration", "60", "--interval", "0.5",
                                           "--stress-workload", "cpu_intensive"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_lines(out, 4)
        stress = _stress_pids_of(proc.pid)
        assert stress, "stress-ng should be running under the collector"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is a complete object
    assert len(records) >= 4
    assert all(r["stress_workload"] == "cpu_intensive" for r in records)
    # PR_SET_PDEATHSIG stops stress-ng even though the collector could not clean up
    _assert_gone(stress)


@pytest.mark.stress
@needs_stress
def test_sigterm_finalizes_array_and_stops_stress(tmp_path):
    out = tmp_path / "vm_features_s.json"
    proc = subprocess.Popen(_collector_cmd(out, "--duration", "60", "--interval", "0.5",
                                           "--stress-workload", "cpu_cycling:4,memory_intensive:4"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_lines(out, 3)
        stress = _stress_pids_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) >= 3
    assert not [p for p in live_stress_ng() if p.pid in stress]
    _assert_gone(stress, timeout=1.0)
    log = (tmp_path / "vm.log").read_text()
    assert "received SIGTERM" in log and "wrote" in log


def test_vm_kepler_process_seconds(tmp_path, kepler):
    k = kepler()  # Kepler 0.10 serves kepler_process_cpu_seconds_total (and process_cpu_seconds_total: not it)
    c = FeatureCollector(tmp_path / "f.json", interval=0.5, duration=2.0, kepler_url=k.url, use_perf=False,
                         progress=False)
    data = c.run()
    assert all("node_process_cpu_seconds_total" in r for r in data)
    for a, b in zip(data, data[1:]):
        delta = b["node_process_cpu_seconds_total"] - a["node_process_cpu_seconds_total"]
        assert b["node_process_cpu_seconds_delta"] == pytest.approx(delta)
        assert b["node_process_cpu_seconds_rate"] == pytest.approx(delta / b["time_delta_seconds"])


def test_list_workloads_and_bad_workload(tmp_path):
    env = subprocess_env()
    res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "vm", "--list-workloads"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert names == ["cpu_cycling", "cpu_intensive", "memory_intensive", "mixed_workload", "bursty_workload",
                     "matrix_computation", "branch_intensive", "cache_thrashing", "idle", "none"]
    res = subprocess.run(_collector_cmd(tmp_path / "x.json", "--duration", "1", "--workloads", "nope:10"),
                         env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("vmpower collect: error: --stress-workload: unknown")


# ---------------------------------------------------------------- rates, not totals since boot


def _spy_snapshots(monkeypatch) -> list:
    """Record the real /proc snapshots the collector takes (it still reads /proc itself)."""
    snaps = []
    real = procfs.take_snapshot

    def spy(*args, **kw):
        snap = real(*args, **kw)
        snaps.append(snap)
        return snap

    monkeypatch.setattr(procfs, "take_snapshot", spy)
    return snaps


# legacy name -> its total since boot in a snapshot, as older collectors wrote it: the same
# /proc quantity the collector takes the rate of (the next test checks rate = delta / window).
SYS_TOTALS = {name.removesuffix("_rate"): total for name, total in procfs.SYS_RATES.items()}


def test_sys_rates_are_proc_deltas_over_the_exact_window(tmp_path, monkeypatch):
    snaps = _spy_snapshots(monkeypatch)
    c = FeatureCollector(tmp_path / "f.json", interval=0.5, duration=3.0, kepler_url="none", use_perf=False,
                         progress=False)
    data = c.run()
    assert len(data) >= 5 and len(snaps) == len(data) + 1
    for rec, prev, cur in zip(data, snaps, snaps[1:]):
        dt = rec["time_delta_seconds"]
        assert dt == cur.mono - prev.mono
        for legacy, total in SYS_TOTALS.items():
            assert legacy not in rec
            assert rec[f"{legacy}_rate"] == pytest.approx((total(cur) - total(prev)) / dt, rel=1e-12, abs=1e-12)
        # every CPU spends one second per second in some state: user+system+idle+iowait is at
        # most the CPU count (nice/irq/softirq/steal make up the rest)
        cpu_seconds = sum(rec[f"sys_cpu_{f}_seconds_rate"] for f in ("user", "system", "idle", "iowait"))
        assert 0.3 * psutil.cpu_count() < cpu_seconds < 1.15 * psutil.cpu_count()
        assert rec["sys_context_switches_rate"] > 0 and rec["sys_interrupts_rate"] > 0


def test_new_rates_match_what_the_pipeline_makes_of_legacy_totals_and_serve_gets_them(tmp_path, monkeypatch):
    """Files of older collectors carry the totals since boot under the legacy names; ingest turns
    them into <name>_rate. A new file must give the same feature names and values, and the live
    path of `vmpower serve` every feature a model trained on either kind needs."""
    import numpy as np
    import pandas as pd
    import yaml

    from vmpower.pipeline import ingest

    from vmpower.serving import live
    from vmpower.pipeline.merge import MergeSettings, vm_feature_frame

    snaps = _spy_snapshots(monkeypatch)
    new_path = tmp_path / "vm_features_new.json"
    data = FeatureCollector(new_path, interval=0.5, duration=3.0, kepler_url="none", use_perf=False,
                            progress=False).run()
    legacy = []
    for rec, cur in zip(data, snaps[1:]):  # what the old collector wrote for the same windows
        old = {k: v for k, v in rec.items() if not (k.startswith("sys_") and k.endswith("_rate"))}
        old.update({name: total(cur) for name, total in SYS_TOTALS.items()})
        legacy.append(old)
    old_path = tmp_path / "vm_features_old.json"
    old_path.write_text(json.dumps(legacy))
    settings = MergeSettings.from_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert set(SYS_TOTALS) <= set(settings.cumulative_features)
    new_f, new_names, _ = vm_feature_frame(ingest.read_vm_features(new_path), settings)
    old_f, old_names, _ = vm_feature_frame(ingest.read_vm_features(old_path), settings)
    assert sorted(new_names) == sorted(old_names)
    rates = [f"{name}_rate" for name in SYS_TOTALS]
    assert set(rates) <= set(new_names)
    # the legacy rate spans wall-clock timestamps, the new one the monotonic window: same thing
    np.testing.assert_allclose(new_f[rates].to_numpy()[1:], old_f[rates].to_numpy()[1:], rtol=2e-3)
    assert old_f["_drop"].iloc[0] == "rate_warmup" and new_f["_drop"].isna().all()  # no warm-up sample lost

    serve_settings = live.load_settings(str(REPO / "config.yaml"))
    for prev, cur in zip(data, data[1:]):
        feats, drop = live.features_of(prev, cur, serve_settings)
        row = feats.iloc[-1]
        assert pd.isna(drop.iloc[-1])
        assert set(old_names) <= set(feats.columns)
        for name in old_names:
            if np.isfinite(old_f[name].iloc[1:]).all():  # a feature the legacy file has: live has it too
                assert np.isfinite(row[name]), name
        for name in rates:
            assert row[name] == pytest.approx(cur[name], rel=1e-12)


# ---------------------------------------------------------------- outputs and the progress display


def test_json_and_csv_outputs_and_quiet_when_not_a_tty(tmp_path):
    """As the seed's collector: JSON and CSV; with stdout not a TTY, no progress output at all."""
    out = tmp_path / "vm_features_q.json"
    res = subprocess.run(_collector_cmd(out, "--duration", "1.5", "--interval", "0.5", "--no-perf"),
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    csv_path = out.with_suffix(".csv")
    assert res.stdout == f"{len(data)} samples -> {out} and {csv_path}\n"  # one line, no bar
    with open(csv_path, newline="") as fh:
        rows = list(__import__("csv").DictReader(fh))
    assert len(rows) == len(data) >= 2
    assert [float(r["sys_context_switches_rate"]) for r in rows] == [r["sys_context_switches_rate"] for r in data]
    out2 = tmp_path / "vm_features_n.json"
    res = subprocess.run(_collector_cmd(out2, "--duration", "1", "--interval", "0.5", "--no-perf", "--no-csv"),
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not out2.with_suffix(".csv").exists()


def _run_on_pty(cmd: list[str], timeout: float = 60.0) -> str:
    import os
    import pty
    import select

    master, slave = pty.openpty()
    env = dict(subprocess_env(), TERM="xterm-256color", COLUMNS="120")
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_renders_on_a_tty(tmp_path):
    out = tmp_path / "vm_features_tty.json"
    text = _run_on_pty(_collector_cmd(out, "--duration", "2", "--interval", "0.5", "--no-perf"))
    assert "vm features" in text  # rich's bar with its description ...
    assert "/2 s" in text and "\x1b[" in text  # ... its progress and terminal control sequences
    assert text.rstrip().endswith(f"and {out.with_suffix('.csv')}")
