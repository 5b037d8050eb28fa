"""Pinned vs unpinned demo runs (EP-003 FR5; docs/pinning.md).

The demo's guest columns come from the latent load signals; this module changes what the guest
sees of them, never the true power (the host's Kepler numbers stay as they are):

* ``pinned``: dedicated vCPUs. Steal time is 0 (the stolen share becomes idle).
* ``unpinned``: vCPUs share host cores with other VMs. Steal time is bursty (an AR(1) process
  around ``steal_percent``, taken from idle), the guest's CPU time accounting and perf counts
  jitter per window (``counter_noise``, vCPU preemption and migration), and the context-switch
  count varies (``context_switch_noise``, log-normal per window). None of it shows in the power.
* ``none``: the columns unchanged (the default data set).

``synth.pinning.variant`` picks the variant; ``synth.node_types.<nt>.pinning`` overrides it.
"""

from __future__ import annotations

import math

VARIANTS = ("none", "pinned", "unpinned")
_PERF = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses")
_CPU_SECONDS = ("sys_cpu_user_seconds", "sys_cpu_system_seconds")
_USER_HZ_SECONDS = 0.01


def variant_of(cfg: dict, nt: dict) -> str:
    return str(nt.get("pinning") or (cfg.get("pinning") or {}).get("variant") or "none")


def _ar1(rng, n: int, dt, tau: float):
    """Stationary unit-variance AR(1) noise with time constant ``tau`` (windows of mean ``dt`` s)."""
    import numpy as np
    from scipy.signal import lfilter

    a = math.exp(-float(np.mean(dt)) / max(tau, 1e-9))
    y0 = rng.standard_normal()
    return lfilter([math.sqrt(1.0 - a * a)], [1.0, -a], rng.standard_normal(n), zi=[a * y0])[0]


def _cpu_split(cols: dict, steal):
    """Set cpu_steal to ``steal`` (percent): the difference moves between steal and idle."""
    import numpy as np

    old, idle = cols["cpu_steal"][1], cols["cpu_idle"][1]
    new = np.clip(steal, 0.0, old + idle)
    delta = new - old
    busy = cols["cpu_utilization"][1] + delta
    cols["cpu_steal"] = ("float", new)
    cols["cpu_idle"] = ("float", np.clip(idle - delta, 0.0, None))
    cols["cpu_utilization"] = ("float", busy)
    cols["cpu_efficiency"] = ("float", busy / 100.0)


def _recount(cum, factor):
    """A cumulative counter whose per-window increments are scaled by ``factor``."""
    import numpy as np

    inc = np.diff(cum.astype("float64"), prepend=float(cum[0])) * factor
    return float(cum[0]) + np.cumsum(inc)


def apply(cfg: dict, nt: dict, cols: dict, dt, rng) -> dict:
    """The guest columns {name: (kind, array)} of one run as the node_type's variant sees them.
    ``rng``: a generator for this run only (the other columns' draws are not disturbed)."""
    import numpy as np

    variant = variant_of(cfg, nt)
    if variant == "none":
        return cols
    cols = dict(cols)
    if variant == "pinned":
        _cpu_split(cols, np.zeros_like(cols["cpu_steal"][1]))
        return cols
    p = cfg["pinning"]["unpinned"]
    n = len(dt)
    steal = float(p["steal_percent"]) + float(p["steal_burst_std"]) * _ar1(rng, n, dt, float(p["tau_seconds"]))
    _cpu_split(cols, steal)
    sigma = float(p["counter_noise"])
    for name in (*_PERF, *_CPU_SECONDS):
        if name in cols:
            factor = np.exp(sigma * rng.standard_normal(n) - 0.5 * sigma * sigma)
            kind, v = cols[name]
            if name in _CPU_SECONDS:
                v = np.round(_recount(v, factor) / _USER_HZ_SECONDS) * _USER_HZ_SECONDS
            else:
                v = np.round(v * factor).astype(np.int64)
            cols[name] = (kind, v)
    for miss, total in (("cache_misses", "cache_references"), ("branch_misses", "branches")):
        cols[miss] = ("int", np.minimum(cols[miss][1], cols[total][1]))
    for ratio, num, den in (("instructions_per_cycle", "instructions", "cpu_cycles"),
                            ("cache_miss_ratio", "cache_misses", "cache_references"),
                            ("branch_miss_ratio", "branch_misses", "branches")):
        if cols[den][1].any():  # a perf-less run keeps its zeros
            cols[ratio] = ("float", cols[num][1] / np.maximum(cols[den][1], 1))
    s_cs = float(p["context_switch_noise"])
    cs = cols["context_switches"][1]
    new_cs = np.round(cs * np.exp(s_cs * rng.standard_normal(n) - 0.5 * s_cs * s_cs)).astype(np.int64)
    if cs.any():  # perf-less runs count 0 here; /proc's cumulative count varies all the same
        cols["context_switches"] = ("int", new_cs)
    sys_cs = cols["sys_context_switches"][1]
    base = np.diff(sys_cs, prepend=sys_cs[0]).astype("float64")
    cols["sys_context_switches"] = ("int", (int(sys_cs[0]) + np.cumsum(np.round(
        base * np.exp(s_cs * rng.standard_normal(n) - 0.5 * s_cs * s_cs)))).astype(np.int64))
    return cols
