"""System-wide perf counters from one long-lived ``perf stat -a -I`` process.

perf prints counts per short interval (default 100 ms) with its own relative timestamps.
We map those to our monotonic clock (offset = min over lines of arrival - perf time, i.e.
the least-delayed line) and sum the intervals into each sample window, splitting the ones that
straddle a window edge proportionally. One process for the whole run keeps the overhead low
(spawning perf per window costs tens of ms of CPU each time and skews the features).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from typing import Callable

log = logging.getLogger("vmpower.collect.perf")

# output field -> perf event
EVENTS = {
    "cpu_cycles": "cycles",
    "instructions": "instructions",
    "cache_references": "cache-references",
    "cache_misses": "cache-misses",
    "branches": "branches",
    "branch_misses": "branch-misses",
    "page_faults": "page-faults",
    "context_switches": "context-switches",
}
HARDWARE_FIELDS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses")
_EVENT_TO_FIELD = {v: k for k, v in EVENTS.items()}
_EVENT_TO_FIELD.update({"cpu-cycles": "cpu_cycles", "faults": "page_faults", "cs": "context_switches"})


def _field_of(event: str) -> str | None:
    name = event.strip()
    if "/" in name:  # hybrid CPUs print cpu_core/cycles/ and cpu_atom/cycles/: summed
        parts = [p for p in name.split("/") if p]
        name = parts[1] if len(parts) > 1 else parts[0]
    name = name.split(":")[0]
    return _EVENT_TO_FIELD.get(name)


def _parse_value(text: str) -> float | None:
    text = text.strip()
    if not text or text.startswith("<"):  # <not supported>, <not counted>
        return None
    try:
        return float(text)
    except ValueError:
        return None


def probe(perf: str | None = None, timeout: float = 10.0) -> tuple[str | None, dict[str, bool], str]:
    """Which counters ``perf stat -a`` can read here: (perf path, {field: ok}, reason)."""
    perf = perf or shutil.which("perf")
    fields = {f: False for f in EVENTS}
    if not perf:
        return None, fields, "perf not found"
    cmd = [perf, "stat", "-a", "-x,", "-e", ",".join(EVENTS.values()), "--", "sleep", "0.05"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, fields, f"perf failed: {exc}"
    for line in res.stderr.splitlines():
        parts = line.split(",")
        if len(parts) >= 3:
            field = _field_of(parts[2])
            if field and _parse_value(parts[0]) is not None:
                fields[field] = True
    if not any(fields.values()):
        reason = (res.stderr.strip().splitlines() or ["no counters"])[-1]
        return None, fields, f"perf stat -a gave no counters (exit {res.returncode}): {reason}"
    return perf, fields, "ok"


class PerfStat:
    def __init__(self, perf: str, fields: list[str], interval_ms: int = 100,
                 clock: Callable[[], float] = time.monotonic):
        self.perf = perf
        self.fields = list(fields)
        self.interval_ms = int(interval_ms)
        self.clock = clock
        self._lock = threading.Condition()
        # contiguous intervals (perf_t0, perf_t1, {field: value|None})
        self._intervals: list[tuple[float, float, dict[str, float | None]]] = []
        self._offset: float | None = None  # monotonic = perf time + offset
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.failed = False

    def start(self) -> None:
        events = ",".join(EVENTS[f] for f in self.fields)
        cmd = [self.perf, "stat", "-a", "-x,", "-I", str(self.interval_ms), "-e", events]
        from vmpower.collect.stress import pdeathsig

        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
                                      preexec_fn=pdeathsig)
        self._thread = threading.Thread(target=self._reader, name="perf", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        group_t: float | None = None
        group: dict[str, float | None] = {}
        last_t = 0.0
        for line in self._proc.stderr:
            arrival = self.clock()
            parts = line.strip().split(",")
            if len(parts) < 4:
                continue
            try:
                ts = float(parts[0])
            except ValueError:
                continue
            if group_t is not None and ts != group_t:
                self._add(last_t, group_t, group)
                last_t, group = group_t, {}
            group_t = ts
            field = _field_of(parts[3])
            if field:
                value = _parse_value(parts[1])
                prev = group.get(field, 0.0)
                group[field] = None if value is None or (field in group and prev is None) else (prev or 0.0) + value
            with self._lock:
                est = arrival - ts
                if self._offset is None or est < self._offset:
                    self._offset = est
        if group_t is not None and group:
            self._add(last_t, group_t, group)
        with self._lock:
            self.failed = True
            self._lock.notify_all()

    def _add(self, t0: float, t1: float, values: dict[str, float | None]) -> None:
        with self._lock:
            self._intervals.append((t0, t1, values))
            # keep memory bounded on long runs: windows never look back more than a few minutes
            if len(self._intervals) > 20000:
                del self._intervals[:10000]
            self._lock.notify_all()

    def counts(self, t0: float, t1: float, wait: float = 1.0) -> dict[str, float | None] | None:
        """Counts within [t0, t1] (monotonic). None when perf has no data covering it."""
        deadline = self.clock() + wait
        with self._lock:
            while True:
                if self._offset is not None and self._intervals and \
                        self._intervals[-1][1] + self._offset >= t1:
                    break
                remaining = deadline - self.clock()
                if remaining <= 0 or self.failed:
                    break
                self._lock.wait(min(remaining, 0.05))
            if self._offset is None or not self._intervals:
                return None
            off = self._offset
            first = self._intervals[0][0] + off
            last = self._intervals[-1][1] + off
            if first > t0 + 0.5 * self.interval_ms / 1000 or last < t1 - 0.5 * self.interval_ms / 1000:
                return None  # not covered (perf started late or died)
            out: dict[str, float | None] = {f: 0.0 for f in self.fields}
            for a, b, values in self._intervals:
                a, b = a + off, b + off
                if b <= t0 or a >= t1:
                    continue
                frac = (min(b, t1) - max(a, t0)) / (b - a) if b > a else 0.0
                for f in self.fields:
                    v = values.get(f)
                    if out[f] is None or v is None:
                        out[f] = None
                    else:
                        out[f] += v * frac
        return {f: (round(v) if v is not None else None) for f, v in out.items()}

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            from vmpower.collect.stress import kill_group

            kill_group(self._proc, grace=2.0)
        if self._thread is not None:
            self._thread.join(3.0)
