"""A run's merge outcome judged: no silent data loss, and the seed's quality indicators.

* ``merge.min_kept_fraction``: a run whose merge keeps less than this share of its VM samples
  fails its own merge job, with one line naming the file, the share kept and the top reasons.
* ``merge.quality_warnings``: the seed's indicators (match rate above 90 %, mean time difference
  below 0.2 s) and any feature dropped or sample repaired, as warnings in quality.json (the report
  shows them); a warning never stops the build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmpower.errors import InputError

# Repairs counted by tidy.py / ingest (quality.json keys after the vm_/host_ prefix).
REPAIRS = ("unsorted_rows", "duplicate_rows", "conflicting_rows", "nan_power_rows", "repeated_headers",
           "incomplete_last_line")


# VM samples before or after the host file's readings: the host collector ran shorter than the
# guest's. That is coverage, guarded by merge.min_match_rate and warned about by the match rate;
# min_kept_fraction guards the samples the host file does cover.
OUTSIDE = ("outside_host_range", "outside_kepler_updates")


def kept(quality: dict) -> tuple[int, int, dict]:
    """(VM samples kept, VM samples, {reason: VM samples dropped})."""
    n = int(quality["vm_samples"])
    if "vm_samples_matched" in quality:  # kepler_interval: rows are intervals, not samples
        return int(quality["vm_samples_matched"]), n, dict(quality.get("vm_samples_dropped") or {})
    return int(quality["rows_kept"]), n, dict(quality.get("rows_dropped") or {})


def top_reasons(reasons: dict, k: int = 3) -> str:
    items = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{r}={n}" for r, n in items) or "none recorded"


def check_kept(quality: dict, min_fraction: float, vm_path: Path, host_path: Path) -> None:
    """Records the shares kept; raises when the share of the VM samples within the host file's
    time range that the merge kept is below ``min_fraction``."""
    n_kept, n, reasons = kept(quality)
    covered = n - sum(reasons.get(r, 0) for r in OUTSIDE)
    share = n_kept / covered if covered else 0.0
    quality["vm_samples_kept_fraction"] = n_kept / n if n else 0.0
    quality["vm_samples_kept_fraction_in_host_range"] = share
    if share < float(min_fraction):
        inside = {r: c for r, c in reasons.items() if r not in OUTSIDE}
        raise InputError(
            vm_path,
            f"merge with {Path(host_path).name} kept only {n_kept} of the {covered} VM samples in the host "
            f"file's time range ({share:.1%}, merge.min_kept_fraction {float(min_fraction):.0%}); "
            f"top drop reasons: {top_reasons(inside)}",
        )


def warnings(quality: dict, thresholds: dict) -> list[str]:
    """The run's warnings (short sentences, stable order)."""
    out = []
    rate, low = quality.get("match_rate"), thresholds.get("min_match_rate")
    if rate is not None and low is not None and rate <= float(low):
        out.append(f"match rate {rate:.1%} not above {float(low):.0%}")
    diff, high = quality.get("time_diff_mean"), thresholds.get("max_time_diff_mean_seconds")
    if diff is not None and high is not None and diff >= float(high):
        out.append(f"mean time diff {diff:.3f} s not below {float(high):g} s")
    for side in ("vm", "host"):
        for key in REPAIRS:
            if quality.get(f"{side}_{key}"):
                out.append(f"{side} file: {key.replace('_', ' ')} {quality[f'{side}_{key}']}")
    for name, n in (quality.get("vm_missing_feature_cells") or {}).items():
        out.append(f"vm file: feature {name} missing in {n} samples (dropped)")
    if quality.get("host_zones_all_missing"):
        out.append(f"host file: zone(s) {', '.join(quality['host_zones_all_missing'])} empty, not modelled")
    for name, why in (quality.get("vm_features_dropped") or {}).items():
        if why != "perf_not_counted":  # perf off is normal for older collectors
            out.append(f"feature {name} dropped: {why}")
    return out


def report(run, alignment: str, vm_clock_offset: float, fields: dict) -> dict:
    """A run's quality report: what every alignment reports, plus its own ``fields``.
    ``run``: the merge's prepared pair (merge.Run)."""
    t_vm, dt_vm, t_host = run.t_vm, run.dt_vm, run.t_host
    quality = {
        "vm_file": run.vm_raw.path.name,
        "host_file": run.host_raw.path.name,
        "alignment": alignment,
        "time_base": run.base,
        "vm_samples": len(t_vm),
        "host_samples": int(len(t_host)),
        **fields,
        "vm_span_seconds": float(t_vm[-1] - t_vm[0]),
        "host_span_seconds": float(t_host[-1] - t_host[0]),
        "overlap_seconds": float(min(t_vm[-1], t_host[-1]) - max(t_vm[0] - dt_vm[0], t_host[0])),
        "vm_clock_offset_seconds": float(vm_clock_offset),
        "zones": run.zones,
        "features": run.feature_names,
        **{f"vm_{k}" if not k.startswith("vm_") else k: v for k, v in {**run.vm_raw.notes, **run.vm_notes}.items()},
        **{f"host_{k}": v for k, v in run.host_raw.notes.items()},
    }
    # Local time-zone offsets (naive wall clock minus epoch) where a file carries both clocks.
    for side, times in (("vm", run.vm_times), ("host", run.host_times)):
        if "epoch" in times and "naive" in times:
            quality[f"{side}_utc_offset_seconds"] = float(np.median(times["naive"] - times["epoch"]))
    return quality
