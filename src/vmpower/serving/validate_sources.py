"""The two series `vmpower validate` compares, as frames ``t`` (epoch s) + one watts column per zone.

Exporter side (what ``vmpower serve`` in the VM published): scraped live from its /metrics
(``kepler_node_cpu_joules_total`` turned into watts by its rate, or the ``kepler_node_cpu_watts``
gauge), or a file of such scrapes (CSV, JSON or Parquet with ``timestamp_absolute`` and
``joules_<zone>`` or ``power_<zone>`` columns: what ``validate --save-exporter`` and ``predict``
write). Host side (what the host's Kepler measured for the VM): the host collector's file
(``vmpower collect host``, CSV or JSON) or Kepler's /metrics (``kepler_vm_cpu_watts``, Kepler
0.7's joules counters by their rate), summed over the selected VMs as the collector does.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.errors import InputError

log = logging.getLogger("vmpower.validate")

EXPORTER_WATTS = "kepler_node_cpu_watts"
EXPORTER_JOULES = "kepler_node_cpu_joules_total"


def is_url(source: str) -> bool:
    return str(source).startswith(("http://", "https://"))


@dataclass
class Series:
    """Watts per zone over time, plus what was lost on the way (counted, never silent)."""

    name: str
    frame: pd.DataFrame  # columns: t, <zone>...
    notes: dict = field(default_factory=dict)

    @property
    def zones(self) -> list[str]:
        return [c for c in self.frame.columns if c != "t"]


def rates(t: np.ndarray, joules: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Watts between consecutive counter readings, stamped at the interval's middle; intervals
    where a counter went down (restart) are dropped and counted."""
    dt = np.diff(t)
    dj = joules.diff().iloc[1:]
    watts = dj.div(dt, axis=0)
    bad = (dj < 0).any(axis=1).to_numpy() | (dt <= 0)
    out = watts.loc[~bad].copy()
    out.insert(0, "t", ((t[1:] + t[:-1]) / 2)[~bad])
    return out.reset_index(drop=True), int(bad.sum())


def exporter_scrape(text: str) -> dict[str, dict[str, float]]:
    """``{"watts": {zone: W}, "joules": {zone: J}}`` from one exposition of ``vmpower serve``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {"watts": {}, "joules": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = "watts" if s.name == EXPORTER_WATTS else "joules" if s.name == EXPORTER_JOULES else None
            if key and "zone" in s.labels:
                out[key][s.labels["zone"]] = out[key].get(s.labels["zone"], 0.0) + float(s.value)
    return out


def host_scrape(text: str, content_type: str, vm_filter) -> tuple[str, dict[str, float]]:
    """(kind, {zone: summed value}) for the running VMs the filter selects in one Kepler exposition."""
    from vmpower.collect.kepler import parse

    chosen = [r for r in parse(text, content_type) if r.state == "running" and vm_filter.matches(r)]
    sums: dict[str, float] = {}
    for r in chosen:
        sums[r.zone] = sums.get(r.zone, 0.0) + r.value
    return (chosen[0].kind if chosen else "watts"), sums


def from_wide(name: str, t: np.ndarray, wide: pd.DataFrame, kind: str, notes: dict) -> Series:
    """A Series from one row of {zone: value} per reading (watts as they are, joules by their rate)."""
    if len(t) < 2:
        raise InputError(name, f"only {len(t)} usable reading(s): nothing to compare")
    wide = wide.reset_index(drop=True)
    notes = {**notes, "incomplete_readings": int(wide.isna().any(axis=1).sum())}
    if kind == "joules":
        frame, notes["counter_resets"] = rates(np.asarray(t, dtype="float64"), wide)
    else:
        frame = wide.copy()
        frame.insert(0, "t", np.asarray(t, dtype="float64"))
    return Series(name, frame, notes)


def _table(path: Path) -> pd.DataFrame:
    from vmpower.pipeline.ingest import read_vm_features

    if path.suffix.lower() == ".parquet":
        from vmpower.io import read_parquet

        return read_parquet(path)
    if path.suffix.lower() == ".csv":
        try:
            return pd.read_csv(path)
        except (ValueError, pd.errors.ParserError, UnicodeError) as exc:
            raise InputError(path, f"not a CSV table ({' '.join(str(exc).split())[:120]})") from None
    return read_vm_features(path).df  # JSON array or JSON Lines, depth/width-checked


def exporter_file(path: str | Path) -> Series:
    """A file of exporter scrapes: ``timestamp_absolute`` and ``joules_<zone>`` or ``power_<zone>``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    df = _table(path)
    if "timestamp_absolute" not in df.columns:
        raise InputError(path, "no timestamp_absolute column (epoch seconds of each scrape)")
    df = df[df["timestamp_absolute"].notna()].sort_values("timestamp_absolute", kind="stable")
    t = df["timestamp_absolute"].to_numpy(dtype="float64")
    for prefix, kind in (("joules_", "joules"), ("power_", "watts")):
        cols = [c for c in df.columns if c.startswith(prefix)]
        if cols:
            break
    else:
        raise InputError(path, "no joules_<zone> or power_<zone> columns")
    wide = df[cols].apply(pd.to_numeric, errors="coerce").set_axis([c[len(prefix):] for c in cols], axis=1)
    return from_wide(str(path), t, wide, kind, {"rows": len(df), "empty_cells": int(wide.isna().to_numpy().sum())})


def host_file(path: str | Path, limits=None) -> Series:
    """The host collector's file (``total_cpu_watts_<zone>``, ``timestamp_absolute``)."""
    from vmpower.pipeline.ingest import read_host_power, zones_in

    raw = read_host_power(path, limits)
    df = raw.df
    if "timestamp_absolute" not in df.columns or df["timestamp_absolute"].isna().all():
        raise InputError(raw.path, "no timestamp_absolute (written by current host collectors): cannot be "
                                   "aligned with the exporter's epoch times")
    zones = zones_in(df)
    if not zones:
        raise InputError(raw.path, "no total_cpu_watts_<zone> columns")
    frame = df[["timestamp_absolute", *[f"total_cpu_watts_{z}" for z in zones]]].apply(pd.to_numeric, errors="coerce")
    frame.columns = ["t", *zones]
    lost = frame["t"].isna()
    frame = frame[~lost].sort_values("t", kind="stable").reset_index(drop=True)
    notes = {"rows": len(df), "rows_without_time": int(lost.sum()),
             "empty_cells": int(frame[zones].isna().to_numpy().sum()), **raw.notes}
    return Series(str(raw.path), frame, notes)


class Scraper:
    """Scrapes the live sides every ``interval`` s for ``window`` s (both in the same tick, on
    this machine's clock, so live sides need no skew search)."""

    def __init__(self, exporter_url: str | None, host_url: str | None, vm_filter, exporter_series: str,
                 max_bytes: int, timeout: float = 2.0):
        from vmpower.collect.host import Fetcher

        self.sides = {k: Fetcher(u, timeout, max_bytes) for k, u in (("exporter", exporter_url), ("host", host_url)) if u}
        self.vm_filter = vm_filter
        self.exporter_series = exporter_series
        self.got = {k: ([], [], [0], [None]) for k in self.sides}  # times, values, failed, kind

    def _one(self, side: str) -> None:
        times, values, failed, kind = self.got[side]
        try:
            text, ctype = self.sides[side]()
            t = time.time()
            if side == "exporter":
                k, vals = self.exporter_series, exporter_scrape(text)[self.exporter_series]
            else:
                k, vals = host_scrape(text, ctype, self.vm_filter)
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError, UnicodeError) as exc:
            failed[0] += 1  # the first failure of a side is a warning, repeats are debug
            log.log(logging.WARNING if failed[0] == 1 else logging.DEBUG, "%s scrape failed: %s", side,
                    " ".join(str(exc).split())[:160])
            return
        if not vals:
            failed[0] += 1
            return
        times.append(t)
        values.append(vals)
        kind[0] = k

    def run(self, window: float, interval: float) -> dict[str, Series]:
        start = time.monotonic()
        n = int(window // interval) + 1
        for i in range(n):  # one tick per scrape, not per row
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for side in self.sides:
                self._one(side)
        out = {}
        for side, (t, v, f, k) in self.got.items():
            notes = {"scrapes": len(t) + f[0], "failed_scrapes": f[0]}
            out[side] = from_wide(self.sides[side].url, np.asarray(t), pd.DataFrame(v), k[0] or "watts", notes)
        return out


def save(series: Series, path: str, prefix: str) -> None:
    """A side's watts as a CSV that ``exporter_file`` (prefix ``power_``) or ``host_file``
    (``total_cpu_watts_``) reads back, so a live run can be re-validated offline."""
    from vmpower.io import atomic_path

    df = series.frame.rename(columns={"t": "timestamp_absolute", **{z: prefix + z for z in series.zones}})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
