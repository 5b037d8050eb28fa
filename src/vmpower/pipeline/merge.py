"""Merge one run's VM features with the host's power readings, then stack runs per node_type.

Alignment is on absolute time (epoch when both files carry it, else naive local wall clock on
both sides), never on the collectors' relative ``timestamp`` fields. Modes (maths in align.py):

* ``window``  – mean of the host samples inside each VM sample's window ``(t - dt, t]``;
* ``nearest`` – the nearest host sample within ``time_tolerance`` (the original method);
* ``auto`` – ``kepler_interval`` when the host file shows Kepler's stepwise updates, else
  ``window`` (the choice is in the quality report);
* ``kepler_interval`` – one row per Kepler update, paired with the VM features averaged over
  exactly the interval it describes; the guest/host clock offset is estimated per run.

The features of a VM file are features.vm_feature_frame (shared with serving); the node_type
dataset's feature engineering is engineer.engineer_dataset. The command line is merge_cli.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.errors import InputError
from vmpower.names import LEADING_COLUMNS, TRAILING_COLUMNS, power_column, zone_of
from vmpower.pipeline import align, engineer, ingest, quality as run_quality, tidy
from vmpower.pipeline.features import FeatureSettings, flatten, vm_feature_frame

__all__ = ["MergeSettings", "merge_run", "stack_runs", "vm_feature_frame"]


@dataclasses.dataclass(frozen=True)
class MergeSettings(FeatureSettings):
    """The keys a run's merge reads: config ``merge``, ``ingest`` (FeatureSettings and
    required_features), the top-level zones, ``limits``, and the lag keys of ``features``."""

    alignment: str
    time_tolerance: float
    min_power_threshold: float
    power_zone: str
    min_host_samples: int
    vm_clock_offset_seconds: float
    # Local wall clock minus UTC (s) of each machine, for a file with only naive ISO times.
    vm_utc_offset_seconds: float | None
    host_utc_offset_seconds: float | None
    min_match_rate: float
    min_kept_fraction: float
    quality_warnings: dict
    zones: list
    required_zones: list
    required_features: list
    # Lag estimate recorded in the quality report (features.lag_*; vmpower.pipeline.engineer).
    lag_feature: str
    lag_zone: str
    max_lag_seconds: float
    # kepler_interval alignment (align.kepler_intervals, align.search_offset).
    offset_search_seconds: float
    offset_step_seconds: float
    min_interval_coverage: float
    min_offset_correlation: float
    max_update_uncertainty: float
    offset_features: list
    # Input bounds (the config's limits section; vmpower.limits).
    limits: dict

    @classmethod
    def from_config(cls, cfg: dict, source: str = "settings"):
        """From a whole config (vmpower.settings.load output) or the workflow's flat --settings.

        A mapping without any merge key (serving's ``{"ingest": ...}`` from a model's metadata)
        gives the FeatureSettings it needs, with no hinges (serving sets a model's own): kept
        until serving imports features.FeatureSettings itself."""
        if "merge" not in cfg and "alignment" not in cfg and isinstance(cfg.get("ingest"), dict):
            return FeatureSettings.from_ingest(cfg["ingest"], {}, source)
        return cls.build(flatten(cfg), source)


# ---------------------------------------------------------------- one run


@dataclasses.dataclass
class Run:
    """A run's two files read, tidied and put on one clock, with the VM features computed."""

    vm_raw: ingest.RawTable
    host_raw: ingest.RawTable
    zones: list
    vm_times: dict
    host_times: dict
    base: str
    t_vm: np.ndarray
    dt_vm: np.ndarray
    t_host: np.ndarray
    power: np.ndarray  # host power, one column per zone
    feats: pd.DataFrame  # with the per-sample ``_drop`` reason column
    feature_names: list
    vm_notes: dict

    @property
    def vm_path(self) -> Path:
        return self.vm_raw.path

    @property
    def host_path(self) -> Path:
        return self.host_raw.path


def _read_pair(vm_path, host_path, s: MergeSettings):
    """Both files read, their zones checked, their rows sorted and deduplicated on the common
    clock (repairs counted in the tables' notes). Returns (vm, host, zones, vm times, host
    times, time base)."""
    from vmpower import limits as limits_mod

    bounds = limits_mod.from_section(s.limits, validated=True)  # MergeSettings come from a checked config
    vm_raw, host_raw = _read_both(vm_path, host_path, bounds)
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
    vm_times = align.with_utc_offset(ingest.time_columns(vm_raw), s.vm_utc_offset_seconds)
    host_times = align.with_utc_offset(ingest.time_columns(host_raw), s.host_utc_offset_seconds)
    base = align.choose_base(vm_times, host_times, vm_path, host_path)
    host_raw, host_times, zones = tidy.usable_power(host_raw, host_times, zones, required)
    vm_raw, vm_times = tidy.sort_dedupe(vm_raw, vm_times, base)
    host_raw, host_times = tidy.sort_dedupe(host_raw, host_times, base)
    _check_required_features(vm_raw, s)
    return vm_raw, host_raw, zones, vm_times, host_times, base


def _read_both(vm_path, host_path, bounds) -> tuple[ingest.RawTable, ingest.RawTable]:
    """Both files read at once: the host file on a thread while this one scans and parses the
    VM file (pyarrow and numpy release the GIL; the JSON parser uses one core). The VM file's
    error is raised first, as when they were read one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="host-read") as pool:
        host = pool.submit(ingest.read_host_power, host_path, bounds)
        try:
            vm_raw = ingest.read_vm_features(vm_path, bounds)
        except BaseException:
            host.cancel()
            raise
        return vm_raw, host.result()


def _check_required_features(vm_raw, s: MergeSettings) -> None:
    df = vm_raw.df
    for name in s.required_features:
        if name not in df.columns:
            raise InputError(vm_raw.path, f"required feature {name} is missing (ingest.required_features)")
        if not pd.api.types.is_float_dtype(df[name].dtype):
            raise InputError(vm_raw.path, f"required feature {name} is not numeric (e.g. {str(df[name].iloc[0])[:20]!r})")
        if df[name].isna().all():
            raise InputError(vm_raw.path, f"required feature {name} is empty in every sample")


def prepare(vm_path, host_path, s: MergeSettings) -> Run:
    """A run's files read and tidied, both on one clock, and its VM features computed."""
    vm_raw, host_raw, zones, vm_times, host_times, base = _read_pair(vm_path, host_path, s)
    vm_path, host_path = vm_raw.path, host_raw.path
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
    power = host_raw.df[[ingest.ZONE_PREFIX + z for z in zones]].to_numpy("float64")
    return Run(vm_raw, host_raw, zones, vm_times, host_times, base, t_vm, dt_vm, t_host, power, feats,
               feature_names, vm_notes)


def merge_run(vm_path, host_path, s: MergeSettings) -> tuple[pd.DataFrame, dict]:
    """One run's merged rows and its quality report (alignment ``s.alignment``)."""
    r = prepare(vm_path, host_path, s)
    requested = s.alignment
    updates = align.kepler_updates(r.t_host, r.power) if s.alignment in ("auto", "kepler_interval") else None
    if s.alignment == "auto":
        # kepler_interval where the host file shows Kepler's updates, else per-sample windows.
        mode = "kepler_interval" if align.has_kepler_steps(updates[0], r.dt_vm) else "window"
        s = dataclasses.replace(s, alignment=mode)
    if s.alignment == "kepler_interval":
        out, quality = _merge_intervals(r, s, updates)
        return out, {**quality, "alignment_requested": requested}
    if s.alignment not in ("window", "nearest"):
        raise InputError(r.vm_path, f"unknown alignment mode {s.alignment!r} (auto, kepler_interval, window or nearest)")
    out, quality = _merge_samples(r, s)
    quality["alignment_requested"] = requested
    return out, quality


def _rows(front: dict, feats: pd.DataFrame, zones, labels, count, time_diff, keep) -> pd.DataFrame:
    """Merged rows: bookkeeping, features, one power column per zone, then match details."""
    out = pd.concat([pd.DataFrame(front), feats], axis=1)
    for i, z in enumerate(zones):
        out[power_column(z)] = labels[:, i]
    out["n_host_samples"] = count.astype("int64")
    out["time_diff"] = time_diff
    return out.loc[keep].reset_index(drop=True)


def _merge_samples(r: Run, s: MergeSettings) -> tuple[pd.DataFrame, dict]:
    """merge_run for alignment window or nearest: one row per VM sample."""
    t_vm, dt_vm, t_host = r.t_vm, r.dt_vm, r.t_host
    if s.alignment == "window":
        values, count = align.align_window(t_vm, dt_vm, t_host, r.power)
        matched = count >= max(int(s.min_host_samples), 1)
    else:
        values, count = align.align_nearest(t_vm, t_host, r.power, float(s.time_tolerance))
        matched = count > 0
    time_diff = np.abs(t_host[align.nearest_index(t_vm, t_host)] - t_vm)

    drop = r.feats.pop("_drop")
    outside = (t_vm < t_host[0]) | (t_vm - dt_vm > t_host[-1])
    reason = drop.copy()
    reason[reason.isna() & ~matched & outside] = "outside_host_range"
    reason[reason.isna() & ~matched] = "no_host_power"
    ref = values[:, r.zones.index(s.power_zone)]
    reason[reason.isna() & (ref < float(s.min_power_threshold))] = "below_min_power"
    keep = reason.isna().to_numpy()
    front = {"time": t_vm, "t_rel": t_vm - t_vm[0], "time_delta_seconds": dt_vm, "stress_workload": _workload(r.vm_raw)}
    out = _rows(front, r.feats.reset_index(drop=True), r.zones, values, count, time_diff, keep)

    n_vm, n_matched = len(t_vm), int(matched.sum())
    quality = run_quality.report(r, s.alignment, s.vm_clock_offset_seconds, {
        "rows_kept": int(keep.sum()),
        "match_rate": n_matched / n_vm if n_vm else 0.0,
        "rows_dropped": {k: int(v) for k, v in reason.value_counts().sort_index().items()},
        "time_diff_mean": float(time_diff[matched].mean()) if n_matched else None,
        "time_diff_max": float(time_diff[matched].max()) if n_matched else None,
    })
    low = (f"only {quality['match_rate']:.0%} of VM samples found host power in {r.host_path.name} "
           f"(minimum {float(s.min_match_rate):.0%}; clocks out of sync?)")
    _judge(quality, s, r, out, low)
    quality["lag"] = _lag(out, s)
    return out, quality


def _judge(quality: dict, s: MergeSettings, r: Run, out: pd.DataFrame, low_match: str) -> None:
    """Too low a match rate (``low_match`` says so) or too few VM samples kept: an error;
    warnings (the seed's indicators, repairs) into quality; no rows left: an error."""
    if quality["match_rate"] < float(s.min_match_rate):
        raise InputError(r.vm_path, low_match)
    quality["warnings"] = run_quality.warnings(quality, s.quality_warnings)
    run_quality.check_kept(quality, s.min_kept_fraction, r.vm_path, r.host_path)
    if out.empty:
        raise InputError(r.vm_path, f"no rows left after merging with {r.host_path.name}: {quality['rows_dropped']}")


def _lag(frame: pd.DataFrame, s: MergeSettings) -> dict:
    return engineer.run_lag(frame, s.lag_feature, s.lag_zone, s.max_lag_seconds)


def _workload(vm_raw) -> pd.Series:
    df = vm_raw.df
    if "stress_workload" in df:
        return df["stress_workload"].astype("string").fillna("unknown").reset_index(drop=True)
    return pd.Series("unknown", index=range(len(df)), dtype="string")


def _interval_inputs(r: Run, s: MergeSettings):
    """The VM feature matrix for interval averaging (warm-up/gap samples NaN), the columns present
    in this run, and the columns the offset search fits on (None: lag_feature absent)."""
    drop = r.feats.pop("_drop")
    values = r.feats.to_numpy("float64")
    values[drop.notna().to_numpy()] = np.nan  # rate warm-up/gap samples cover nothing
    # Perf counters absent for the whole run are NaN everywhere: average the other features and
    # leave those NaN, rather than treating every sample as uncovered.
    cols = np.flatnonzero(~np.isnan(values).all(axis=0))
    # The offset is fitted on lag_feature, offset_features and their hinges (those in this run).
    offset_names = []
    for f in dict.fromkeys([s.lag_feature, *s.offset_features]):
        offset_names += [f, *[engineer.hinge_name(f, float(k)) for k in s.hinges.get(f, [])]]
    sub = {r.feature_names[c]: i for i, c in enumerate(cols)}
    lag_sub = [sub[n] for n in offset_names if n in sub] if s.lag_feature in sub else None
    return drop, values, cols, lag_sub


def _no_intervals(r: Run, kinfo: dict) -> InputError:
    if kinfo["updates"] < 3:
        problem = f"only {kinfo['updates']} Kepler updates (value steps) found"
    else:
        problem = (f"power changes every {kinfo['median_interval_seconds']:g} s, not in Kepler's stepwise "
                   f"updates slower than the VM samples ({float(np.median(r.dt_vm)):g} s)")
    return InputError(r.host_path, f"{problem}: cannot use merge.alignment kepler_interval (use window)")


def _merge_intervals(r: Run, s: MergeSettings, updates) -> tuple[pd.DataFrame, dict]:
    """merge_run for alignment kepler_interval: one row per usable Kepler update interval."""
    t_vm, dt_vm = r.t_vm, r.dt_vm
    drop, values, cols, lag_sub = _interval_inputs(r, s)
    ref = r.zones.index(s.power_zone)
    lag_zone = r.zones.index(s.lag_zone) if s.lag_zone in r.zones else ref
    iv, kinfo = align.kepler_intervals(t_vm, dt_vm, values[:, cols], r.t_host, r.power, lag_zone, lag_sub, s, updates)
    if iv is None:
        raise _no_intervals(r, kinfo)
    means = np.full((len(iv["lo"]), values.shape[1]), np.nan)
    means[:, cols] = iv["means"]
    reason = pd.Series(iv["reason"], dtype="string")
    reason[reason.isna() & (iv["label"][:, ref] < float(s.min_power_threshold))] = "below_min_power"
    keep = reason.isna().to_numpy()

    # Workload of the VM sample covering each interval's end (host clock -> guest clock).
    idx = np.clip(np.searchsorted(t_vm, iv["hi"] - iv["offset"], side="left"), 0, len(t_vm) - 1)
    count = np.searchsorted(r.t_host, iv["hi"], side="right") - np.searchsorted(r.t_host, iv["lo"], side="right")
    front = {
        "time": iv["hi"] - iv["offset"],  # the interval's end on the guest clock
        "t_rel": iv["hi"] - iv["offset"] - t_vm[0],
        "time_delta_seconds": iv["hi"] - iv["lo"],
        "stress_workload": _workload(r.vm_raw).iloc[idx].reset_index(drop=True),
    }
    out = _rows(front, pd.DataFrame(means, columns=r.feature_names), r.zones, iv["label"], count,
                iv["uncertainty"], keep)
    quality = _interval_quality(r, s, iv, kinfo, reason, keep, drop)
    low = (f"only {quality['match_rate']:.0%} of VM samples fall in usable Kepler intervals "
           f"of {r.host_path.name} (minimum {float(s.min_match_rate):.0%}): {quality['rows_dropped']}")
    _judge(quality, s, r, out, low)
    # The per-sample lag (for the quality report): how late the labels are against the features.
    sample_power, n = align.align_window(t_vm, dt_vm, r.t_host, r.power)
    lag_frame = pd.DataFrame({"time": t_vm, **dict(zip(r.feature_names, values.T)),
                              **{power_column(z): sample_power[:, i] for i, z in enumerate(r.zones)}})[n > 0]
    quality["lag"] = _lag(lag_frame, s)
    return out, quality


def _interval_quality(r: Run, s: MergeSettings, iv: dict, kinfo: dict, reason: pd.Series, keep, drop) -> dict:
    """The kepler_interval quality report. A VM sample is matched when at least half of its
    window lies in kept intervals (the match rate of this mode); the others are counted by why
    they were not used."""
    t_vm, dt_vm = r.t_vm, r.dt_vm
    g_lo, g_hi = iv["lo"] - iv["offset"], iv["hi"] - iv["offset"]  # guest clock
    covered = align.kept_overlap(g_lo[keep], g_hi[keep], t_vm - dt_vm, t_vm)
    inside = (covered >= 0.5 * dt_vm) & drop.isna().to_numpy()  # warm-up/gap samples carry nothing
    n_vm = len(t_vm)
    vm_dropped = align.sample_drop_reasons(g_lo, g_hi, reason.to_numpy(dtype=object), keep, t_vm - 0.5 * dt_vm,
                                           inside, drop)
    return run_quality.report(r, s.alignment, s.vm_clock_offset_seconds, {
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


# ---------------------------------------------------------------- node_type dataset


def stack_runs(frames: dict[str, pd.DataFrame], zones_order) -> tuple[pd.DataFrame, dict]:
    """One dataset per node_type: runs stacked in run_id order. Zones kept are those every run
    has; features are the union (absent ones NaN)."""
    run_ids = sorted(frames)
    zone_sets = [{zone_of(c) for c in frames[r].columns if zone_of(c) is not None} for r in run_ids]
    common = set.intersection(*zone_sets)
    zones = [z for z in zones_order if z in common]
    dropped_zones = sorted(set.union(*zone_sets) - common)
    parts = []
    for r in run_ids:
        df = frames[r].drop(columns=[power_column(z) for z in dropped_zones if power_column(z) in frames[r]])
        parts.append(df.assign(run_id=r))
    data = pd.concat(parts, ignore_index=True, sort=False)
    front, tail = list(LEADING_COLUMNS), list(TRAILING_COLUMNS)
    power = [power_column(z) for z in zones]
    middle = sorted(c for c in data.columns if c not in front + power + tail)
    data = data[front + middle + power + tail]
    data["run_id"] = data["run_id"].astype("string")
    return data, {"runs": run_ids, "rows": int(len(data)), "zones": zones, "zones_dropped": dropped_zones}


def register(sub) -> None:
    """The merge and merge-dataset subcommands (merge_cli.py)."""
    from vmpower.pipeline import merge_cli

    merge_cli.register(sub)
