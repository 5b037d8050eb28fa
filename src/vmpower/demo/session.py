"""One demo collection session: the schedule of both collectors, Kepler's lagging noisy view of
the true power (host rows), the guest collector's windows (guest rows) and what a model that
knew the truth would get against the labels (the noise floor).

The random draws happen in a fixed order (schedule, latent load, Kepler, host samples, guest
windows, guest columns, lost samples): keep it when editing, or every byte of the demo changes.
"""

from __future__ import annotations

import math

from vmpower.demo import pinning_variant
from vmpower.demo.guest import guest_columns
from vmpower.demo.simulate import HOST_ZONE_ORDER, US, latent, phases, rng_for, true_power, window_means


def _schedule(cfg: dict, spec: dict, run_index: int, rng) -> dict:
    """Start, lead, tail and guest clock skew (host clock = true time)."""
    host_start_us = (int(cfg["start_epoch"]) + run_index * int(cfg["run_spacing_seconds"])) * US + int(
        rng.integers(0, int(cfg["start_jitter_seconds"]) * US))
    lead = float(rng.uniform(*cfg["host_lead_seconds"]))
    tail = float(rng.uniform(*cfg["host_tail_seconds"]))
    skew = float(rng.uniform(*cfg["vm_clock_skew_seconds"])) * (1.0 if rng.random() < 0.5 else -1.0)
    lead_us, skew_us = int(round(lead * US)), int(round(skew * US))
    lead = lead_us / US
    return {"host_start_us": host_start_us, "lead": lead, "tail": tail, "skew": skew,
            "lead_us": lead_us, "skew_us": skew_us, "host_dur": lead + float(spec["duration"]) + tail}


def _kepler(cfg: dict, nt: dict, rng, edges, step, power, g0):
    """Update times; value j = mean true power over (u[j-1], u[j]] + N(0, sigma_z); first value 0."""
    import numpy as np

    k_int = float(cfg["kepler"]["interval_seconds"])
    n_up = int(math.ceil((edges[-1] - g0) / k_int)) + 3
    upd = -rng.uniform(0.0, k_int) + np.concatenate([[0.0], np.cumsum(
        k_int + float(cfg["kepler"]["interval_jitter_seconds"]) * rng.standard_normal(n_up - 1))])
    upd = upd[upd <= edges[-1]]  # updates after the grid would average nothing; the host has stopped by then
    truth = window_means(edges, step, power, upd[:-1], upd[1:])
    kepler, noise = {}, {}
    for z in HOST_ZONE_ORDER:
        eps = float(nt["sigma"][z]) * rng.standard_normal(upd.size - 1)
        noise[z] = eps
        kepler[z] = np.concatenate([[0.0], np.maximum(truth[z] + eps, 0.0)])  # Kepler never reports < 0
    return upd, kepler, noise


def _host_samples(cfg: dict, rng, sched: dict, duration: float):
    """Host collector times (us from its start): ~interval with jitter and a few-second gap."""
    import numpy as np

    h_int = float(cfg["host_interval"])
    nh = int(sched["host_dur"] / h_int) + 1
    ht_us = np.round((np.arange(nh) * h_int + np.abs(float(cfg["host_jitter_seconds"]) * rng.standard_normal(nh)))
                     * US).astype(np.int64)
    ht_us[0] = 0
    ht_us = np.maximum.accumulate(ht_us)
    gap_len = float(rng.uniform(*cfg["host_gap_seconds"]))
    gap_at = sched["lead"] + duration * float(rng.uniform(0.3, 0.7))
    ht = ht_us / US
    return ht_us[~((ht >= gap_at) & (ht < gap_at + gap_len))]


def _guest_windows(cfg: dict, rng, duration: float, killed: bool):
    """Guest window ends (us from its start) and lengths, exact in whole microseconds."""
    import numpy as np

    vj = cfg["vm_jitter_seconds"]
    v_int = float(cfg["vm_interval"])
    n_max = int(duration / v_int) + 10
    d_us = np.round(np.clip(v_int + float(vj["mean"]) + float(vj["std"]) * rng.standard_normal(n_max),
                            v_int * 0.5, v_int * 1.5) * US).astype(np.int64)
    ends_rel_us = np.cumsum(d_us)
    vm_dur = duration * (float(cfg["killed_fraction"]) if killed else 1.0)
    keep = ends_rel_us <= int(vm_dur * US)
    return ends_rel_us[keep], d_us[keep]


def _window_error(host_vals: dict, ht, a_true, b_true, ok_windows, pw: dict) -> dict:
    """|mean host value over each guest window - true window power|: a perfect model's error."""
    import numpy as np

    hv = {z: np.concatenate([[0.0], np.cumsum(host_vals[z])]) for z in HOST_ZONE_ORDER}
    lo_i = np.searchsorted(ht, a_true, side="left")
    hi_i = np.searchsorted(ht, b_true, side="right")
    ok = (hi_i > lo_i) & ok_windows
    return {z: np.abs((hv[z][hi_i] - hv[z][lo_i])[ok] / (hi_i - lo_i)[ok] - pw[z][ok]) for z in HOST_ZONE_ORDER}


def _lost_samples(cfg: dict, rng, n: int):
    """Keep-mask of the guest samples: a few lost ones (never the first/last few)."""
    import numpy as np

    drop = rng.choice(np.arange(5, max(n - 5, 6)), size=min(int(cfg["vm_missing_samples"]), max(n - 10, 0)),
                      replace=False)
    keep_v = np.ones(n, dtype=bool)
    keep_v[drop] = False
    return keep_v


def simulate_run(cfg: dict, nt_name: str, nt: dict, spec: dict, run_index: int) -> dict:
    """One collection session: guest columns, host rows, Kepler truth for the noise floor."""
    import numpy as np

    rng = rng_for(int(cfg["seed"]), nt_name, spec["id"], "run")
    step = float(cfg["latent_step_seconds"])
    duration = float(spec["duration"])
    sched = _schedule(cfg, spec, run_index, rng)
    lead = sched["lead"]
    run_phases = phases(spec["workload"], duration)

    # latent signals and true power on the fine grid (seconds from host start)
    k_int = float(cfg["kepler"]["interval_seconds"])
    g0 = -(k_int + 2.0)
    grid = g0 + step * np.arange(int(math.ceil((sched["host_dur"] + 2.0 * k_int + 2.0 - g0) / step)))
    edges = np.append(grid, grid[-1] + step)
    lat = latent(cfg, run_phases, grid, lead, rng)
    power = true_power(lat, nt["power"])
    upd, kepler, noise = _kepler(cfg, nt, rng, edges, step, power, g0)
    ht_us = _host_samples(cfg, rng, sched, duration)
    ht = ht_us / US
    which = np.searchsorted(upd, ht, side="right") - 1  # values repeat between updates
    host_vals = {z: kepler[z][which] for z in HOST_ZONE_ORDER}

    ends_rel_us, d_us = _guest_windows(cfg, rng, duration, bool(spec.get("killed", False)))
    b_true = lead + ends_rel_us / US  # window ends in true time from host start
    dt = d_us / US
    a_true = b_true - dt
    wm = window_means(edges, step, {k: v for k, v in lat.items() if k not in ("widx",)}, a_true, b_true)
    pw = window_means(edges, step, power, a_true, b_true)
    end_idx = np.clip(np.searchsorted(edges, b_true, side="right") - 2, 0, grid.size - 1)
    workload = np.array(list(cfg["workloads"]), dtype=object)[lat["widx"][end_idx]]
    cols = guest_columns(cfg, nt, rng, wm, lat, end_idx, dt, spec, run_phases, b_true, lead)
    # Pinned/unpinned guest view (docs/pinning.md); variant "none" leaves the columns unchanged.
    cols = pinning_variant.apply(cfg, nt, cols, dt, rng_for(int(cfg["seed"]), nt_name, spec["id"], "pinning"))
    keep_v = _lost_samples(cfg, rng, ends_rel_us.size)

    vm_start_abs_us = sched["host_start_us"] + sched["lead_us"] + sched["skew_us"]
    vm_abs_us = vm_start_abs_us + ends_rel_us
    vm = {
        "timestamp_us": (vm_abs_us - vm_start_abs_us)[keep_v],
        "abs_us": vm_abs_us[keep_v],
        "delta_us": d_us[keep_v],
        "workload": workload[keep_v],
        "cols": {k: (kind, v[keep_v]) for k, (kind, v) in cols.items()},
    }
    host = {"abs_us": sched["host_start_us"] + ht_us, "rel_us": ht_us, "vals": host_vals}
    window_err = _window_error(host_vals, ht, a_true, b_true, (a_true > upd[1]) & keep_v, pw)
    return {
        "host_start_us": sched["host_start_us"], "vm": vm, "host": host, "noise": noise, "window_err": window_err,
        "labels": {z: kepler[z][1:] for z in HOST_ZONE_ORDER}, "skew": sched["skew"], "lead": lead,
    }
