"""Feature engineering for Kepler's late, stepwise labels (config section ``features``).

Kepler recomputes a VM's power about every 5 s and reports the mean over the last interval, so
the host label at a VM sample's time describes load of a few seconds *earlier*, averaged. Two
steps handle that in the pipeline, per run (time-ordered, never across runs):

* **lag** – ``estimate_lag`` cross-correlates a load feature (``lag_feature``, default
  ``cpu_utilization``) with the power of ``lag_zone`` over lags 0..``max_lag_seconds`` on a regular
  grid; the merge records it in each run's quality report. With ``lag_correction: true``,
  ``apply_lag`` pairs the features at time t with the label at t + lag (the nearest sample of
  the same run; rows without a label that late are dropped). This changes the training labels
  only: a model's inputs at inference are the same features.
* **hinges** – ``<feature>_hinge<k>`` = ``max(0, x - k)**2`` for every knot ``k`` of
  ``hinges[feature]``, computed per VM sample in the merge, before any averaging. CPU power
  rises faster than linearly above a utilisation knee (turbo, frequency scaling) and Kepler's
  labels average power over ~5 s: the mean of a convex function is not the function of the
  mean, so the basis must exist per sample for a linear model to fit the knee.
* **windows** – for every ``w`` in ``windows`` (seconds) and every feature matching
  ``window_features``, ``<feature>_mean<w>s`` is the mean of the run's samples with time in
  ``(t - w, t]``: causal (past and current samples only, like Kepler's averaging), so an
  exporter computes it from the samples it has already seen.

Everything is vectorised: loops run over runs, lags and windows, never over rows.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np
import pandas as pd

from vmpower.errors import InputError
from vmpower.names import LEADING_COLUMNS, POWER_PREFIX, TRAILING_COLUMNS, power_column

HINGE_SUFFIX = re.compile(r"^(?P<base>.+)_hinge(?P<k>-?\d+(?:\.\d+)?)$")
WINDOW_SUFFIX = re.compile(r"^(?P<base>.+)_mean(?P<w>\d+(?:\.\d+)?)s$")
# The keys of the config's ``features`` section this module reads (their defaults: config.yaml
# and its schema). The workflow passes them as the merge-dataset step's --settings.
KEYS = ("lag_feature", "lag_zone", "max_lag_seconds", "min_lag_correlation", "lag_correction", "windows",
        "window_features", "hinges")
# What the dataset step (engineer_dataset) needs.
DATASET_KEYS = ("lag_correction", "windows", "window_features", "min_lag_correlation")


def settings_from(cfg: dict) -> dict:
    """The engineering keys set in a config's ``features`` section (or in a flat mapping), as
    given: no defaults here (an absent key is absent; engineer_dataset requires its keys)."""
    section = cfg["features"] if isinstance(cfg.get("features"), dict) else cfg
    return {k: section[k] for k in KEYS if k in section}


def require(s: dict, keys, source: str = "settings") -> dict:
    """``s`` when it holds every key of ``keys``, else a one-line error naming the missing ones."""
    missing = [k for k in keys if k not in s]
    if missing:
        raise InputError(source, f"missing feature engineering setting(s) {', '.join(missing)} (config features section)")
    return s


def window_name(feature: str, seconds: float) -> str:
    return f"{feature}_mean{seconds:g}s"


def window_base(name: str) -> tuple[str, float] | None:
    """(base feature, window seconds) of an engineered column name, else None."""
    m = WINDOW_SUFFIX.match(name)
    return (m.group("base"), float(m.group("w"))) if m else None


def hinge_name(feature: str, knot: float) -> str:
    return f"{feature}_hinge{knot:g}"


def hinge_base(name: str) -> tuple[str, float] | None:
    """(base feature, knot) of a hinge column name, else None."""
    m = HINGE_SUFFIX.match(name)
    return (m.group("base"), float(m.group("k"))) if m else None


def hinge_knots(names: list[str]) -> dict[str, list[float]]:
    """The ``hinges`` setting that produces the hinge columns among ``names`` (inverse of hinge_name)."""
    knots: dict[str, list[float]] = {}
    for n in names:
        hb = hinge_base(n)
        if hb:
            knots.setdefault(hb[0], []).append(hb[1])
    return knots


def base_feature(name: str) -> str | None:
    """The raw feature an engineered column (window mean or hinge) is computed from."""
    b = window_base(name) or hinge_base(name)
    return b[0] if b else None


def hinges(feats: pd.DataFrame, knots: dict[str, list[float]]) -> pd.DataFrame:
    """Per-sample hinge basis ``max(0, x - k)**2`` of the configured features present in
    ``feats`` (NaN stays NaN). Returns only the new columns, in config order."""
    cols = {}
    for feature, ks in knots.items():
        if feature in feats.columns:
            x = feats[feature].to_numpy("float64")
            for k in ks:
                cols[hinge_name(feature, float(k))] = np.square(np.maximum(x - float(k), 0.0))  # NaN stays NaN
    return pd.DataFrame(cols, index=feats.index)


# ---------------------------------------------------------------- lag


def estimate_lag(t: np.ndarray, x: np.ndarray, y: np.ndarray, max_lag_seconds: float) -> dict:
    """Lag (s) by which y follows x: the shift in 0..max_lag_seconds maximising the Pearson
    correlation of x(t) with y(t + lag). Both series are resampled (linear interpolation) onto a
    regular grid with the median sample spacing, so missing samples do not skew the shift."""
    ok = np.isfinite(t) & np.isfinite(x) & np.isfinite(y)
    t, x, y = t[ok], x[ok], y[ok]
    out = {"lag_seconds": None, "lag_samples": None, "correlation": None, "correlation_at_zero": None,
           "grid_seconds": None, "max_lag_seconds": float(max_lag_seconds)}
    if len(t) < 10 or np.std(x) == 0 or np.std(y) == 0:
        out["reason"] = "too few samples or constant series"
        return out
    step = float(np.median(np.diff(t)))
    grid = t[0] + step * np.arange(int((t[-1] - t[0]) / step) + 1)
    xs, ys = np.interp(grid, t, x), np.interp(grid, t, y)
    max_k = int(min(round(max_lag_seconds / step), len(grid) // 2))
    corr = np.full(max_k + 1, -np.inf)
    for k in range(max_k + 1):  # over lags, not rows
        a, b = xs[: len(xs) - k], ys[k:]
        if a.std() > 0 and b.std() > 0:
            corr[k] = float(np.corrcoef(a, b)[0, 1])
    k = int(np.argmax(corr))
    out.update({"lag_seconds": round(k * step, 6), "lag_samples": k, "correlation": round(float(corr[k]), 6),
                "correlation_at_zero": round(float(corr[0]), 6), "grid_seconds": round(step, 6)})
    return out


def run_lag(frame: pd.DataFrame, feature: str, zone: str, max_lag_seconds: float) -> dict:
    """The lag of one merged run (rows of one run, time-ordered) of ``zone``'s power behind ``feature``."""
    col = power_column(zone)
    if feature not in frame or col not in frame:
        return {"lag_seconds": None, "reason": f"needs {feature} and {col}"}
    info = estimate_lag(frame["time"].to_numpy("float64"), frame[feature].to_numpy("float64"),
                        frame[col].to_numpy("float64"), float(max_lag_seconds))
    return {"feature": feature, "zone": zone, **info}


def apply_lag(df: pd.DataFrame, lags: dict[str, float]) -> tuple[pd.DataFrame, dict]:
    """Pair each row's features with its run's label ``lag`` seconds later (nearest sample of the
    same run within half a sample spacing). Rows without such a label are dropped."""
    power = [c for c in df.columns if c.startswith(POWER_PREFIX)]
    parts, dropped = [], {}
    for run, g in df.groupby("run_id", sort=True):
        lag = float(lags.get(str(run)) or 0.0)
        if lag <= 0 or len(g) < 2:
            parts.append(g)
            continue
        t = g["time"].to_numpy("float64")
        target = t + lag
        half = 0.5 * float(np.median(np.diff(t)))
        right = np.clip(np.searchsorted(t, target), 0, len(t) - 1)
        left = np.clip(right - 1, 0, len(t) - 1)
        idx = np.where(np.abs(t[left] - target) <= np.abs(t[right] - target), left, right)
        ok = np.abs(t[idx] - target) <= half
        shifted = g.copy()
        shifted[power] = g[power].to_numpy()[idx]
        dropped[str(run)] = int((~ok).sum())
        parts.append(shifted[ok])
    return pd.concat(parts, ignore_index=True), {"rows_dropped": dropped}


# ---------------------------------------------------------------- windows


def window_columns(df: pd.DataFrame, features: list[str], patterns: list[str], windows: list[float]) -> list[str]:
    base = [f for f in features if any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    return base if windows else []


def rolling_means(df: pd.DataFrame, features: list[str], windows: list[float]) -> pd.DataFrame:
    """Causal time-window means ``(t - w, t]`` per run. NaN inputs (e.g. absent perf counters)
    give NaN means where the window holds any NaN."""
    out = {window_name(f, w): np.full(len(df), np.nan) for w in windows for f in features}
    run = df["run_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, run[1:] != run[:-1], True])
    values = df[features].to_numpy("float64")
    times = df["time"].to_numpy("float64")
    for a, b in zip(bounds[:-1], bounds[1:]):  # contiguous run blocks
        t, v = times[a:b], values[a:b]
        nan = np.isnan(v)
        csum = np.vstack([np.zeros((1, v.shape[1])), np.cumsum(np.where(nan, 0.0, v), axis=0)])
        cnan = np.vstack([np.zeros((1, v.shape[1]), dtype="int64"), np.cumsum(nan, axis=0)])
        hi = np.arange(1, len(t) + 1)
        for w in windows:
            lo = np.searchsorted(t, t - float(w), side="right")
            n = (hi - lo)[:, None]
            mean = (csum[hi] - csum[lo]) / n
            mean[(cnan[hi] - cnan[lo]) > 0] = np.nan
            for j, f in enumerate(features):
                out[window_name(f, w)][a:b] = mean[:, j]
    return pd.DataFrame(out, index=df.index)


# ---------------------------------------------------------------- the step


def engineer(df: pd.DataFrame, features: list[str], s: dict, run_lags: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """Stacked merged runs -> (lag-corrected labels, windowed features), plus a report."""
    df = df.sort_values(["run_id", "time"], kind="stable").reset_index(drop=True)
    # A lag is trusted only where load and power clearly move together (not in idle runs).
    floor = float(s["min_lag_correlation"])
    lags = {
        r: (q or {}).get("lag_seconds") if ((q or {}).get("correlation") or -1) >= floor else 0.0
        for r, q in sorted(run_lags.items())
    }
    report: dict = {"lag_correction": bool(s["lag_correction"]), "min_lag_correlation": floor,
                    "run_lags_seconds": lags}
    windows = [float(w) for w in s["windows"] or []]
    wfeats = window_columns(df, features, list(s["window_features"] or []), windows)
    if windows and wfeats:
        df = pd.concat([df, rolling_means(df, wfeats, windows)], axis=1)
    report["windows_seconds"] = windows
    report["windowed"] = {
        window_name(f, w): {"base": f, "window_seconds": w, "kind": "causal mean over (t - w, t] of the run's samples"}
        for w in windows for f in wfeats
    }
    if s["lag_correction"]:
        df, info = apply_lag(df, lags)
        report.update(info)
    return df, report


def describe(features: list[str], s: dict) -> dict:
    """What an exporter must compute for these model inputs (recorded in model metadata);
    ``s``: the engineering settings used (settings_from; a key not given is recorded as null)."""
    windowed, hinged = {}, {}
    for f in features:
        hb = hinge_base(f)
        if hb:
            hinged[f] = {"base": hb[0], "knot": hb[1], "formula": "max(0, base - knot)**2",
                         "scope": "per sample, before any averaging"}
        wb = window_base(f)
        if wb:
            windowed[f] = {"base": wb[0], "window_seconds": wb[1], "aggregation": "mean",
                           "interval": "(t - window_seconds, t]", "causal": True,
                           "scope": "the samples of the current collection (never across runs)"}
    return {
        "windowed_features": windowed,
        "hinge_features": hinged,
        "lag_correction": {
            "applied_to_labels": bool(s.get("lag_correction")),
            "feature": s.get("lag_feature"),
            "zone": s.get("lag_zone"),
            "max_lag_seconds": s.get("max_lag_seconds"),
            "note": "training labels were taken lag seconds after the features; inference needs no shift",
        },
    }


# ---------------------------------------------------------------- the node_type dataset


def dataset_features(data: pd.DataFrame) -> list[str]:
    """The numeric feature columns of a stacked dataset (not bookkeeping, not power)."""
    meta = set(LEADING_COLUMNS) | set(TRAILING_COLUMNS)
    return [c for c in data.columns if c not in meta and not c.startswith(POWER_PREFIX)
            and pd.api.types.is_float_dtype(data[c].dtype)]


def engineer_dataset(data: pd.DataFrame, qualities: dict[str, dict], s: dict,
                     source: str = "settings") -> tuple[pd.DataFrame, dict | None]:
    """The merge-dataset step's feature engineering on the stacked runs: lag-corrected labels
    and causal windowed features (``s``: the features section's keys, DATASET_KEYS required).
    Returns (dataset, report), report None when neither is configured."""
    require(s, DATASET_KEYS, source)
    if not (s["lag_correction"] or s["windows"]):
        return data, None
    # Interval rows already pair each label with the interval it describes: no lag to correct.
    lags = {r: None if q.get("alignment") == "kepler_interval" else q.get("lag") for r, q in qualities.items()}
    data, report = engineer(data, dataset_features(data), s, lags)
    tail = list(TRAILING_COLUMNS)
    return data[[c for c in data.columns if c not in tail] + tail], report
