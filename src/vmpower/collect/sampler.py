"""A live guest sample, the public sampling API of the collect layer: the file collector
(``vmpower collect vm``) and ``vmpower serve`` build their records with ``Sampler``.

A record is the window between two consecutive /proc snapshots (vmpower.collect.procfs), with
perf's counts for exactly that window (vmpower.collect.perf) and the process CPU seconds of a
Kepler inside the VM when one answers.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Callable

from vmpower.collect import procfs
from vmpower.collect.common import clean_number, iso_local, read_capped
from vmpower.names import ZONES

log = logging.getLogger("vmpower.collect.vm")

TARGET_ZONES = list(ZONES[:2])  # the seed collector's target_zones field: package, core
PERF_FIELDS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches",
               "branch_misses", "page_faults", "context_switches")


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


class Sampler:
    """Records of consecutive windows.

    ``start()`` starts perf (unless ``use_perf`` is off or perf cannot count here), ``next()``
    takes a snapshot and returns the record of the window since the previous one (None for the
    first), ``record(prev, cur, t_start)`` builds one from two snapshots, ``durations`` holds the
    seconds per source of the last ``next()`` (proc, and perf and kepler when in use), ``stop()``
    stops perf. ``workload(t0, t1)`` names the workload of a window (default: "none")."""

    def __init__(self, interval: float, *, use_perf: bool = True, kepler_url: str | None = None,
                 max_http_bytes: int | None = None, workload: Callable[[float, float], str] | None = None):
        self.interval = float(interval)
        self.use_perf = use_perf
        self.kepler = KeplerProcessSeconds(kepler_url, max_bytes=max_http_bytes)
        self.workload = workload
        self.perf = None
        self.perf_fields: dict[str, bool] = {}
        self.hostname = socket.gethostname()
        self.durations: dict[str, float] = {}
        self._spent = {"perf": 0.0, "kepler": 0.0}
        self._prev: procfs.Snapshot | None = None
        self._t_start: float | None = None

    @property
    def perf_available(self) -> bool:
        """perf counts this window's hardware events (started and usable here)."""
        return self.perf is not None

    @property
    def sources(self) -> tuple[str, ...]:
        """The timed sources besides /proc: perf when it counts, kepler when a URL is set."""
        return (("perf",) if self.perf is not None else ()) + (("kepler",) if self.kepler.url is not None else ())

    def start(self) -> None:
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

    def stop(self) -> None:
        if self.perf is not None:
            self.perf.stop()

    def perf_values(self, t0: float, t1: float) -> tuple[dict, bool]:
        """(perf counts of the window [t0, t1], None where not counted; all hardware counters counted)."""
        from vmpower.collect.perf import HARDWARE_FIELDS

        values: dict = {f: None for f in PERF_FIELDS}
        counts = self.perf.counts(t0, t1, wait=min(1.0, 2 * self.interval) + 0.3) if self.perf else None
        if counts:
            values.update(counts)
        available = all(values[f] is not None for f in HARDWARE_FIELDS)
        return values, available

    def record(self, prev: procfs.Snapshot, cur: procfs.Snapshot, t_start: float) -> dict:
        """The record of the window [prev, cur]; ``timestamp`` counts from ``t_start``."""
        dt = cur.mono - prev.mono
        t0 = time.perf_counter()
        perf_vals, perf_ok = self.perf_values(prev.mono, cur.mono)
        self._spent["perf"] += time.perf_counter() - t0
        # software counts are exact from /proc when perf cannot count them
        if perf_vals["page_faults"] is None:
            perf_vals["page_faults"] = procfs.delta(prev.pgfault, cur.pgfault)
        if perf_vals["context_switches"] is None:
            perf_vals["context_switches"] = procfs.delta(prev.ctxt, cur.ctxt)
        rec = {
            "timestamp": round(cur.mono - t_start, 6),
            "timestamp_absolute": cur.wall,
            "timestamp_iso": iso_local(cur.wall),
            "time_delta_seconds": dt,
            "collection_interval": self.interval,
            "vm_hostname": self.hostname,
            "target_zones": TARGET_ZONES,
            "stress_workload": self.workload(prev.mono, cur.mono) if self.workload else "none",
            "perf_available": perf_ok,
        }
        rec.update(perf_vals)
        rec.update(procfs.os_features(prev, cur))
        rec["instructions_per_cycle"] = procfs.ratio(perf_vals["instructions"], perf_vals["cpu_cycles"])
        rec["cache_miss_ratio"] = procfs.ratio(perf_vals["cache_misses"], perf_vals["cache_references"])
        rec["branch_miss_ratio"] = procfs.ratio(perf_vals["branch_misses"], perf_vals["branches"])
        t0 = time.perf_counter()
        rec.update(self.kepler.features(dt))
        self._spent["kepler"] += time.perf_counter() - t0
        return {k: clean_number(v) for k, v in rec.items()}

    def next(self) -> dict | None:
        """Snapshot now; the record of the window since the last snapshot (None for the first).
        A failed snapshot keeps the previous one; a failed record still starts the next window here."""
        t0 = time.perf_counter()
        self._spent = {"perf": 0.0, "kepler": 0.0}
        cur = procfs.take_snapshot()
        prev, self._prev = self._prev, cur
        if prev is None:
            self._t_start = cur.mono
            return None
        rec = self.record(prev, cur, self._t_start)
        used = {k: v for k, v in self._spent.items() if k in self.sources}
        self.durations = {"proc": time.perf_counter() - t0 - sum(used.values()), **used}
        return rec
