"""/proc and psutil snapshots of the guest, and the OS metrics of the window between two.

At each tick we take one snapshot of every cumulative source (/proc/stat, /proc/vmstat,
disk and network counters, clocks); a sample is the difference of two consecutive snapshots,
so windows are contiguous and ``time_delta_seconds`` is their measured length. Counters are
written as counts within the window or per-second rates over it, never as totals since boot.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from vmpower.errors import InputError

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
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


def delta(a, b):
    if a is None or b is None:
        return None
    d = b - a
    return d if d >= 0 else None  # counter wrapped or device removed: unknown, not negative


def ratio(num, den):
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
    dr, dw = delta(prev.disk_read, cur.disk_read), delta(prev.disk_write, cur.disk_write)
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
        "network_bytes_sent": delta(prev.net_sent, cur.net_sent),
        "network_bytes_recv": delta(prev.net_recv, cur.net_recv),
        "process_count": len(psutil.pids()),
        "load_average_1min": la1,
        "load_average_5min": la5,
        "load_average_15min": la15,
        "cpu_efficiency": round(busy / total, 6) if total > 0 else 0.0,
    }
    for name, total_of in SYS_RATES.items():
        d = delta(total_of(prev), total_of(cur))
        out[name] = d / dt if d is not None and dt > 0 else None
    out["sys_procs_running"] = cur.procs_running  # gauges
    out["sys_procs_blocked"] = cur.procs_blocked
    return out
