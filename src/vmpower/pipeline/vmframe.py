"""The numeric features of a VM file (guest collector records), as the pipeline uses them.

Used by the merge (training rows) and by ``predict`` (the same features at inference time).
Nothing is dropped silently: a column that is not a number, or that is missing in every
sample, is recorded in ``notes["features_dropped"]`` with the reason; a sample with a missing
value is dropped with reason ``missing_feature`` (its count per feature in the notes).
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd

from vmpower.pipeline import counters, engineer, ingest


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _text_columns(df: pd.DataFrame, s) -> dict[str, str]:
    """{column: reason} for the non-numeric columns that would be features."""
    out = {}
    for c in df.columns:
        if c in s.non_features or pd.api.types.is_float_dtype(df[c].dtype):
            continue
        first = df[c].dropna()
        example = f" (e.g. {str(first.iloc[0])[:20]!r})" if len(first) else ""
        out[c] = f"non_numeric{example}"
    return out


def _perf_absent(df: pd.DataFrame, feats: pd.DataFrame, perf_cols: list[str], notes: dict) -> np.ndarray:
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


def _sample_times(raw: ingest.RawTable) -> tuple[np.ndarray, np.ndarray | None]:
    df = raw.df
    t = df["timestamp_absolute"].to_numpy("float64") if "timestamp_absolute" in df else None
    if t is None or np.isnan(t).all():
        t = ingest.naive_seconds(df["timestamp_iso"], raw.path)
    window = df["time_delta_seconds"].to_numpy("float64") if "time_delta_seconds" in df else None
    return t, window


def vm_feature_frame(raw: ingest.RawTable, s) -> tuple[pd.DataFrame, list[str], dict]:
    """Numeric feature columns of a VM file, with absent perf counters as NaN and counters turned
    into per-second rates (counters.py decides each counter's semantics from the data). Returns
    (frame with a ``_drop`` reason column, feature names, notes)."""
    df, notes = raw.df, {}
    dropped = _text_columns(df, s)
    numeric = [c for c in df.columns if c not in s.non_features and pd.api.types.is_float_dtype(df[c].dtype)]
    feats = df[numeric].copy()
    perf_cols = [c for c in numeric if _matches(c, s.perf_features)]
    allowed_nan = _perf_absent(df, feats, perf_cols, notes)

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
    if dropped:
        notes["features_dropped"] = dict(sorted(dropped.items()))

    candidates = [c for c in present if _matches(c, s.cumulative_features)]
    decisions = counters.decide(feats[candidates], s.counter_semantics, s.counter_detection)
    if decisions:
        notes["counter_semantics"] = {c: decisions[c]["semantics"] for c in sorted(decisions)}
        notes["counter_decisions"] = {c: decisions[c] for c in sorted(decisions)}
    t, window = _sample_times(raw)
    feats = counters.rates(feats, decisions, t, window, drop)
    basis = engineer.hinges(feats, s.hinges)
    if len(basis.columns):
        feats = pd.concat([feats, basis], axis=1)
    feature_names = list(feats.columns)
    feats["_drop"] = drop
    return feats, feature_names, notes
