"""stress-ng workloads and sequences (``cpu_cycling:60,cpu_intensive:45``).

Each stress-ng invocation runs in its own process group (so one killpg stops it and all of
its workers), gets PR_SET_PDEATHSIG (dies if the collector is SIGKILLed) and a
``--timeout`` (dies on its own even if both of those fail).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from vmpower import workloads
from vmpower.errors import InputError

log = logging.getLogger("vmpower.collect.stress")

WORKLOADS: dict[str, str] = {
    "cpu_cycling": "Smooth cycling from 0% to 100% CPU load and back down (stress-ng --cpu-load steps)",
    "cpu_intensive": "High CPU utilization: prime numbers, matrix multiplication, integer arithmetic",
    "memory_intensive": "Memory allocation patterns, cache thrashing, sequential/random access",
    "mixed_workload": "Combination of CPU, memory and I/O stress",
    "bursty_workload": "Alternating high and low activity (15 s high, 15 s low)",
    "matrix_computation": "Matrix multiplication and FFT operations",
    "branch_intensive": "Branch prediction and conditional logic stress",
    "cache_thrashing": "Cache miss patterns and memory hierarchy stress",
    "idle": "No additional stress - system at natural load",
    "none": "No stress workload (default)",
}
ALIASES = {"cycle": "cpu_cycling", "cycling": "cpu_cycling", "mixed": "mixed_workload",
           "bursty": "bursty_workload", "matrix": "matrix_computation", "memory": "memory_intensive"}
BURST_SECONDS = 15.0


@dataclass(frozen=True)
class Phase:
    workload: str
    seconds: float


def list_workloads() -> str:
    width = max(map(len, WORKLOADS))
    return "\n".join(f"{name:<{width}}  {desc}" for name, desc in WORKLOADS.items())


def parse_sequence(spec: str, total: float | None, cpu_intensive_duration: float | None = None) -> list[Phase]:
    """``a:60,b:45`` → fixed lengths; ``a,b`` → equal shares of ``total``; mixed → the ones
    without a length share what the fixed ones leave (vmpower.workloads: the shared grammar).
    The list loops until the run ends; no spec means ``none``."""
    items = workloads.parse(spec or "none", "--stress-workload", ALIASES)
    workloads.check_names(items, WORKLOADS, "--stress-workload")
    if cpu_intensive_duration:  # the older tools' --cpu-intensive-duration
        items = [(n, float(cpu_intensive_duration) if n == "cpu_intensive" and s is None else s) for n, s in items]
    return [Phase(n, s) for n, s in workloads.resolve(items, total)]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def steps(workload: str, seconds: float, cpus: int | None = None) -> list[tuple[list[str] | None, float]]:
    """The stress-ng argument lists (None = no load) and their lengths for one phase."""
    n = cpus or _cpus()
    half = max(1, n // 2)
    if workload in ("idle", "none"):
        return [(None, seconds)]
    if workload == "cpu_cycling":
        levels = list(range(0, 101, 10)) + list(range(90, 0, -10))  # 0→100→10, then repeats from 0
        step = min(5.0, max(1.0, seconds / len(levels))) if seconds != float("inf") else 5.0
        out: list[tuple[list[str] | None, float]] = []
        elapsed = 0.0
        while elapsed < seconds:
            for level in levels:
                length = min(step, seconds - elapsed)
                if length <= 0:
                    break
                out.append(((["--cpu", str(n), "--cpu-load", str(level)] if level else None), length))
                elapsed += length
            if seconds == float("inf"):
                break
        return out
    if workload == "bursty_workload":
        out = []
        elapsed = 0.0
        high = True
        while elapsed < seconds:
            length = min(BURST_SECONDS, seconds - elapsed)
            out.append(((["--cpu", str(n), "--cpu-method", "all"] if high else None), length))
            elapsed += length
            high = not high
            if seconds == float("inf"):
                break
        return out
    args = {
        "cpu_intensive": ["--cpu", str(n), "--cpu-method", "all"],
        "memory_intensive": ["--vm", str(half), "--vm-bytes", "10%", "--vm-method", "all",
                             "--stream", "1"],
        "mixed_workload": ["--cpu", str(half), "--cpu-load", "70", "--vm", "1", "--vm-bytes", "5%",
                           "--hdd", "1", "--hdd-bytes", "32M"],
        "matrix_computation": ["--matrix", str(half), "--cpu", str(max(1, n - half)), "--cpu-method", "fft"],
        "branch_intensive": ["--branch", str(n)],
        "cache_thrashing": ["--cache", str(n)],
    }[workload]
    return [(args, seconds)]


def pdeathsig():
    # Runs in the child between fork and exec: die with SIGTERM if the collector dies.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class StressRunner:
    """Runs a workload sequence in a thread; ``workload_between(t0, t1)`` annotates samples."""

    def __init__(self, phases: list[Phase], total: float | None, *, clock: Callable[[], float] = time.monotonic,
                 temp_dir: str | None = None, stress_ng: str | None = None):
        self.phases = phases
        self.total = total
        self.clock = clock
        self.temp_dir = temp_dir or os.environ.get("TMPDIR", "/tmp")
        self.needs_stress = any(p.workload not in ("idle", "none") for p in phases)
        self.stress_ng = stress_ng or shutil.which("stress-ng")
        if self.needs_stress and not self.stress_ng:
            raise InputError("stress-ng", "not found on PATH (install the stress-ng package)")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.started_pids: list[int] = []
        # (clock time the workload started, name); the first entry is set by start().
        self.timeline: list[tuple[float, str]] = []

    def start(self) -> None:
        self.timeline = [(self.clock(), self.phases[0].workload)]
        self._thread = threading.Thread(target=self._run, name="stress", daemon=True)
        self._thread.start()

    def workload_between(self, t0: float, t1: float) -> str:
        """The workload that ran longest within [t0, t1]."""
        with self._lock:
            timeline = list(self.timeline)
        if not timeline:
            return self.phases[0].workload
        best, best_len = timeline[0][1], -1.0
        for i, (start, name) in enumerate(timeline):
            end = timeline[i + 1][0] if i + 1 < len(timeline) else float("inf")
            overlap = min(end, t1) - max(start, t0)
            if overlap > best_len:
                best, best_len = name, overlap
        return best

    def _mark(self, name: str) -> None:
        with self._lock:
            if self.timeline and self.timeline[-1][1] == name:
                return
            self.timeline.append((self.clock(), name))

    def _run(self) -> None:
        t_end = self.clock() + self.total if self.total else float("inf")
        try:
            while not self._stop.is_set():
                for phase in self.phases:
                    remaining = t_end - self.clock()
                    if remaining <= 0 or self._stop.is_set():
                        return
                    self._mark(phase.workload)
                    # an endless phase (one workload, no duration) restarts hourly: finite --timeout
                    length = min(phase.seconds, remaining, 3600.0)
                    log.info("workload %s for %.0f s", phase.workload, length)
                    self._run_phase(phase.workload, length)
        except Exception:  # never take the collector down; it keeps sampling at natural load
            log.exception("stress runner failed")
        finally:
            self._kill_current()

    def _run_phase(self, workload: str, seconds: float) -> None:
        for args, length in steps(workload, seconds):
            if self._stop.is_set():
                return
            until = self.clock() + length
            if args is not None:
                timeout = max(1, int(length + 0.999))
                cmd = [self.stress_ng, *args, "--timeout", f"{timeout}s", "--temp-path", self.temp_dir, "--quiet"]
                log.debug("starting %s", " ".join(cmd))
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL, start_new_session=True,
                                                  preexec_fn=pdeathsig)
                    self.started_pids.append(self._proc.pid)
            if self._stop.wait(max(0.0, until - self.clock())):
                return
            self._kill_current()

    def _kill_current(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        kill_group(proc)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._kill_current()
        if self._thread is not None:
            self._thread.join(timeout)
        self._kill_current()


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left; reap the leader."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
