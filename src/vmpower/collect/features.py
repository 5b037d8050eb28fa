"""Guest feature collector (``vmpower collect vm``): one sample per bracketed window, written
as JSON Lines while running and a JSON array (and a CSV copy) at the end.

The records come from vmpower.collect.sampler (the sampling API ``vmpower serve`` uses too):
counters are counts within the window or per-second rates over it, never totals since boot
(except ``node_process_cpu_seconds_total``, whose name says so).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

from vmpower.collect.common import JsonlWriter, Progress, Schedule, finalize_json_array
from vmpower.collect.sampler import Sampler

log = logging.getLogger("vmpower.collect.vm")


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
        self.sampler = Sampler(self.interval, use_perf=use_perf, kepler_url=kepler_url, max_http_bytes=max_http_bytes)
        self.sync = sync
        self.start_at = start_at
        self.csv_path = csv_path
        self.progress = progress
        self.vm_name = vm_name
        self.schedule = Schedule(self.interval, self.duration, absolute=sync)
        self.records: list[dict] = []
        self.stress = None

    def stop(self) -> None:
        self.schedule.stop()

    def _start_mono(self) -> float | None:
        """The monotonic time of the common start instant (``start_at``), None to start now."""
        if self.start_at is None:
            return None
        late = time.time() - self.start_at
        if late > 0:
            log.warning("started %.1f s after the common start instant; joining at the next tick "
                        "(raise the orchestrator's --start-delay)", late)
        return time.monotonic() - late

    def _collect(self, writer: JsonlWriter, progress: Progress) -> None:
        for _tick in self.schedule.ticks(self._start_mono()):
            rec = self.sampler.next()
            if rec is None:
                # workloads start with the first window, so the annotation matches
                self.stress.total = self.duration
                self.stress.start()
                continue
            writer.write(rec)
            self.records.append(rec)
            progress.update(rec["timestamp"], f"{rec['stress_workload']} cpu {rec['cpu_utilization']:.0f}%")
            log.debug("sample %d: dt=%.4f cpu=%.1f%% workload=%s", len(self.records),
                      rec["time_delta_seconds"], rec["cpu_utilization"], rec["stress_workload"])

    def run(self) -> list[dict]:
        from vmpower.collect.stress import StressRunner

        log.info("collecting VM features: duration=%s interval=%.3f output=%s workloads=%s%s",
                 self.duration or "until stopped", self.interval, self.output,
                 ",".join(f"{p.workload}:{p.seconds:g}" for p in self.phases),
                 f" vm={self.vm_name}" if self.vm_name else "")
        self.stress = StressRunner(self.phases, None)  # first: fails fast when stress-ng is missing
        self.sampler.workload = self.stress.workload_between
        self.output.parent.mkdir(parents=True, exist_ok=True)
        writer = JsonlWriter(self.output)
        progress = Progress("vm features", self.duration, enabled=self.progress)
        try:
            self.sampler.start()
            self._collect(writer, progress)
        finally:
            progress.close()
            self.stress.stop()
            self.sampler.stop()
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
