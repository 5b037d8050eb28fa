"""Damage a user can live with, repaired and counted (the counts go to quality.json).

* unsorted rows: sorted by time (stable), counted as ``unsorted_rows`` (samples that came
  earlier than the one before them);
* exact duplicates (every column equal): all but the first dropped, ``duplicate_rows``;
* the same time with different values: no way to tell which one is right, so every row at that
  time is dropped, ``conflicting_rows``;
* host samples with a NaN/empty power cell: skipped, ``nan_power_rows``. A zone that is empty in
  every sample is refused when required, else left out of the run (``zones_all_missing``).

Truly bad input stays an error: no power at all, no rows left.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmpower.pipeline import ingest
from vmpower.errors import InputError


def sort_dedupe(raw: ingest.RawTable, times: dict[str, np.ndarray], base: str) -> tuple[ingest.RawTable, dict]:
    """The file's rows sorted by ``times[base]`` without duplicates; counts go to ``raw.notes``.
    Returns (the tidied table, its times)."""
    t = times[base]
    notes = dict(raw.notes)
    unsorted = int((np.diff(t) < 0).sum())
    order = np.argsort(t, kind="stable")
    df = raw.df
    if unsorted:
        notes["unsorted_rows"] = unsorted
        df = df.iloc[order].reset_index(drop=True)
        times = {k: v[order] for k, v in times.items()}
        t = times[base]
    same = np.diff(t) == 0
    if same.any():
        tied = np.r_[same, False] | np.r_[False, same]  # every row sharing its time with another
        sub = df.loc[tied]
        dup = np.zeros(len(df), dtype=bool)
        dup[np.flatnonzero(tied)[sub.duplicated(keep="first").to_numpy()]] = True
        keep = ~dup
        t_kept = pd.Series(t[keep])
        conflict = np.zeros(len(df), dtype=bool)
        conflict[np.flatnonzero(keep)[t_kept.duplicated(keep=False).to_numpy()]] = True
        if dup.any():
            notes["duplicate_rows"] = int(dup.sum())
        if conflict.any():
            notes["conflicting_rows"] = int(conflict.sum())
        keep &= ~conflict
        if not keep.any():
            raise InputError(raw.path, "no rows left after dropping rows that share a time with other values")
        df = df.loc[keep].reset_index(drop=True)
        times = {k: v[keep] for k, v in times.items()}
    return ingest.RawTable(raw.path, df, notes), times


def usable_power(raw: ingest.RawTable, times: dict[str, np.ndarray], zones: list[str], required: list[str]):
    """(table, times, zones) without the host samples that lack power in a zone kept, and
    without the optional zones that are empty in every sample (recorded in the notes)."""
    df, notes = raw.df, dict(raw.notes)
    # Column by column: no copy of the power block (a host file can have 10 M rows).
    finite = {z: np.isfinite(df[ingest.ZONE_PREFIX + z].to_numpy("float64")) for z in zones}
    empty = [z for z in zones if not finite[z].any()]
    refused = [z for z in empty if z in required]
    if refused:
        raise InputError(raw.path, f"column {ingest.ZONE_PREFIX}{refused[0]} has no power value in any of its "
                                   f"{len(df)} rows (NaN/empty/infinite)")
    if empty:
        notes["zones_all_missing"] = empty
        zones = [z for z in zones if z not in empty]
    ok = np.logical_and.reduce([finite[z] for z in zones])
    if not ok.all():
        notes["nan_power_rows"] = int((~ok).sum())
        df = df.loc[ok].reset_index(drop=True)
        times = {k: v[ok] for k, v in times.items()}
    if len(df) < 2:
        raise InputError(raw.path, f"only {len(df)} host samples with power in every zone ({', '.join(zones)})")
    return ingest.RawTable(raw.path, df, notes), times, zones
