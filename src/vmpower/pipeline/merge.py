"""Merge one run's VM features with the host's power readings, then stack runs per node_type.

Alignment is on absolute time (epoch when both files carry it, else naive local wall clock on
both sides), never on the collectors' relative ``timestamp`` fields. Two modes:

* ``window``  – mean of the host samples inside each VM sample's window ``(t - dt, t]``;
* ``nearest`` – the nearest host sample within ``time_tolerance`` (the original method);
* ``auto`` – ``kepler_interval`` when the host file shows Kepler's stepwise updates, else
  ``window`` (the choice is in the quality report);
* ``kepler_interval`` – one row per Kepler update: Kepler publishes a VM's power about every
  5 s as the mean over the interval since its previous update, so the update times are read off
  the host file (where the values step), each label is paired with the VM features averaged
  over exactly the interval it describes, and the guest/host clock offset is estimated per run.

All are vectorised with ``searchsorted`` over the sorted host times: O((n + m) log m).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.paths import CONFIG
from vmpower.pipeline import counters, engineer, ingest, quality as run_quality, tidy, vmframe
from vmpower.errors import InputError
from vmpower.io import write_json, write_parquet

# The original merge_datasets.py defaults, used when no config file is given.
SEED_DEFAULTS = {
    "alignment": "nearest",
    "time_tolerance": 0.5,
    "min_power_threshold": 0.001,
    "power_zone": "core",
    "min_host_samples": 1,
    "vm_clock_offset_seconds": 0.0,
    "min_match_rate": 0.0,
}


@dataclass
class MergeSettings:
    alignment: str = "window"
    time_tolerance: float = 0.5
    min_power_threshold: float = 0.001
    power_zone: str = "package"
    min_host_samples: int = 1
    vm_clock_offset_seconds: float = 0.0
    # Local wall clock minus UTC (s) of each machine, for a file with only naive ISO times.
    vm_utc_offset_seconds: float | None = None
    host_utc_offset_seconds: float | None = None
    min_match_rate: float = 0.5
    # The defaults below match config.yaml (which says why).
    min_kept_fraction: float = 0.8
    quality_warnings: dict = field(default_factory=lambda: {"min_match_rate": 0.9, "max_time_diff_mean_seconds": 0.2})
    zones: list[str] = field(default_factory=lambda: ["package", "core", "dram", "uncore"])
    required_zones: list[str] = field(default_factory=lambda: ["package"])
    required_features: list[str] = field(default_factory=list)
    cumulative_features: list[str] = field(default_factory=list)
    counter_semantics: dict = field(default_factory=dict)
    counter_detection: dict = field(default_factory=lambda: {"max_resets": 2, "size_ratio": 2.0, "min_samples": 10})
    non_features: list[str] = field(default_factory=list)
    perf_features: list[str] = field(default_factory=list)
    # Lag estimate recorded in the quality report (features.lag_*; vmpower.pipeline.engineer).
    lag_feature: str = "cpu_utilization"
    # kepler_interval alignment (see kepler_intervals()).
    offset_search_seconds: float = 2.0
    offset_step_seconds: float = 0.05
    min_interval_coverage: float = 0.9
    min_offset_correlation: float = 0.8
    max_update_uncertainty: float = 0.5
    lag_zone: str = "package"
    max_lag_seconds: float = 15.0
    # kepler_interval offset search: regressors of the label fit (plus lag_feature and hinges).
    offset_features: list[str] = field(default_factory=list)
    # Per-sample hinge basis {feature: [knots]} (features.hinges; vmpower.pipeline.engineer.hinges).
    hinges: dict = field(default_factory=dict)
    # Input bounds (the config's limits section over the schema's defaults; vmpower.limits).
    limits: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict) -> "MergeSettings":
        """From a whole config.yaml (nested sections) or the workflow's flattened --settings."""
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in cfg.items() if k in known}
        for section in ("ingest", "merge", "features"):
            values.update({k: v for k, v in cfg.get(section, {}).items() if k in known})
        return cls(**values)


# ---------------------------------------------------------------- VM side
# (vmframe.py; re-exported here for the callers that import it from merge)
vm_feature_frame = vmframe.vm_feature_frame


# ---------------------------------------------------------------- alignment


def align_window(t_vm, dt_vm, t_host, power):
    """Mean host power over each VM window (t - dt, t]. Returns (mean, count)."""
    csum = np.vstack([np.zeros((1, power.shape[1])), np.cumsum(power, axis=0)])
    lo = np.searchsorted(t_host, t_vm - dt_vm, side="right")
    hi = np.searchsorted(t_host, t_vm, side="right")
    count = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (csum[hi] - csum[lo]) / count[:, None]
    return mean, count


def nearest_index(t_vm, t_host):
    """Index of the nearest host sample to each VM time (ties go to the earlier sample)."""
    right = np.clip(np.searchsorted(t_host, t_vm, side="left"), 0, len(t_host) - 1)
    left = np.clip(right - 1, 0, len(t_host) - 1)
    pick_left = np.abs(t_vm - t_host[left]) <= np.abs(t_host[right] - t_vm)
    return np.where(pick_left, left, right)


def align_nearest(t_vm, t_host, power, tolerance):
    idx = nearest_index(t_vm, t_host)
    diff = np.abs(t_host[idx] - t_vm)
    ok = diff <= tolerance
    values = np.where(ok[:, None], power[idx], np.nan)
    return values, ok.astype("int64")


# ---------------------------------------------------------------- Kepler update intervals


def kepler_updates(t_host: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kepler's update times as seen in a host file sampled faster than Kepler updates: the
    host samples where any zone's value steps. Returns (update time estimate, its uncertainty,
    the value published); the update happened between the previous sample and this one."""
    k = np.flatnonzero(np.any(power[1:] != power[:-1], axis=1)) + 1
    return 0.5 * (t_host[k - 1] + t_host[k]), t_host[k] - t_host[k - 1], power[k]


def has_kepler_steps(u: np.ndarray, dt_vm: np.ndarray) -> bool:
    """Whether the update times ``u`` (kepler_updates) come slower than the VM samples (what a
    host collector sampling Kepler faster than Kepler recomputes shows)."""
    return len(u) >= 3 and float(np.median(np.diff(u))) >= 2.0 * float(np.median(dt_vm))


def interval_means(a: np.ndarray, b: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Time-weighted means over (lo, hi] of values that hold over the sample windows (a, b]
    (sorted, non-overlapping; NaN rows count as not covered). Returns (means, covered seconds)."""
    ok = np.isfinite(values).all(axis=1)
    width = np.where(ok, b - a, 0.0)
    v = np.where(ok[:, None], values, 0.0)
    cum_v = np.vstack([np.zeros((1, v.shape[1])), np.cumsum(v * width[:, None], axis=0)])
    cum_w = np.concatenate([[0.0], np.cumsum(width)])

    def integral(x):
        i = np.searchsorted(b, x, side="left")  # windows ending before x count fully
        j = np.minimum(i, len(b) - 1)
        part = np.where(i < len(b), np.clip(x - a[j], 0.0, (b - a)[j]), 0.0) * ok[j]
        return cum_v[i] + v[j] * part[:, None], cum_w[i] + part

    (v_hi, w_hi), (v_lo, w_lo) = integral(hi), integral(lo)
    covered = w_hi - w_lo
    with np.errstate(invalid="ignore", divide="ignore"):
        return (v_hi - v_lo) / covered[:, None], covered


def _fit_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Multiple correlation R of an OLS fit (with intercept) of y on x[i] for each i, over the
    rows where x[i] and y are finite (NaN when fewer than 10 rows). x: [k, n, p]."""
    out = np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):  # a few dozen offsets, each a small least-squares fit
        ok = np.isfinite(x[i]).all(axis=1) & np.isfinite(y)
        if ok.sum() < 10:
            continue
        X = np.column_stack([np.ones(ok.sum()), x[i][ok]])
        yy = y[ok]
        resid = yy - X @ np.linalg.lstsq(X, yy, rcond=None)[0]
        ss = float(((yy - yy.mean()) ** 2).sum())
        out[i] = np.sqrt(max(0.0, 1.0 - float(resid @ resid) / ss)) if ss > 0 else np.nan
    return out


def kepler_intervals(t_vm, dt_vm, feats: np.ndarray, t_host, power, ref: int, lag_cols: list[int] | None, s,
                     updates=None):
    """Pair each Kepler update with the VM features averaged over the interval it describes.

    Intervals (u[j-1], u[j]] come from kepler_updates; one is used when both ends are known to
    within ``max_update_uncertainty`` s, its length is within 0.5-1.5x the median (a missed
    update or a host gap makes it irregular), and VM samples cover ``min_interval_coverage`` of
    it. The guest clock offset is the shift in +-``offset_search_seconds`` at which a linear fit
    of the ``lag_zone`` labels on the interval means of ``lag_feature`` and its hinge basis is
    best (highest multiple correlation R; offset 0 when R stays below ``min_offset_correlation``).
    The hinges matter: with power convex in load, the linear correlation alone peaks off the
    true offset."""
    u, unc, value = updates if updates is not None else kepler_updates(t_host, power)
    info = {"updates": int(len(u))}
    if len(u) < 3:
        return None, info
    lo, hi, label = u[:-1], u[1:], value[1:]
    length = hi - lo
    med = float(np.median(length))
    info["median_interval_seconds"] = round(med, 6)
    if not has_kepler_steps(u, dt_vm):
        return None, info
    regular = (length >= 0.5 * med) & (length <= 1.5 * med)
    certain = (unc[:-1] <= float(s.max_update_uncertainty)) & (unc[1:] <= float(s.max_update_uncertainty))
    a, b = t_vm - dt_vm, t_vm
    offsets = np.array([0.0])
    if lag_cols and float(s.offset_search_seconds) > 0:
        step = float(s.offset_step_seconds)
        n = int(round(float(s.offset_search_seconds) / step))
        offsets = step * np.arange(-n, n + 1)
        x = np.stack([interval_means(a + d, b + d, feats[:, lag_cols], lo, hi)[0] for d in offsets])
        x[:, ~(regular & certain)] = np.nan
        corr = _fit_r(x, label[:, ref])
        best = int(np.nanargmax(corr)) if np.isfinite(corr).any() else n
        info.update({"offset_correlation": None if not np.isfinite(corr[best]) else round(float(corr[best]), 6),
                     "offset_correlation_at_zero": None if not np.isfinite(corr[n]) else round(float(corr[n]), 6)})
        # A flat correlation (an idle run: the labels are mostly noise) says nothing about the clocks.
        trusted = np.isfinite(corr[best]) and corr[best] >= float(s.min_offset_correlation)
        offset = float(offsets[best]) if trusted else 0.0
        info["offset_trusted"] = bool(trusted)
    else:
        offset = 0.0
    means, covered = interval_means(a + offset, b + offset, feats, lo, hi)
    coverage = covered / length
    info.update({"clock_offset_seconds": round(offset, 6), "median_interval_seconds": round(med, 6),
                 "update_uncertainty_median_seconds": round(float(np.median(unc)), 6)})
    reason = np.full(len(lo), None, dtype=object)
    reason[coverage < float(s.min_interval_coverage)] = "low_vm_coverage"
    reason[~regular] = "irregular_interval"
    reason[~certain] = "uncertain_update_time"
    return {"lo": lo, "hi": hi, "label": label, "means": means, "coverage": coverage, "reason": reason,
            "offset": offset, "uncertainty": np.maximum(unc[:-1], unc[1:])}, info


def kept_overlap(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of each window ``[a, b]`` covered by the sorted, disjoint intervals ``[lo, hi]``."""
    if len(lo) == 0:
        return np.zeros(len(a))
    length = hi - lo
    before = np.concatenate([[0.0], np.cumsum(length)])  # covered length before interval j

    def measure(x):  # covered length of (-inf, x]
        j = np.searchsorted(lo, x, side="right") - 1
        inside = np.clip(x - lo[np.maximum(j, 0)], 0.0, length[np.maximum(j, 0)])
        return np.where(j < 0, 0.0, before[np.maximum(j, 0)] + inside)

    return measure(b) - measure(a)


def sample_drop_reasons(lo, hi, reason, keep, mid, matched, drop) -> dict:
    """{reason: VM samples} for the samples that are not matched: the sample's own drop reason
    (rate warm-up, gap), else the reason of the interval holding its window's midpoint, else
    ``outside_kepler_updates`` (before the first or after the last usable update)."""
    k = np.searchsorted(hi, mid, side="left")
    in_iv = (k < len(hi)) & (mid >= lo[np.minimum(k, len(lo) - 1)])
    iv_reason = np.where(keep, "straddles_interval", reason.astype(object))
    why = np.where(in_iv, iv_reason[np.minimum(k, len(lo) - 1)], "outside_kepler_updates").astype(object)
    own = drop.to_numpy(dtype=object)
    has_own = pd.notna(own)
    why[has_own] = own[has_own]
    counts = pd.Series(why[~matched], dtype="string").value_counts().sort_index()
    return {str(k): int(v) for k, v in counts.items()}


# ---------------------------------------------------------------- one run


def _choose_base(vm_times: dict, host_times: dict, vm_path: Path, host_path: Path) -> str:
    for base in ("epoch", "naive"):
        if base in vm_times and base in host_times:
            return base
    raise InputError(
        host_path,
        f"cannot align with {vm_path.name}: VM has {'/'.join(vm_times)} time, host has {'/'.join(host_times)} time "
        "(need timestamp_absolute on both, timestamp_iso on both, or set merge.vm_utc_offset_seconds / "
        "merge.host_utc_offset_seconds for the side with naive times only)",
    )


def with_utc_offset(times: dict, utc_offset: float | None) -> dict:
    """Both clocks of a file when its machine's UTC offset (local minus UTC, s) is known:
    epoch = naive - offset for a file with only naive ISO times, and the reverse."""
    if utc_offset is None or len(times) != 1:
        return times
    if "naive" in times:
        return {**times, "epoch": times["naive"] - float(utc_offset)}
    return {**times, "naive": times["epoch"] + float(utc_offset)}


def _quality(vm_raw, host_raw, s, base, clocks, t_vm, dt_vm, t_host, zones, feature_names, vm_notes, fields) -> dict:
    """A run's quality report: what every alignment reports, plus its own ``fields``."""
    quality = {
        "vm_file": vm_raw.path.name,
        "host_file": host_raw.path.name,
        "alignment": s.alignment,
        "time_base": base,
        "vm_samples": len(t_vm),
        "host_samples": int(len(t_host)),
        **fields,
        "vm_span_seconds": float(t_vm[-1] - t_vm[0]),
        "host_span_seconds": float(t_host[-1] - t_host[0]),
        "overlap_seconds": float(min(t_vm[-1], t_host[-1]) - max(t_vm[0] - dt_vm[0], t_host[0])),
        "vm_clock_offset_seconds": float(s.vm_clock_offset_seconds),
        "zones": zones,
        "features": feature_names,
        **{f"vm_{k}" if not k.startswith("vm_") else k: v for k, v in {**vm_raw.notes, **vm_notes}.items()},
        **{f"host_{k}": v for k, v in host_raw.notes.items()},
    }
    # Local time-zone offsets (naive wall clock minus epoch) where a file carries both clocks.
    for side, times in zip(("vm", "host"), clocks):
        if "epoch" in times and "naive" in times:
            quality[f"{side}_utc_offset_seconds"] = float(np.median(times["naive"] - times["epoch"]))
    return quality


def _read_pair(vm_path, host_path, s: MergeSettings):
    """Both files read, their zones checked, their rows sorted and deduplicated on the common
    clock (repairs counted in the tables' notes). Returns (vm, host, zones, vm times, host
    times, time base)."""
    from vmpower import limits as limits_mod

    bounds = limits_mod.from_section(s.limits)
    vm_raw = ingest.read_vm_features(vm_path, bounds)
    host_raw = ingest.read_host_power(host_path, bounds)
    vm_path, host_path = vm_raw.path, host_raw.path

    zones_present = ingest.zones_in(host_raw.df)
    required = list(dict.fromkeys([*s.required_zones, s.power_zone]))
    missing = [z for z in required if z not in zones_present]
    if missing:
        raise InputError(
            host_path,
            f"missing zone column(s) {', '.join(ingest.ZONE_PREFIX + z for z in missing)} "
            f"(zones present: {', '.join(zones_present) or 'none'})",
        )
    zones = [z for z in s.zones if z in zones_present]
    vm_times = with_utc_offset(ingest.time_columns(vm_raw), s.vm_utc_offset_seconds)
    host_times = with_utc_offset(ingest.time_columns(host_raw), s.host_utc_offset_seconds)
    base = _choose_base(vm_times, host_times, vm_path, host_path)
    host_raw, host_times, zones = tidy.usable_power(host_raw, host_times, zones, required)
    vm_raw, vm_times = tidy.sort_dedupe(vm_raw, vm_times, base)
    host_raw, host_times = tidy.sort_dedupe(host_raw, host_times, base)
    _check_required_features(vm_raw, s)
    return vm_raw, host_raw, zones, vm_times, host_times, base


def _check_required_features(vm_raw, s: MergeSettings) -> None:
    df = vm_raw.df
    for name in s.required_features:
        if name not in df.columns:
            raise InputError(vm_raw.path, f"required feature {name} is missing (ingest.required_features)")
        if not pd.api.types.is_float_dtype(df[name].dtype):
            raise InputError(vm_raw.path, f"required feature {name} is not numeric (e.g. {str(df[name].iloc[0])[:20]!r})")
        if df[name].isna().all():
            raise InputError(vm_raw.path, f"required feature {name} is empty in every sample")


def merge_run(vm_path, host_path, s: MergeSettings) -> tuple[pd.DataFrame, dict]:
    vm_raw, host_raw, zones, vm_times, host_times, base = _read_pair(vm_path, host_path, s)
    vm_path, host_path = vm_raw.path, host_raw.path
    power_cols = [ingest.ZONE_PREFIX + z for z in zones]
    t_vm = vm_times[base] + float(s.vm_clock_offset_seconds)
    t_host = host_times[base]
    if "time_delta_seconds" in vm_raw.df:
        ingest.check_finite(vm_raw.df, ["time_delta_seconds"], vm_path)
        dt_vm = vm_raw.df["time_delta_seconds"].to_numpy("float64")
    else:
        dt_vm = np.diff(t_vm, prepend=t_vm[0] - np.median(np.diff(t_vm)) if len(t_vm) > 1 else 1.0)

    if t_vm[-1] < t_host[0] or t_vm[0] > t_host[-1]:
        apart = t_host[0] - t_vm[-1] if t_vm[-1] < t_host[0] else t_vm[0] - t_host[-1]
        raise InputError(
            vm_path,
            f"no time overlap with {host_path.name} on the {base} clock: they are {apart:.0f} s apart "
            "(clock skew or different time zones? set merge.vm_clock_offset_seconds)",
        )

    feats, feature_names, vm_notes = vm_feature_frame(vm_raw, s)
    power = host_raw.df[power_cols].to_numpy("float64")
    requested = s.alignment
    updates = kepler_updates(t_host, power) if s.alignment in ("auto", "kepler_interval") else None
    if s.alignment == "auto":
        # kepler_interval where the host file shows Kepler's updates, else per-sample windows.
        mode = "kepler_interval" if has_kepler_steps(updates[0], dt_vm) else "window"
        s = dataclasses.replace(s, alignment=mode)
    if s.alignment == "window":
        values, count = align_window(t_vm, dt_vm, t_host, power)
        matched = count >= max(int(s.min_host_samples), 1)
    elif s.alignment == "nearest":
        values, count = align_nearest(t_vm, t_host, power, float(s.time_tolerance))
        matched = count > 0
    elif s.alignment == "kepler_interval":
        out, quality = _merge_intervals(vm_path, host_path, vm_raw, host_raw, feats, feature_names, vm_notes,
                                        zones, t_vm, dt_vm, t_host, power, base, (vm_times, host_times), s, updates)
        return out, {**quality, "alignment_requested": requested}
    else:
        raise InputError(vm_path, f"unknown alignment mode {s.alignment!r} (auto, kepler_interval, window or nearest)")
    time_diff = np.abs(t_host[nearest_index(t_vm, t_host)] - t_vm)

    drop = feats.pop("_drop")
    outside = (t_vm < t_host[0]) | (t_vm - dt_vm > t_host[-1])
    reason = drop.copy()
    reason[reason.isna() & ~matched & outside] = "outside_host_range"
    reason[reason.isna() & ~matched] = "no_host_power"
    ref = values[:, zones.index(s.power_zone)]
    reason[reason.isna() & (ref < float(s.min_power_threshold))] = "below_min_power"
    keep = reason.isna().to_numpy()

    out = pd.DataFrame(
        {
            "time": t_vm,
            "t_rel": t_vm - t_vm[0],
            "time_delta_seconds": dt_vm,
            "stress_workload": _workload(vm_raw),
        }
    )
    out = pd.concat([out, feats.reset_index(drop=True)], axis=1)
    for i, z in enumerate(zones):
        out[f"power_{z}"] = values[:, i]
    out["n_host_samples"] = count.astype("int64")
    out["time_diff"] = time_diff
    out = out.loc[keep].reset_index(drop=True)

    n_vm = len(t_vm)
    n_matched = int(matched.sum())
    clocks = (vm_times, host_times)
    quality = _quality(vm_raw, host_raw, s, base, clocks, t_vm, dt_vm, t_host, zones, feature_names, vm_notes, {
        "rows_kept": int(keep.sum()),
        "match_rate": n_matched / n_vm if n_vm else 0.0,
        "rows_dropped": {k: int(v) for k, v in reason.value_counts().sort_index().items()},
        "time_diff_mean": float(time_diff[matched].mean()) if n_matched else None,
        "time_diff_max": float(time_diff[matched].max()) if n_matched else None,
    })
    if quality["match_rate"] < float(s.min_match_rate):
        raise InputError(
            vm_path,
            f"only {quality['match_rate']:.0%} of VM samples found host power in {host_path.name} "
            f"(minimum {float(s.min_match_rate):.0%}; clocks out of sync?)",
        )
    _judge(quality, s, vm_path, host_path)
    if out.empty:
        raise InputError(vm_path, f"no rows left after merging with {host_path.name}: {quality['rows_dropped']}")
    quality["lag"] = _lag(out, s)
    quality["alignment_requested"] = requested
    return out, quality


def _judge(quality: dict, s: MergeSettings, vm_path: Path, host_path: Path) -> None:
    """Warnings (the seed's indicators, repairs) into quality; too few VM samples kept: an error."""
    quality["warnings"] = run_quality.warnings(quality, s.quality_warnings)
    run_quality.check_kept(quality, s.min_kept_fraction, vm_path, host_path)


def _lag(frame: pd.DataFrame, s: MergeSettings) -> dict:
    return engineer.run_lag(frame, {"lag_feature": s.lag_feature, "lag_zone": s.lag_zone,
                                    "max_lag_seconds": s.max_lag_seconds})


def _workload(vm_raw) -> pd.Series:
    df = vm_raw.df
    if "stress_workload" in df:
        return df["stress_workload"].astype("string").fillna("unknown").reset_index(drop=True)
    return pd.Series("unknown", index=range(len(df)), dtype="string")


def _merge_intervals(vm_path, host_path, vm_raw, host_raw, feats, feature_names, vm_notes, zones,
                     t_vm, dt_vm, t_host, power, base, clocks, s, updates) -> tuple[pd.DataFrame, dict]:
    """merge_run for alignment kepler_interval: one row per usable Kepler update interval."""
    drop = feats.pop("_drop")
    values = feats.to_numpy("float64")
    values[drop.notna().to_numpy()] = np.nan  # rate warm-up/gap samples cover nothing
    # Perf counters absent for the whole run are NaN everywhere: average the other features and
    # leave those NaN, rather than treating every sample as uncovered.
    present = ~np.isnan(values).all(axis=0)
    ref = zones.index(s.power_zone)
    lag_zone = zones.index(s.lag_zone) if s.lag_zone in zones else ref
    cols = np.flatnonzero(present)
    # The offset is fitted on lag_feature, offset_features and their hinges (those in this run).
    offset_names = []
    for f in dict.fromkeys([s.lag_feature, *s.offset_features]):
        offset_names += [f, *[engineer.hinge_name(f, float(k)) for k in s.hinges.get(f, [])]]
    sub = {feature_names[c]: i for i, c in enumerate(cols)}
    lag_sub = [sub[n] for n in offset_names if n in sub] if s.lag_feature in sub else None
    iv, kinfo = kepler_intervals(t_vm, dt_vm, values[:, cols], t_host, power, lag_zone, lag_sub, s, updates)
    if iv is None:
        if kinfo["updates"] < 3:
            problem = f"only {kinfo['updates']} Kepler updates (value steps) found"
        else:
            problem = (f"power changes every {kinfo['median_interval_seconds']:g} s, not in Kepler's stepwise "
                       f"updates slower than the VM samples ({float(np.median(dt_vm)):g} s)")
        raise InputError(host_path, f"{problem}: cannot use merge.alignment kepler_interval (use window)")
    means = np.full((len(iv["lo"]), values.shape[1]), np.nan)
    means[:, cols] = iv["means"]
    reason = pd.Series(iv["reason"], dtype="string")
    reason[reason.isna() & (iv["label"][:, ref] < float(s.min_power_threshold))] = "below_min_power"
    keep = reason.isna().to_numpy()

    # Workload of the VM sample covering each interval's end (host clock -> guest clock).
    wl = _workload(vm_raw)
    idx = np.clip(np.searchsorted(t_vm, iv["hi"] - iv["offset"], side="left"), 0, len(t_vm) - 1)
    count = np.searchsorted(t_host, iv["hi"], side="right") - np.searchsorted(t_host, iv["lo"], side="right")
    out = pd.DataFrame({
        "time": iv["hi"] - iv["offset"],  # the interval's end on the guest clock
        "t_rel": iv["hi"] - iv["offset"] - t_vm[0],
        "time_delta_seconds": iv["hi"] - iv["lo"],
        "stress_workload": wl.iloc[idx].reset_index(drop=True),
    })
    out = pd.concat([out, pd.DataFrame(means, columns=feature_names)], axis=1)
    for i, z in enumerate(zones):
        out[f"power_{z}"] = iv["label"][:, i]
    out["n_host_samples"] = count.astype("int64")
    out["time_diff"] = iv["uncertainty"]
    out = out.loc[keep].reset_index(drop=True)

    # A VM sample is matched when at least half of its window lies in kept intervals (the match
    # rate of this mode); the others are counted by why they were not used.
    g_lo, g_hi = iv["lo"] - iv["offset"], iv["hi"] - iv["offset"]  # guest clock
    covered = kept_overlap(g_lo[keep], g_hi[keep], t_vm - dt_vm, t_vm)
    inside = (covered >= 0.5 * dt_vm) & drop.isna().to_numpy()  # warm-up/gap samples carry nothing
    n_vm = len(t_vm)
    vm_dropped = sample_drop_reasons(g_lo, g_hi, reason.to_numpy(dtype=object), keep, t_vm - 0.5 * dt_vm,
                                     inside, drop)
    quality = _quality(vm_raw, host_raw, s, base, clocks, t_vm, dt_vm, t_host, zones, feature_names, vm_notes, {
        "rows_kept": int(keep.sum()),
        "intervals": int(len(keep)),
        "match_rate": float(inside.sum()) / n_vm if n_vm else 0.0,
        "rows_dropped": {k: int(v) for k, v in reason.value_counts().sort_index().items()},
        "vm_samples_matched": int(inside.sum()),
        "vm_samples_dropped": vm_dropped,
        "time_diff_mean": float(iv["uncertainty"][keep].mean()) if keep.any() else None,
        "time_diff_max": float(iv["uncertainty"][keep].max()) if keep.any() else None,
        "interval_coverage_mean": float(iv["coverage"][keep].mean()) if keep.any() else None,
        "kepler": kinfo,
    })
    if quality["match_rate"] < float(s.min_match_rate):
        raise InputError(vm_path, f"only {quality['match_rate']:.0%} of VM samples fall in usable Kepler intervals "
                                  f"of {host_path.name} (minimum {float(s.min_match_rate):.0%}): {quality['rows_dropped']}")
    _judge(quality, s, vm_path, host_path)
    if out.empty:
        raise InputError(vm_path, f"no rows left after merging with {host_path.name}: {quality['rows_dropped']}")
    # The per-sample lag (for the quality report): how late the labels are against the features.
    sample_power, n = align_window(t_vm, dt_vm, t_host, power)
    lag_frame = pd.DataFrame({"time": t_vm, **dict(zip(feature_names, values.T)),
                              **{f"power_{z}": sample_power[:, i] for i, z in enumerate(zones)}})[n > 0]
    quality["lag"] = _lag(lag_frame, s)
    return out, quality


# ---------------------------------------------------------------- node_type dataset


def stack_runs(frames: dict[str, pd.DataFrame], zones_order: list[str]) -> tuple[pd.DataFrame, dict]:
    """One dataset per node_type: runs stacked in run_id order. Zones kept are those every run
    has; features are the union (absent ones NaN)."""
    run_ids = sorted(frames)
    zone_sets = [{c[6:] for c in frames[r].columns if c.startswith("power_")} for r in run_ids]
    common = set.intersection(*zone_sets)
    zones = [z for z in zones_order if z in common]
    dropped_zones = sorted(set.union(*zone_sets) - common)
    parts = []
    for r in run_ids:
        df = frames[r].drop(columns=[f"power_{z}" for z in dropped_zones if f"power_{z}" in frames[r]])
        parts.append(df.assign(run_id=r))
    data = pd.concat(parts, ignore_index=True, sort=False)
    front = ["run_id", "time", "t_rel", "time_delta_seconds", "stress_workload"]
    power = [f"power_{z}" for z in zones]
    tail = ["n_host_samples", "time_diff"]
    middle = sorted(c for c in data.columns if c not in front + power + tail)
    data = data[front + middle + power + tail]
    data["run_id"] = data["run_id"].astype("string")
    return data, {"runs": run_ids, "rows": int(len(data)), "zones": zones, "zones_dropped": dropped_zones}


# ---------------------------------------------------------------- CLI


def _settings(args) -> MergeSettings:
    if args.config:
        from vmpower.configcheck import check_file

        s = MergeSettings.from_config(check_file(args.config))
    else:
        # The original tool's merge behaviour, with this project's ingest rules (which columns
        # are bookkeeping, cumulative counters or perf counters) from the bundled config.
        s = dataclasses.replace(_bundled_ingest_settings(), **SEED_DEFAULTS)
    if args.settings:
        s = MergeSettings.from_config(json.loads(args.settings))
    for flag in ("time_tolerance", "min_power_threshold", "power_zone", "alignment"):
        value = getattr(args, flag)
        if value is not None:
            setattr(s, flag, value)
    return s


def _bundled_ingest_settings() -> MergeSettings:
    import yaml

    path = CONFIG
    if not path.is_file():
        raise InputError(path, "no bundled config.yaml: pass --config")
    cfg = yaml.safe_load(path.read_text()) or {}
    return MergeSettings.from_config({k: cfg.get(k, {}) for k in ("ingest", "features")})


def cmd_merge(args) -> int:
    s = _settings(args)
    data, quality = merge_run(args.vm_features, args.bm_power, s)
    out = Path(args.output)
    if out.suffix == ".csv":
        # The original tool's CSV: features plus power_watts (the chosen zone) and time_diff.
        from vmpower.io import atomic_path

        csv = data.assign(power_watts=data[f"power_{s.power_zone}"])
        with atomic_path(out) as tmp:
            csv.to_csv(tmp, index=False)  # shortest round-trip floats: epoch times keep their precision
    else:
        write_parquet(data, out)
    if args.quality:
        write_json(quality, args.quality)
    print(
        f"merged {quality['rows_kept']}/{quality['vm_samples']} VM samples "
        f"(match rate {quality['match_rate']:.1%}, mean time diff {quality['time_diff_mean'] or 0:.3f} s) -> {out}"
    )
    return 0


def cmd_dataset(args) -> int:
    frames = {Path(p).name.removesuffix(".parquet"): pd.read_parquet(p) for p in args.inputs}
    zones = json.loads(args.settings)["zones"] if args.settings else ["package", "core", "dram", "uncore"]
    data, summary = stack_runs(frames, zones)
    qualities = {}
    for q in args.quality_inputs or []:
        with open(q) as fh:
            qualities[Path(q).name.removesuffix(".quality.json")] = json.load(fh)
    summary["run_quality"] = qualities
    # What the runs' counters were (counters.py), for whoever computes these features live.
    summary["counter_semantics"] = counters.combine({r: q.get("vm_counter_semantics") or {} for r, q in qualities.items()})
    # Feature engineering (vmpower.pipeline.engineer): lag-corrected labels and causal windowed features.
    eng = engineer.settings_from(json.loads(args.settings) if args.settings else {})
    if eng["lag_correction"] or eng["windows"]:
        features = [c for c in data.columns if c not in ("run_id", "time", "t_rel", "time_delta_seconds",
                    "stress_workload", "n_host_samples", "time_diff") and not c.startswith("power_")
                    and pd.api.types.is_float_dtype(data[c].dtype)]
        # Interval rows already pair each label with the interval it describes: no lag to correct.
        lags = {r: None if q.get("alignment") == "kepler_interval" else q.get("lag") for r, q in qualities.items()}
        data, report = engineer.engineer(data, features, eng, lags)
        data = data[[c for c in data.columns if c not in ("n_host_samples", "time_diff")] + ["n_host_samples", "time_diff"]]
        summary["engineering"] = report
        summary["rows"] = int(len(data))
    write_parquet(data, args.output)
    write_json(summary, args.summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge one run's VM features with host power (align on absolute time)")
    p.add_argument("--vm-features", required=True, help="vm_features_*.json (array or JSON Lines)")
    p.add_argument("--bm-power", required=True, help="bm_power_*.csv or bm_power_*.json")
    p.add_argument("--output", required=True, help=".parquet (pipeline) or .csv (merge_datasets.py format)")
    p.add_argument("--quality", help="write the run's data-quality report (JSON) here")
    p.add_argument("--time-tolerance", type=float, help="nearest mode: max time difference in seconds")
    p.add_argument("--min-power-threshold", type=float, help="drop rows whose power_zone power is below this (W)")
    p.add_argument("--power-zone", help="zone for power_watts and the threshold (core, package, dram, uncore)")
    p.add_argument("--alignment", choices=["auto", "kepler_interval", "window", "nearest"])
    p.add_argument("--config", help="read merge/ingest settings from this config.yaml")
    p.add_argument("--settings", help=argparse.SUPPRESS)  # JSON passed by the workflow
    # merge_datasets.py took --verbose after its options; SUPPRESS keeps a global -v intact.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.set_defaults(func=cmd_merge)

    d = sub.add_parser("merge-dataset", help="stack a node_type's merged runs into one dataset")
    d.add_argument("--inputs", nargs="+", required=True)
    d.add_argument("--quality-inputs", nargs="*")
    d.add_argument("--output", required=True)
    d.add_argument("--summary", required=True)
    d.add_argument("--settings", help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_dataset)
