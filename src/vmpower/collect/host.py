"""Host power collector (``vmpower collect host``): Kepler VM power every 0.1 s.

Writes the host power file of docs/data-format.md incrementally (CSV rows, or JSON Lines that
become a JSON array at the end). When Kepler is down, slow or returns garbage it retries with
backoff, records the gap (log + ``gaps_<output stem>.json`` beside the output; the name does
not match ``bm_power_*`` so the run directory keeps exactly one power file) and carries on.
No row is written without a value for every zone column (never NaN). Whatever goes wrong with
one scrape (refused, reset, truncated body, bad status line, unexpected error) is a gap, never a
crash.
"""

from __future__ import annotations

import csv
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from vmpower.collect.common import (JsonlWriter, Progress, ResponseTooLarge, Schedule, finalize_json_array,
                                    iso_local, read_capped)
from vmpower.collect.kepler import ZONE_ORDER, JoulesRate, MetricsError, VmFilter, parse
from vmpower.errors import InputError

log = logging.getLogger("vmpower.collect.host")

ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def gaps_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.with_name(f"gaps_{out.stem}.json")


class Fetcher:
    """One scrape: the body (at most ``max_bytes``, read within 3 x ``timeout``) and its type."""

    def __init__(self, url: str, timeout: float, max_bytes: int):
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes

    def __call__(self) -> tuple[str, str]:
        req = urllib.request.Request(self.url, headers={"Accept": ACCEPT})
        deadline = time.monotonic() + 3 * self.timeout
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if resp.status != 200:
                raise MetricsError(f"HTTP {resp.status}")
            body = read_capped(resp, self.max_bytes, deadline)
            ctype = resp.headers.get("Content-Type", "")
        return body.decode("utf-8", "replace"), ctype


class HostCollector:
    def __init__(self, url: str, output: str | os.PathLike, *, vm_names: list[str] | None = None,
                 vm_patterns: list[str] | None = None,
                 interval: float = 0.1, duration: float | None = 300.0, timeout: float = 1.0,
                 start_at: float | None = None, max_backoff: float = 5.0, progress: bool | None = None,
                 fsync_every: int = 10, max_response_bytes: int | None = None):
        self.url = url
        self.output = Path(output)
        if self.output.suffix.lower() not in (".csv", ".json"):
            raise InputError(self.output, "host output must end in .csv or .json")
        self.as_json = self.output.suffix.lower() == ".json"
        # exact names (or vm_ids); glob patterns only when given as patterns; neither = every VM
        self.filter = VmFilter.of(vm_names, vm_patterns)
        self.interval = float(interval)
        self.duration = float(duration) if duration else None
        if max_response_bytes is None:
            from vmpower import limits

            max_response_bytes = limits.defaults().max_http_response_bytes
        self.fetch = Fetcher(url, timeout, max_response_bytes)
        self.start_at = start_at
        self.max_backoff = max_backoff
        self.progress = progress
        self.fsync_every = fsync_every
        self.schedule = Schedule(self.interval, self.duration)
        self.rates = JoulesRate()
        self.zones: list[str] | None = None
        self.rows = 0
        self.records: list[dict] = []
        self.gaps: list[dict] = []
        self._gap: dict | None = None
        self._no_match_logged = False
        self.scrapes = 0
        self.failures = 0

    def stop(self) -> None:
        self.schedule.stop()

    # -- gaps -------------------------------------------------------------------------------
    def _fail(self, reason: str, now_wall: float, unexpected: BaseException | None = None) -> None:
        self.failures += 1
        if self._gap is None:  # logged once per streak of failures
            self._gap = {"start": now_wall, "start_iso": iso_local(now_wall), "reason": reason, "attempts": 0}
            log.warning("Kepler %s: %s; retrying with backoff", self.url, reason, exc_info=unexpected)
            self.rates.reset()  # no rate across a gap
            self._write_gaps()
        self._gap["attempts"] += 1
        self._gap["last_reason"] = reason

    def _recover(self, now_wall: float) -> None:
        if self._gap is None:
            return
        gap = self._gap
        gap["end"] = now_wall
        gap["end_iso"] = iso_local(now_wall)
        gap["seconds"] = round(now_wall - gap["start"], 3)
        self.gaps.append(gap)
        self._gap = None
        log.warning("Kepler %s back after %.1f s gap (%d failed attempts)", self.url, gap["seconds"],
                    gap["attempts"])
        self._write_gaps()

    def _write_gaps(self) -> None:
        from vmpower.io import write_json

        gaps = list(self.gaps) + ([dict(self._gap, open=True)] if self._gap else [])
        write_json({"url": self.url, "output": self.output.name, "gaps": gaps,
                    "gap_seconds": round(sum(g.get("seconds", 0.0) for g in gaps), 3),
                    "scrapes": self.scrapes, "failed_scrapes": self.failures, "rows": self.rows},
                   gaps_path(self.output))

    # -- one scrape ------------------------------------------------------------------------------
    def _row(self, readings, t_rel: float, wall: float, mono: float) -> dict | None:
        chosen = [r for r in readings if r.state == "running" and self.filter.matches(r)]
        sums: dict[str, float] = {}
        vms: list[dict] = []
        names: set[str] = set()
        joules = [r for r in chosen if r.kind == "joules"]
        rates = {(r.vm_id, r.zone): self.rates.watts((r.vm_id, r.zone), r.value, mono) for r in joules}
        if any(w is None for w in rates.values()):
            # Kepler refreshes all counters at once: a series that stayed still while others
            # moved is at 0 W (e.g. dram); otherwise the rate is not known yet.
            if not (self.rates.any_rate and all(self.rates.never_moved(k) for k, w in rates.items() if w is None)):
                return None
            rates = {k: (0.0 if w is None else w) for k, w in rates.items()}
        for r in chosen:
            watts = rates[(r.vm_id, r.zone)] if r.kind == "joules" else r.value
            if watts != watts:  # NaN from Kepler: never written
                return None
            sums[r.zone] = sums.get(r.zone, 0.0) + watts
            names.add(r.vm_id or r.vm_name)
            vms.append({"vm_id": r.vm_id, "vm_name": r.vm_name, "hypervisor": r.hypervisor,
                        "node_name": r.node_name, "zone": r.zone, "watts": watts, "state": r.state})
        if not chosen:
            if not self._no_match_logged:
                log.warning("no running VM matches %s at %s (yet)", self.filter, self.url)
                self._no_match_logged = True
            return None
        if self.zones is None:
            self.zones = [z for z in ZONE_ORDER if z in sums] + sorted(z for z in sums if z not in ZONE_ORDER)
            log.info("zones: %s; VMs: %s", ", ".join(self.zones), ", ".join(sorted(names)))
        if any(z not in sums for z in self.zones):
            return None  # a zone is missing in this scrape: skip rather than write a hole
        row = {"timestamp": round(t_rel, 6), "timestamp_iso": iso_local(wall)}
        for z in self.zones:
            row[f"total_cpu_watts_{z}"] = sums[z]
        row["vm_count"] = len(names)
        row["collection_interval"] = self.interval
        row["vm_filter"] = str(self.filter)
        row["timestamp_absolute"] = wall  # epoch (UTC): the merge aligns on it when both sides have it
        if self.as_json:
            row["vms"] = vms
        return row

    def _scrape(self, t0: float):
        """(failure, unexpected failure, row, mono, wall) of one scrape; row None: nothing to write."""
        try:
            text, ctype = self.fetch()
            readings = parse(text, ctype)
            if not readings:
                raise MetricsError("no kepler_vm_cpu_watts / kepler_vm_<zone>_joules_total samples")
            mono, wall = time.monotonic(), time.time()
            row = self._row(readings, mono - t0, wall, mono)
        # IncompleteRead (body cut off) and BadStatusLine are HTTPException, not OSError
        except (OSError, urllib.error.URLError, http.client.HTTPException, MetricsError,
                ResponseTooLarge, UnicodeError) as exc:
            return exc, None, None, None, None
        except Exception as exc:  # last resort: one bad scrape must not end the run
            return exc, exc, None, None, None
        return None, None, row, mono, wall

    def _emit(self, row: dict) -> None:
        if self.as_json:
            self._writer.write(row)
            self.records.append(row)
        else:
            if self._csv_writer is None:
                self._csv_writer = csv.DictWriter(self._csv_fh, fieldnames=list(row))
                self._csv_writer.writeheader()
            self._csv_writer.writerow(row)
            self._csv_fh.flush()
            if (self.rows + 1) % self.fsync_every == 0:
                os.fsync(self._csv_fh.fileno())
        self.rows += 1

    def _loop(self, progress: Progress) -> None:
        backoff = 0.0
        next_try = 0.0
        t0 = None
        start_mono = None
        if self.start_at is not None:
            start_mono = time.monotonic() + (self.start_at - time.time())
        for tick in self.schedule.ticks(start_mono):
            if t0 is None:
                t0 = tick
            if tick < next_try:
                continue
            self.scrapes += 1
            failure, unexpected, row, mono, wall = self._scrape(t0)
            if failure is not None:
                reason = f"{type(failure).__name__}: {str(failure)[:200]}"
                self._fail(reason, time.time(), unexpected)
                backoff = min(self.max_backoff, max(self.interval, backoff * 2 or self.interval * 2))
                next_try = time.monotonic() + backoff
                continue
            backoff = 0.0
            self._recover(wall)
            if row is None:
                continue
            self._emit(row)
            progress.update(mono - t0, f"{self.rows} rows, {len(self.gaps) + bool(self._gap)} gaps")

    def _close(self) -> None:
        if self._gap is not None:
            self._recover(time.time())
        if self._csv_fh is not None:
            self._csv_fh.flush()
            os.fsync(self._csv_fh.fileno())
            self._csv_fh.close()
        if self._writer is not None:
            self._writer.close()
            finalize_json_array(self.output, self.records)
        self._write_gaps()

    def run(self) -> int:
        log.info("collecting host power from %s for %s every %.3f s (VMs %s) -> %s", self.url,
                 f"{self.duration:g} s" if self.duration else "until stopped", self.interval,
                 self.filter, self.output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress("host power", self.duration, enabled=self.progress)
        self._writer = JsonlWriter(self.output, fsync_every=self.fsync_every) if self.as_json else None
        self._csv_writer = None
        self._csv_fh = None if self.as_json else open(self.output, "w", newline="", encoding="utf-8")
        self._write_gaps()
        try:
            self._loop(progress)
        finally:
            progress.close()
            self._close()
        log.info("wrote %d rows to %s (%d scrapes, %d failed, %d gaps)", self.rows, self.output,
                 self.scrapes, self.failures, len(self.gaps))
        return self.rows
