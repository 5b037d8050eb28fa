"""Counter semantics, decided from the data per run and per field, and the rates they give.

Collectors write /proc-style counters in two ways:

* ``cumulative`` – a counter since boot (or since the collector started): non-decreasing, the
  rate is its difference over the time between samples; a decrease is a counter reset.
* ``per_interval`` – the counter's increase during the sample's own window (the seed's
  collectors: ``sys_cpu_user_seconds`` is 0.0 or 0.01, ``sys_context_switches`` 120, 63, 103 …):
  the rate is the value over ``time_delta_seconds``.

Both become ``<name>_rate`` (per second), so feature groups and models see one column whatever the
collector wrote. ``ingest.counter_semantics`` forces a field's semantics; otherwise (``auto``) a
field is per_interval when it goes down in more than ``max_resets`` samples, or when its values are
per-interval-sized (never above ``size_ratio`` x its largest step: a counter since boot is far
larger than one step). Too short a series (under ``min_samples`` steps, e.g. the two records of a
live tick) cannot tell: it is taken as cumulative, what ``ingest.cumulative_features`` says.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd

CUMULATIVE, PER_INTERVAL, AUTO = "cumulative", "per_interval", "auto"


def forced(name: str, semantics: dict) -> str:
    """The configured semantics of a field (exact name first, then fnmatch patterns in order)."""
    if name in semantics:
        return semantics[name]
    for pattern, value in semantics.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return AUTO


def decide(values: pd.DataFrame, semantics: dict, detection: dict) -> dict[str, dict]:
    """{field: {"semantics", "decided_by", "reason", "decreases"}} for the candidate counter
    columns of one run (samples in time order; NaN cells are ignored)."""
    if values.shape[1] == 0:
        return {}
    v = values.to_numpy("float64")
    with np.errstate(invalid="ignore"):
        d = np.diff(v, axis=0)
        decreases = (d < 0).sum(axis=0)
        steps = np.isfinite(d).sum(axis=0)
        largest_step = np.nanmax(np.where(d > 0, d, 0.0), axis=0, initial=0.0)
        largest_value = np.nanmax(np.where(np.isfinite(v), np.abs(v), 0.0), axis=0, initial=0.0)
    max_resets = int(detection["max_resets"])
    sized = largest_value <= float(detection["size_ratio"]) * largest_step
    out = {}
    for j, name in enumerate(values.columns):  # one entry per field, not per row
        n_dec, n_steps = int(decreases[j]), int(steps[j])
        entry = {"decreases": n_dec, "steps": n_steps}
        how = forced(name, semantics)
        if how != AUTO:
            out[name] = {"semantics": how, "decided_by": "config", "reason": "ingest.counter_semantics", **entry}
        elif n_steps < int(detection["min_samples"]):
            out[name] = {"semantics": CUMULATIVE, "decided_by": "default",
                         "reason": f"only {n_steps} steps: too few to tell (ingest.cumulative_features)", **entry}
        elif n_dec > max_resets:
            out[name] = {"semantics": PER_INTERVAL, "decided_by": "data",
                         "reason": f"goes down in {n_dec} of {n_steps} steps", **entry}
        elif sized[j]:
            out[name] = {"semantics": PER_INTERVAL, "decided_by": "data",
                         "reason": f"values per-interval-sized (max {largest_value[j]:g}, largest step "
                                   f"{largest_step[j]:g})", **entry}
        else:
            out[name] = {"semantics": CUMULATIVE, "decided_by": "data",
                         "reason": "non-decreasing" if n_dec == 0 else f"non-decreasing but for {n_dec} reset(s)",
                         **entry}
    return out


def rates(feats: pd.DataFrame, decisions: dict[str, dict], t: np.ndarray, window: np.ndarray | None,
          drop: pd.Series) -> pd.DataFrame:
    """``feats`` with each decided counter replaced by ``<name>_rate`` (per second). ``t``: sample
    times; ``window``: the samples' own windows (time_delta_seconds) or None. Rows a cumulative
    rate cannot use get their reason in ``drop`` (in place): the first sample (``rate_warmup``),
    a missing sample in between (``rate_gap``), a decrease (``counter_reset``)."""
    cumulative = [c for c, d in decisions.items() if d["semantics"] == CUMULATIVE]
    per_interval = [c for c, d in decisions.items() if d["semantics"] == PER_INTERVAL]
    dt = np.diff(t, prepend=np.nan)
    if per_interval:
        own = window if window is not None else _filled(dt)
        feats[per_interval] = feats[per_interval].to_numpy("float64") / own[:, None]
    if cumulative:
        delta = feats[cumulative].diff().to_numpy()
        reset = (delta < 0).any(axis=1)
        width = window if window is not None else dt
        gap = dt > 1.5 * np.maximum(width, 1e-9)  # a missing sample: the rate spans the gap
        feats[cumulative] = delta / dt[:, None]
        drop[gap & drop.isna().to_numpy()] = "rate_gap"
        # A missing previous value leaves no rate (the sample with the NaN itself is dropped already).
        drop[np.isnan(delta).any(axis=1) & drop.isna().to_numpy()] = "missing_feature"
        drop[reset] = "counter_reset"
        drop.iloc[0] = "rate_warmup"
    return feats.rename(columns={c: f"{c}_rate" for c in decisions})


def _filled(dt: np.ndarray) -> np.ndarray:
    """Time between samples, the first one taken as the median step (it has no predecessor)."""
    out = dt.copy()
    out[0] = float(np.nanmedian(dt[1:])) if len(dt) > 1 else 1.0
    return out


def combine(per_run: dict[str, dict[str, str]]) -> dict[str, str]:
    """A node_type's counter semantics from its runs' decisions: the one they agree on, else
    ``mixed`` (each run's rate was still taken the right way; a live predictor needs one)."""
    fields = sorted({f for d in per_run.values() for f in d})
    out = {}
    for f in fields:
        seen = {d[f] for d in per_run.values() if f in d}
        out[f] = seen.pop() if len(seen) == 1 else "mixed"
    return out
