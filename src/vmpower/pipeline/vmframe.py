"""The steps of features.vm_feature_frame on a VM file's records (guest collector samples):
which columns are text, which perf counters were not counted, which samples miss a value, and
the samples' times. Nothing is dropped silently: every step records what it leaves out."""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd

from vmpower.pipeline import ingest


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def text_columns(df: pd.DataFrame, non_features) -> dict[str, str]:
    """{column: reason} for the non-numeric columns that would be features."""
    out = {}
    for c in df.columns:
        if c in non_features or pd.api.types.is_float_dtype(df[c].dtype):
            continue
        first = df[c].dropna()
        example = f" (e.g. {str(first.iloc[0])[:20]!r})" if len(first) else ""
        out[c] = f"non_numeric{example}"
    return out


def perf_absent(df: pd.DataFrame, feats: pd.DataFrame, perf_cols: list[str], notes: dict) -> np.ndarray:
    """Perf unavailable: older collectors write 0 for the whole run, newer ones null. Both are
    "absent" (NaN), never a real zero. Per counter: a guest collector may read some of them (page
    faults, context switches) from /proc when perf cannot count. Returns the rows flagged
    perf_available=false (their perf NaNs are expected)."""
    allowed = (df["perf_available"] == 0).to_numpy() if "perf_available" in df.columns else np.zeros(len(df), bool)
    if not perf_cols:
        return allowed
    block = feats[perf_cols]
    absent = ((block == 0) | block.isna()).all()
    feats[list(absent.index[absent])] = np.nan
    flagged = allowed if "perf_available" in df.columns else None
    notes["perf_available"] = not (bool(absent.all()) or (flagged is not None and bool(flagged.all())))
    if flagged is not None and flagged.any():
        # Rows flagged perf_available=false: their perf zeros mean "not counted".
        sub = feats.loc[flagged, perf_cols]
        feats.loc[flagged, perf_cols] = sub.where(sub != 0)
        notes["rows_without_perf"] = int(flagged.sum())
    return allowed


def missing_values(df, feats, numeric, perf_cols, allowed_nan, notes, dropped) -> tuple[list[str], pd.Series]:
    """Features empty in every sample (into ``dropped`` and notes) and the samples with a missing
    value (reason ``missing_feature``; perf NaNs of flagged samples are expected). Returns
    (present features, per-sample drop reason)."""
    all_null = [c for c in numeric if feats[c].isna().all()]
    if all_null:
        notes["absent_features"] = sorted(all_null)
        dropped.update({c: "perf_not_counted" if c in perf_cols else "all_missing" for c in all_null})
    present = [c for c in numeric if c not in all_null]
    bad = feats[present].isna().to_numpy().copy()
    bad[:, [i for i, c in enumerate(present) if c in perf_cols]] &= ~allowed_nan[:, None]
    drop = pd.Series(pd.NA, index=df.index, dtype="string")
    if bad.any():
        # A few missing cells: those samples are left out and counted (merge.min_kept_fraction
        # stops a run that loses too many).
        counts = bad.sum(axis=0)
        notes["missing_feature_cells"] = {c: int(n) for c, n in zip(present, counts) if n}
        drop[bad.any(axis=1)] = "missing_feature"
    return present, drop


def sample_times(raw: ingest.RawTable) -> tuple[np.ndarray, np.ndarray | None]:
    """Each sample's time (epoch, else naive ISO seconds) and its window (time_delta_seconds)."""
    df = raw.df
    t = df["timestamp_absolute"].to_numpy("float64") if "timestamp_absolute" in df else None
    if t is None or np.isnan(t).all():
        t = ingest.naive_seconds(df["timestamp_iso"], raw.path)
    window = df["time_delta_seconds"].to_numpy("float64") if "time_delta_seconds" in df else None
    return t, window
