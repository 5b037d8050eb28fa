"""Guest feature collector (``vmpower collect vm``): one sample per bracketed window.

At each tick we take one snapshot of every cumulative source (/proc/stat, /proc/vmstat,
disk and network counters, clocks); a sample is the difference of two consecutive snapshots,
so windows are contiguous and ``time_delta_seconds`` is their measured length. Counters are
written as counts within the window or per-second rates over it, never as totals since boot
(except ``node_process_cpu_seconds_total``, whose name says so).
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vmpower.collect.common import (JsonlWriter, Progress, Schedule, clean_number, finalize_json_array,
                                    iso_local, read_capped, setup_file_log, stop_on_signals)
from vmpower.errors import InputError

log = logging.getLogger("vmpower.collect.vm")

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
TARGET_ZONES = ["package", "core"]
PERF_FIELDS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches",
               "branch_misses", "page_faults", "context_switches")
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# /proc/stat counters as per-second rates over the window. Older collectors wrote the totals
# since boot under the names without "_rate"; the pipeline's ingest (ingest.cumulative_features)
# turns those into exactly these names, so files of both kinds give the same features.
SYS_RATES = {
    "sys_cpu_user_seconds_rate": lambda s: s.cpu["user"] / CLK_TCK,
    "sys_cpu_system_seconds_rate": lambda s: s.cpu["system"] / CLK_TCK,
    "sys_cpu_idle_seconds_rate": lambda s: s.cpu["idle"] / CLK_TCK,
    "sys_cpu_iowait_seconds_rate": lambda s: s.cpu["iowait"] / CLK_TCK,
    "sys_context_switches_rate": lambda s: s.ctxt,
    "sys_interrupts_rate": lambda s: s.intr,
    "sys_forks_rate": lambda s: s.forks,
}


@dataclass
class Snapshot:
    mono: float
    wall: float
    cpu: dict[str, int]  # jiffies, aggregate "cpu" line
    ctxt: int
    intr: int
    forks: int
    procs_running: int
    procs_blocked: int
    pgfault: int | None
    disk_read: int | None
    disk_write: int | None
    net_sent: int | None
    net_recv: int | None


def read_proc_stat(path: str = "/proc/stat") -> dict:
    out: dict = {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            key = parts[0]
            if key == "cpu":
                vals = [int(x) for x in parts[1:]]
                vals += [0] * (len(CPU_FIELDS) - len(vals))
                out["cpu"] = dict(zip(CPU_FIELDS, vals))
            elif key in ("ctxt", "processes", "procs_running", "procs_blocked"):
                out[key] = int(parts[1])
            elif key == "intr":
                out["intr"] = int(parts[1])
    if "cpu" not in out:
        raise InputError(path, "no aggregate 'cpu' line")
    return out


def read_pgfault(path: str = "/proc/vmstat") -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("pgfault "):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def take_snapshot(clock: Callable[[], float] = time.monotonic) -> Snapshot:
    import psutil

    stat = read_proc_stat()
    pgfault = read_pgfault()
    try:
        disk = psutil.disk_io_counters()
    except Exception:  # no block devices (containers)
        disk = None
    try:
        net = psutil.net_io_counters()
    except Exception:
        net = None
    mono, wall = clock(), time.time()
    return Snapshot(mono=mono, wall=wall, cpu=stat["cpu"], ctxt=stat.get("ctxt", 0), intr=stat.get("intr", 0),
                    forks=stat.get("processes", 0), procs_running=stat.get("procs_running", 0),
                    procs_blocked=stat.get("procs_blocked", 0), pgfault=pgfault,
                    disk_read=getattr(disk, "read_bytes", None), disk_write=getattr(disk, "write_bytes", None),
                    net_sent=getattr(net, "bytes_sent", None), net_recv=getattr(net, "bytes_recv", None))


def _delta(a, b):
    if a is None or b is None:
        return None
    d = b - a
    return d if d >= 0 else None  # counter wrapped or device removed: unknown, not negative


def _ratio(num, den):
    if num is None or den is None or den <= 0:
        return None
    return num / den


def os_features(prev: Snapshot, cur: Snapshot) -> dict:
    """OS metrics of the window [prev, cur]."""
    import psutil

    dt = cur.mono - prev.mono
    dcpu = {k: max(0, cur.cpu[k] - prev.cpu[k]) for k in CPU_FIELDS}
    total = sum(dcpu.values())

    def pct(k):
        return round(100.0 * dcpu[k] / total, 4) if total > 0 else 0.0

    busy = total - dcpu["idle"] - dcpu["iowait"]
    util = round(100.0 * busy / total, 4) if total > 0 else 0.0
    vm = psutil.virtual_memory()
    la1, la5, la15 = os.getloadavg()
    mib = 1024.0 * 1024.0
    dr, dw = _delta(prev.disk_read, cur.disk_read), _delta(prev.disk_write, cur.disk_write)
    out = {
        "cpu_utilization": util,
        "cpu_user_time": pct("user"),
        "cpu_system_time": pct("system"),
        "cpu_nice_time": pct("nice"),
        "cpu_iowait": pct("iowait"),
        "cpu_irq": pct("irq"),
        "cpu_softirq": pct("softirq"),
        "cpu_steal": pct("steal"),
        "cpu_idle": pct("idle"),
        "memory_usage_percent": vm.percent,
        "memory_available_gb": round(vm.available / 1024 ** 3, 6),
        "disk_io_read_mb": round(dr / mib, 6) if dr is not None else None,
        "disk_io_write_mb": round(dw / mib, 6) if dw is not None else None,
        "network_bytes_sent": _delta(prev.net_sent, cur.net_sent),
        "network_bytes_recv": _delta(prev.net_recv, cur.net_recv),
        "process_count": len(psutil.pids()),
        "load_average_1min": la1,
        "load_average_5min": la5,
        "load_average_15min": la15,
        "cpu_efficiency": round(busy / total, 6) if total > 0 else 0.0,
    }
    for name, total_of in SYS_RATES.items():
        delta = _delta(total_of(prev), total_of(cur))
        out[name] = delta / dt if delta is not None and dt > 0 else None
    out["sys_procs_running"] = cur.procs_running  # gauges
    out["sys_procs_blocked"] = cur.procs_blocked
    return out


class KeplerProcessSeconds:
    """Sum of ``kepler_process_cpu_seconds_total`` from a Kepler inside the VM, when reachable.

    After a failure it retries only every ``retry_after`` seconds so an absent Kepler does not
    slow down every sample."""

    NAMES = ("kepler_process_cpu_seconds_total", "kepler_process_cpu_seconds")

    def __init__(self, url: str | None, timeout: float = 0.3, retry_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, max_bytes: int | None = None):
        self.url = None if not url or url.lower() == "none" else url
        self.timeout = timeout
        if max_bytes is None:
            from vmpower import limits

            max_bytes = limits.defaults().max_http_response_bytes
        self.max_bytes = max_bytes  # limits.max_http_response_bytes: a larger answer is a failed read
        self.retry_after = retry_after
        self.clock = clock
        self._next_try = 0.0
        self._prev: float | None = None
        self.reachable = False

    def read_total(self) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        if self.url is None or self.clock() < self._next_try:
            return None
        try:
            deadline = time.monotonic() + 3 * self.timeout
            with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:
                text = read_capped(resp, self.max_bytes, deadline).decode("utf-8", "replace")
            total, seen = 0.0, False
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name in self.NAMES:
                        total += s.value
                        seen = True
            if not seen:
                raise ValueError("no kepler_process_cpu_seconds_total samples")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            if self.reachable or self._next_try == 0.0:
                log.info("VM Kepler %s not usable (%s); retrying every %.0f s", self.url, exc, self.retry_after)
            self.reachable = False
            self._prev = None
            self._next_try = self.clock() + self.retry_after
            return None
        if not self.reachable:
            log.info("VM Kepler %s reachable", self.url)
        self.reachable = True
        return total

    def features(self, dt: float) -> dict:
        total = self.read_total()
        if total is None:
            return {}
        prev, self._prev = self._prev, total
        out = {"node_process_cpu_seconds_total": total}
        if prev is not None and total >= prev:
            out["node_process_cpu_seconds_delta"] = total - prev
            out["node_process_cpu_seconds_rate"] = (total - prev) / dt if dt > 0 else None
        return out


class FeatureCollector:
    def __init__(self, output: str | os.PathLike, *, interval: float = 1.0, duration: float | None = 300.0,
                 workloads: str = "none", cpu_intensive_duration: float | None = None,
                 kepler_url: str | None = None, use_perf: bool = True, sync: bool = True,
                 start_at: float | None = None, csv_path: str | None = None, progress: bool | None = None,
                 vm_name: str | None = None, max_http_bytes: int | None = None):
        from vmpower.collect.stress import parse_sequence

        self.output = Path(output)
        self.interval = float(interval)
        self.duration = float(duration) if duration else None
        self.phases = parse_sequence(workloads, self.duration, cpu_intensive_duration)
        self.kepler = KeplerProcessSeconds(kepler_url, max_bytes=max_http_bytes)
        self.use_perf = use_perf
        self.sync = sync
        self.start_at = start_at
        self.csv_path = csv_path
        self.progress = progress
        self.vm_name = vm_name
        self.schedule = Schedule(self.interval, self.duration, absolute=sync)
        self.records: list[dict] = []
        self.stress = None
        self.perf = None
        self.perf_fields: dict[str, bool] = {}
        self.hostname = socket.gethostname()

    def stop(self) -> None:
        self.schedule.stop()

    def _start_perf(self) -> None:
        from vmpower.collect import perf as perfmod

        if not self.use_perf:
            log.info("perf disabled (--no-perf): counters recorded as null")
            return
        path, fields, reason = perfmod.probe()
        self.perf_fields = fields
        if path is None:
            log.warning("perf counters unavailable (%s): counters recorded as null, perf_available=false", reason)
            return
        usable = [f for f, ok in fields.items() if ok]
        missing = [f for f, ok in fields.items() if not ok]
        if missing:
            log.warning("perf cannot count %s here: recorded as null", ", ".join(missing))
        self.perf = perfmod.PerfStat(path, usable, interval_ms=min(100, max(10, int(self.interval * 250))))
        self.perf.start()

    def _perf_values(self, t0: float, t1: float) -> tuple[dict, bool]:
        from vmpower.collect.perf import HARDWARE_FIELDS

        values: dict = {f: None for f in PERF_FIELDS}
        counts = self.perf.counts(t0, t1, wait=min(1.0, 2 * self.interval) + 0.3) if self.perf else None
        if counts:
            values.update(counts)
        available = all(values[f] is not None for f in HARDWARE_FIELDS)
        return values, available

    def _sample(self, prev: Snapshot, cur: Snapshot, t_start: float) -> dict:
        dt = cur.mono - prev.mono
        perf_vals, perf_ok = self._perf_values(prev.mono, cur.mono)
        # software counts are exact from /proc when perf cannot count them
        if perf_vals["page_faults"] is None:
            perf_vals["page_faults"] = _delta(prev.pgfault, cur.pgfault)
        if perf_vals["context_switches"] is None:
            perf_vals["context_switches"] = _delta(prev.ctxt, cur.ctxt)
        rec = {
            "timestamp": round(cur.mono - t_start, 6),
            "timestamp_absolute": cur.wall,
            "timestamp_iso": iso_local(cur.wall),
            "time_delta_seconds": dt,
            "collection_interval": self.interval,
            "vm_hostname": self.hostname,
            "target_zones": TARGET_ZONES,
            "stress_workload": self.stress.workload_between(prev.mono, cur.mono) if self.stress else "none",
            "perf_available": perf_ok,
        }
        rec.update(perf_vals)
        rec.update(os_features(prev, cur))
        rec["instructions_per_cycle"] = _ratio(perf_vals["instructions"], perf_vals["cpu_cycles"])
        rec["cache_miss_ratio"] = _ratio(perf_vals["cache_misses"], perf_vals["cache_references"])
        rec["branch_miss_ratio"] = _ratio(perf_vals["branch_misses"], perf_vals["branches"])
        rec.update(self.kepler.features(dt))
        return {k: clean_number(v) for k, v in rec.items()}

    def run(self) -> list[dict]:
        from vmpower.collect.stress import StressRunner

        log.info("collecting VM features: duration=%s interval=%.3f output=%s workloads=%s%s",
                 self.duration or "until stopped", self.interval, self.output,
                 ",".join(f"{p.workload}:{p.seconds:g}" for p in self.phases),
                 f" vm={self.vm_name}" if self.vm_name else "")
        self.stress = StressRunner(self.phases, None)  # first: fails fast when stress-ng is missing
        self.output.parent.mkdir(parents=True, exist_ok=True)
        writer = JsonlWriter(self.output)
        progress = Progress("vm features", self.duration, enabled=self.progress)
        try:
            self._start_perf()
            start_mono = None
            if self.start_at is not None:
                late = time.time() - self.start_at
                if late > 0:
                    log.warning("started %.1f s after the common start instant; joining at the next tick "
                                "(raise the orchestrator's --start-delay)", late)
                start_mono = time.monotonic() - late
            prev: Snapshot | None = None
            t_start = None
            for _tick in self.schedule.ticks(start_mono):
                cur = take_snapshot()
                if prev is None:
                    t_start = cur.mono
                    # workloads start with the first window, so the annotation matches
                    self.stress.total = self.duration
                    self.stress.start()
                    prev = cur
                    continue
                rec = self._sample(prev, cur, t_start)
                writer.write(rec)
                self.records.append(rec)
                prev = cur
                progress.update(cur.mono - t_start,
                                f"{rec['stress_workload']} cpu {rec['cpu_utilization']:.0f}%")
                log.debug("sample %d: dt=%.4f cpu=%.1f%% workload=%s", len(self.records),
                          rec["time_delta_seconds"], rec["cpu_utilization"], rec["stress_workload"])
        finally:
            progress.close()
            self.stress.stop()
            if self.perf is not None:
                self.perf.stop()
            writer.close()
        finalize_json_array(self.output, self.records)
        if self.csv_path:
            write_csv(self.records, self.csv_path)
        if self.schedule.skipped:
            log.warning("%d ticks skipped (collector stalled); windows stay exact", self.schedule.skipped)
        (log.info if self.records else log.error)("wrote %d samples to %s", len(self.records), self.output)
        return self.records


def write_csv(records: list[dict], path: str | os.PathLike) -> None:
    from vmpower.io import atomic_path

    cols: list[str] = []
    for r in records:
        cols.extend(k for k in r if k not in cols)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in records:
                w.writerow({k: (";".join(v) if isinstance(v, list) else v) for k, v in r.items()})


def csv_path(args) -> str | None:
    """The CSV copy: --csv, else beside the JSON output (the seed's collector saves both)."""
    if args.no_csv:
        return None
    if args.csv:
        return args.csv
    out = Path(args.output)
    return None if out.suffix.lower() == ".csv" else str(out.with_suffix(".csv"))


def main_vm(args) -> int:
    from vmpower.collect.stress import list_workloads

    if args.list_workloads:
        print(list_workloads())
        return 0
    setup_file_log(args.log_file, args.verbose)
    collector = FeatureCollector(args.output, interval=args.interval, duration=args.duration or None,
                                 workloads=args.workloads, cpu_intensive_duration=args.cpu_intensive_duration,
                                 kepler_url=args.kepler_url, use_perf=not args.no_perf, sync=not args.no_sync,
                                 start_at=args.start_at, csv_path=csv_path(args), vm_name=args.vm_name)
    stopped = threading.Event()

    def on_stop():
        stopped.set()
        collector.stop()

    with stop_on_signals(on_stop):
        records = collector.run()
    print(f"{len(records)} samples -> {args.output}" + (f" and {collector.csv_path}" if collector.csv_path else "")
          + (" (stopped early)" if stopped.is_set() else ""))
    return 0
