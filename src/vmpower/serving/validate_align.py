"""Align the exporter's and the host's watts in time and score them per zone (vectorised).

Both series are interpolated (never across a gap) and averaged in bins of ``bin_seconds`` over
the window both cover; Kepler
recomputes a VM's power about every 5 s and the exporter ticks at its own interval, so bins of
Kepler's interval compare like with like whatever the two sampling intervals are. The
exporter's clock may be off the host's: the offset within ``+-max_clock_skew_seconds`` (steps
of 0.1 s at most) that gives the lowest MAE over all zones is used and reported; ties go to
the smallest offset. A scale or level drift cannot hide behind a shift, only a lag can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vmpower.settings import Section


@dataclass(frozen=True)
class ValidateSettings(Section):
    """config.yaml ``validate`` (defaults in the schema)."""

    max_mape_percent: float
    max_abs_bias_watts: float
    min_samples: int
    mape_min_watts: float
    bin_seconds: float
    max_clock_skew_seconds: float
    exporter_series: str
    window_seconds: float
    scrape_interval_seconds: float


SUBSTEPS = 10  # points per bin at which both series are interpolated


def on_grid(frame: pd.DataFrame, zones: list[str], points: np.ndarray) -> np.ndarray:
    """Each zone linearly interpolated at ``points`` (points x zones); NaN outside the series and
    across a gap (two readings more than 3 median spacings apart: a scrape outage is not bridged)."""
    t = frame["t"].to_numpy()
    out = np.full((len(points), len(zones)), np.nan)
    for j, zone in enumerate(zones):  # per zone (4 at most), each vectorised over all readings
        v = frame[zone].to_numpy(dtype="float64")
        ok = np.isfinite(v)
        tz, vz = t[ok], v[ok]
        if len(tz) < 2:
            continue
        idx = np.searchsorted(tz, points, side="right")
        inside = (idx > 0) & (idx < len(tz))
        span = np.full(len(points), np.inf)
        span[inside] = tz[idx[inside]] - tz[idx[inside] - 1]
        exact = np.isin(points, tz)  # a point on a reading needs no neighbour
        good = (span <= 3 * np.median(np.diff(tz))) | exact
        out[good, j] = np.interp(points[good], tz, vz)
    return out


def bin_means(frame: pd.DataFrame, zones: list[str], start: float, n_bins: int, width: float,
              shift: float = 0.0) -> pd.DataFrame:
    """Mean of each zone over bins [start + k*width, start + (k+1)*width), from SUBSTEPS
    interpolated points per bin (exporter times moved by ``shift``); NaN where fewer than half
    of a bin's points have a value."""
    points = start + (np.arange(n_bins * SUBSTEPS) + 0.5) * (width / SUBSTEPS)
    vals = on_grid(frame, zones, points - shift).reshape(n_bins, SUBSTEPS, len(zones))
    count = np.isfinite(vals).sum(axis=1)
    with np.errstate(invalid="ignore"):
        means = np.nansum(vals, axis=1) / count
    means[count < SUBSTEPS / 2] = np.nan
    return pd.DataFrame(means, columns=zones)


def pair(exp: pd.DataFrame, host: pd.DataFrame, zones: list[str], width: float, shift: float):
    """Both sides' bin means over the window both cover (exporter times + ``shift``), and counts."""
    start = max(exp["t"].min() + shift, host["t"].min())
    end = min(exp["t"].max() + shift, host["t"].max())
    n_bins = int(np.floor((end - start) / width)) if end > start else 0
    if n_bins < 1:
        return None
    e = bin_means(exp, zones, start, n_bins, width, shift)
    h = bin_means(host, zones, start, n_bins, width)
    e_has, h_has = e.notna().any(axis=1), h.notna().any(axis=1)
    stop = start + n_bins * width
    te, th = exp["t"].to_numpy() + shift, host["t"].to_numpy()
    counts = {"bins": n_bins, "exporter_bins": int(e_has.sum()), "host_bins": int(h_has.sum()),
              "matched_bins": int((e_has & h_has).sum()),
              "exporter_readings_outside_window": int(((te < start) | (te > stop)).sum()),
              "host_readings_outside_window": int(((th < start) | (th > stop)).sum()),
              "window_start": round(float(start), 3), "overlap_seconds": round(float(n_bins * width), 3)}
    return e, h, counts


def best_shift(exp: pd.DataFrame, host: pd.DataFrame, zones: list[str], width: float, skew: float) -> float:
    """The clock offset (added to exporter times) with the lowest mean absolute error."""
    if skew <= 0:
        return 0.0
    step = min(width / SUBSTEPS, 0.1)
    cands = np.arange(-np.floor(skew / step), np.floor(skew / step) + 1) * step
    cands = cands[np.argsort(np.abs(cands), kind="stable")]  # ties: the smallest offset wins
    best, best_err = 0.0, np.inf
    for shift in cands:  # a few dozen candidate offsets, each one vectorised over all rows
        got = pair(exp, host, zones, width, float(shift))
        if got is None or got[2]["matched_bins"] == 0:
            continue
        err = float(np.nanmean(np.abs(got[0].to_numpy() - got[1].to_numpy())))
        if err < best_err - 1e-12:
            best, best_err = float(shift), err
    return round(best, 6)


def score(e: pd.DataFrame, h: pd.DataFrame, cfg: ValidateSettings) -> dict[str, dict]:
    """Per zone: matched samples, MAE, MAPE, bias (exporter - host) and the verdict."""
    out = {}
    for zone in e.columns:  # per zone (4 at most), each vectorised
        ok = e[zone].notna() & h[zone].notna()
        err = (e[zone] - h[zone])[ok]
        host = h[zone][ok]
        n = int(ok.sum())
        big = host.abs() >= cfg.mape_min_watts
        mape = float((err[big].abs() / host[big].abs()).mean() * 100) if big.any() else None
        res = {"samples": n, "mape_samples": int(big.sum()),
               "mae_watts": float(err.abs().mean()) if n else None,
               "mape_percent": mape,
               "bias_watts": float(err.mean()) if n else None,
               "exporter_mean_watts": float(e[zone][ok].mean()) if n else None,
               "host_mean_watts": float(host.mean()) if n else None}
        reasons = []
        if n < cfg.min_samples:
            reasons.append(f"{n} matched samples < min_samples {cfg.min_samples}")
        else:
            if mape is not None and mape > cfg.max_mape_percent:
                reasons.append(f"MAPE {mape:.1f} % > {cfg.max_mape_percent:g} %")
            if abs(res["bias_watts"]) > cfg.max_abs_bias_watts:
                reasons.append(f"|bias| {abs(res['bias_watts']):.2f} W > {cfg.max_abs_bias_watts:g} W")
        res["verdict"] = "insufficient" if n < cfg.min_samples else ("drift" if reasons else "ok")
        res["reasons"] = reasons
        out[zone] = res
    return out
