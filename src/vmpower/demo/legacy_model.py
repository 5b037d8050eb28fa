"""Collector emulation of the ``legacy`` synth profile (legacy.py writes the files).

The load and the true power come from the demo's latent model (demo.simulate: latent, true_power);
this module reproduces what the seed's collectors make of them: the guest's window timing, the
jiffy accounting of /proc/stat and psutil, the kernel's load averages, and Kepler's updates as
the host collector samples them.
"""

from __future__ import annotations

import math

from vmpower.demo.legacy import HOST_ZONES, PERF_INTS, VM_FIELDS
from vmpower.demo.simulate import US, latent, phases, rng_for, true_power, window_means

_ORDER = VM_FIELDS[3:-3]  # the measured columns, in the collector's order

# /proc/stat CPU fields in psutil's order; USER_HZ ticks per second.
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
HZ = 100
# Linux load average: fixed point with 11 bits, recomputed every 5 s (kernel/sched/loadavg.c).
FSHIFT, LOAD_FREQ = 11, 5.0
LOAD_EXP = (1884, 2014, 2037)


# --------------------------------------------------------------------------------------- model

def _timeline(leg, spec, rng):
    """Guest windows [begin, end] and host sample times, in seconds from the sync start (on the
    guest's and the host's clock respectively)."""
    import numpy as np

    iv = float(leg["interval"])
    dur = float(spec["duration"])
    version = int(spec.get("collector_version", 2))
    n_max = int(dur / iv) + 5
    w = leg["window_seconds"]  # perf off: the collector sleeps out the interval, plus overhead
    d = iv + float(w["min_extra"]) + rng.exponential(float(w["mean_extra"]), n_max)
    ovh = float(leg["tick_overhead_seconds"]) * rng.uniform(0.7, 1.6, n_max)
    ovh[0] = float(leg["first_window_delay_seconds"])
    if version == 1:
        ovh[1] = iv  # the first two samples are one interval further apart (measured: 2.0003 s)
        end = np.cumsum(ovh + d)
        target = None
    else:  # end_k = max(target_k, end_{k-1} + overhead_k) + d_k, as a running maximum
        target = np.arange(n_max) * iv
        c = np.cumsum(ovh + d)
        end = c + np.maximum.accumulate(target + ovh + d - c)
    begin = end - d
    keep = begin < dur  # the collector loops while (now - start) < duration
    h_int = iv
    nh = int(math.ceil(dur / h_int - 1e-9)) + 1 if version == 2 else int(dur / h_int)
    host_t = np.arange(nh) * h_int
    if version == 1:  # measured times: request latency after each target time
        lat = leg["host_latency_seconds"]
        host_t = host_t + np.clip(float(lat["mean"]) + float(lat["std"]) * rng.standard_normal(nh), 0.005, None)
        host_t = host_t[host_t < dur]
    return {"version": version, "begin": begin[keep], "end": end[keep], "d": d[keep],
            "target": None if target is None else target[keep], "host_t": host_t}


def _kepler(cfg_legacy, nt, rng, edges, step, power, g0, host_true):
    """Kepler's per-VM watts at the host samples: each update publishes the mean true power of
    the interval since the previous one plus noise (the VM's share of a noisy node power)."""
    import numpy as np

    k = cfg_legacy["kepler"]
    k_int = float(k["interval_seconds"])
    n_up = int(math.ceil((edges[-1] - g0) / k_int)) + 3
    upd = g0 + rng.uniform(0.0, k_int) + np.concatenate([[0.0], np.cumsum(
        k_int + float(k["interval_jitter_seconds"]) * rng.standard_normal(n_up - 1))])
    upd = upd[upd <= edges[-1]]
    truth = window_means(edges, step, {z: power[z] for z in HOST_ZONES}, upd[:-1], upd[1:])
    which = np.searchsorted(upd, host_true, side="right") - 1  # interval ending at upd[which]
    vals, noise = {}, {}
    # One draw per update for both zones: Kepler splits each zone's node power by the same VM
    # share, so the zones' errors move together (package/core stays ~1.4-2.4 as measured).
    common = rng.standard_normal(upd.size - 1)
    for z in HOST_ZONES:
        eps = float(nt["sigma"][z]) * common
        # Never <= 0: Kepler attributes a share of a positive node power.
        noise[z] = eps
        vals[z] = np.maximum(truth[z] + eps, 0.1 * truth[z])[which - 1]
    return vals, {z: noise[z] for z in HOST_ZONES}, {z: truth[z][which - 1] for z in HOST_ZONES}


def _cpu_times(leg, rng, wm, dt, gaps, vcpus):
    """Jiffies per /proc/stat field in each window (multinomial over the window's ticks), and the
    cumulative counters since boot at each window's begin and end."""
    import numpy as np

    g = leg["guest"]
    u = np.clip(wm["u"], 0.0, 1.0)
    sys_share = np.clip(float(g["system_scale"]) * wm["system"] / np.maximum(wm["u"], 1e-9), 0.0, 1.0)
    p = np.zeros((u.size, len(CPU_FIELDS)))
    p[:, 0] = u * (1.0 - sys_share)
    p[:, 2] = u * sys_share
    p[:, 4] = float(g["iowait_share"]) * np.minimum(wm["io"], 1.0) * (1.0 - u)
    p[:, 5] = float(g["irq_share"])
    p[:, 6] = float(g["softirq_share"]) * (1.0 + 20.0 * np.minimum(wm["net"], 1.0))
    p[:, 7] = float(g["steal_share"]) * (0.3 + u)
    p[:, 3] = np.clip(1.0 - p.sum(axis=1), 0.0, None)
    p /= p.sum(axis=1, keepdims=True)
    ticks = np.round(HZ * vcpus * dt).astype(np.int64) + rng.integers(0, 3, u.size)
    counts = rng.multinomial(ticks, p)
    gap_counts = rng.multinomial(np.round(HZ * vcpus * gaps).astype(np.int64), p)
    boot = np.round(rng.uniform(3600.0, 86400.0) * HZ * vcpus * np.array([0.05, 0.0, 0.02, 0.92, 0.002, 0.004,
                                                                          0.001, 0.003])).astype(np.int64)
    at_begin = boot + np.cumsum(gap_counts, axis=0) + np.cumsum(counts, axis=0) - counts
    return counts, at_begin, at_begin + counts


def _loadavg(rng, u_at, ticks, vcpus):
    """The kernel's load averages (sysinfo: multiples of 1/2048) at 5 s ticks, from the active
    task count; a recursion in integer fixed point, so one step per tick (tens per run)."""
    import numpy as np

    fixed_1 = 1 << FSHIFT
    active = (rng.binomial(vcpus, np.clip(u_at, 0.0, 1.0)) + rng.binomial(1, 0.05, u_at.size)) * fixed_1
    loads = np.zeros((ticks, 3), dtype=np.int64)
    cur = [int(rng.uniform(0.05, 2.0) * fixed_1) for _ in LOAD_EXP]
    for i in range(ticks):
        a = int(active[i])
        for j, e in enumerate(LOAD_EXP):
            new = cur[j] * e + a * (fixed_1 - e)
            if a >= cur[j]:
                new += fixed_1 - 1
            cur[j] = new // fixed_1
        loads[i] = cur
    return loads / fixed_1


def _guest_columns(leg, nt, rng, wm, lat, tl, grid, guest_true, vcpus, spawned):
    """The guest collector's columns {name: (kind, array)}; perf is off (counters 0)."""
    import numpy as np

    g = leg["guest"]
    dt = tl["end"] - tl["begin"]
    n = dt.size
    gaps = np.diff(np.concatenate([[0.0], tl["begin"]])) - np.concatenate([[0.0], dt[:-1]])
    counts, at_begin, at_end = _cpu_times(leg, rng, wm, dt, np.maximum(gaps, 0.0), vcpus)
    # psutil: float seconds since boot; the collector's deltas and shares in the same float steps
    delta = np.maximum(0.0, at_end / HZ - at_begin / HZ)
    total = delta[:, 0]
    for j in range(1, len(CPU_FIELDS)):  # left to right, as Python's sum() over the dict
        total = total + delta[:, j]
    pct = {f: delta[:, j] / total * 100.0 for j, f in enumerate(CPU_FIELDS)}
    cols = {k: ("int", np.zeros(n, dtype=np.int64)) for k in PERF_INTS}
    cols.update({
        "cpu_utilization": ("float", 100.0 - pct["idle"]), "cpu_user_time": ("float", pct["user"]),
        "cpu_system_time": ("float", pct["system"]), "cpu_nice_time": ("float", pct["nice"]),
        "cpu_iowait": ("float", pct["iowait"]), "cpu_irq": ("float", pct["irq"]),
        "cpu_softirq": ("float", pct["softirq"]), "cpu_steal": ("float", pct["steal"]),
        "cpu_idle": ("float", pct["idle"]),
    })
    cols.update(_os_columns(leg, nt, rng, lat, tl, grid, guest_true, vcpus))
    cols.update({k: ("float", np.zeros(n)) for k in ("instructions_per_cycle", "cache_miss_ratio",
                                                       "branch_miss_ratio")})
    cols["cpu_efficiency"] = ("float", (pct["user"] + pct["system"]) / 100.0)
    # /proc/stat deltas in the window: jiffies / USER_HZ (per-interval values, not counters)
    user_s, sys_s, nice_s = counts[:, 0] / HZ, counts[:, 2] / HZ, counts[:, 1] / HZ
    cols["sys_cpu_user_seconds"] = ("float", user_s)
    cols["sys_cpu_system_seconds"] = ("float", sys_s)
    cols["sys_cpu_total_seconds"] = ("float", user_s + sys_s + nice_s)
    rate = (float(g["context_switches_per_s"]) + float(g["context_switches_busy_per_s"]) * wm["u"] * vcpus
            + float(g["context_switches_io_per_s"]) * np.minimum(wm["io"], 1.0))
    bursts = rng.binomial(1, 0.04, n) * rng.geometric(1.0 / 300.0, n)
    cols["sys_context_switches"] = ("int", rng.poisson(rate * dt) + bursts + spawned * 40)
    cols["sys_processes_created"] = ("int", rng.poisson(float(g["forks_per_s"]) * dt) + spawned)
    cols["sys_procs_running"] = ("int", (1 + rng.binomial(vcpus, np.clip(wm["u"], 0.0, 1.0))).astype(np.int64))
    cols["sys_procs_blocked"] = ("int", rng.binomial(1, 0.003, n).astype(np.int64))
    return {k: cols[k] for k in _ORDER}


def _os_columns(leg, nt, rng, lat, tl, grid, guest_true, vcpus) -> dict:
    """psutil's memory, disk, network, process and load-average readings per sample."""
    import numpy as np

    g = leg["guest"]
    n = guest_true.size
    cols = {}
    # memory: psutil's percent has one decimal; available bytes are whole pages
    total_b = int(float(nt["vm"]["memory_gb"]) * 1024 ** 3)
    mem_frac = float(g["memory_base"]) + float(g["memory_gain"]) * (np.interp(guest_true, grid, lat["mem_used"])
                                                                    - float(lat["mem_used"].min()))
    drift = np.cumsum(rng.binomial(1, 0.1, n) * rng.normal(0.0, 800.0, n))  # pages; mostly unchanged
    avail = (np.round((1.0 - mem_frac) * total_b / 4096.0 + drift) * 4096).astype(np.int64)
    cols["memory_usage_percent"] = ("float", np.round((total_b - avail) / total_b * 100.0, 1))
    cols["memory_available_gb"] = ("float", avail / 1024 ** 3)
    writes = rng.binomial(1, float(g["disk_write_probability"]), n) * rng.geometric(1.0 / 40.0, n)
    cols["disk_io_read_mb"] = ("float", np.zeros(n))
    cols["disk_io_write_mb"] = ("float", writes * 4096 / (1024 * 1024))
    cols["network_bytes_sent"] = ("int", rng.binomial(1, 0.12, n) * rng.integers(52, 600, n))
    cols["network_bytes_recv"] = ("int", rng.poisson(1.3, n) * rng.integers(52, 120, n)
                                  + rng.binomial(1, 0.01, n) * rng.integers(1000, 70000, n))
    wander = np.clip(np.cumsum(rng.choice([-1, 0, 0, 0, 1], n)), -6, 6)
    busy_procs = np.round(np.interp(guest_true, grid, lat["uw"]) * vcpus * 2)
    cols["process_count"] = ("int", (int(rng.integers(*[int(v) for v in g["base_processes"]]))
                                     + wander + busy_procs).astype(np.int64))
    ticks = np.arange(-rng.uniform(0.0, LOAD_FREQ), tl["end"][-1] + LOAD_FREQ, LOAD_FREQ)
    tick_true = ticks - (tl["end"][0] - guest_true[0])
    loads = _loadavg(rng, np.interp(tick_true, grid, lat["u"]), ticks.size, vcpus)
    at = np.clip(np.searchsorted(ticks, tl["end"], side="right") - 1, 0, ticks.size - 1)
    for j, name in enumerate(("load_average_1min", "load_average_5min", "load_average_15min")):
        cols[name] = ("float", loads[at, j])
    return cols


def simulate_run(cfg: dict, nt_name: str, nt: dict, spec: dict, run_index: int) -> dict:
    """One legacy collection session (epoch floats on each collector's clock)."""
    import numpy as np

    leg = cfg["legacy"]
    rng = rng_for(int(cfg["seed"]), nt_name, spec["id"], "legacy")
    step = float(cfg["latent_step_seconds"])
    vcpus = int(nt["vm"]["vcpus"])
    dur = float(spec["duration"])
    start_ns = ((int(cfg["start_epoch"]) + run_index * int(cfg["run_spacing_seconds"])) * US
                + int(rng.integers(0, int(cfg["start_jitter_seconds"]) * US))) * 1000 + int(rng.integers(0, 1000))
    start = start_ns / 1e9  # the orchestrator's sync start, a time.time() float
    skew = float(rng.uniform(*leg["clock_skew_seconds"])) * (1.0 if rng.random() < 0.5 else -1.0)
    tl = _timeline(leg, spec, rng)

    # latent load: stress starts stress_lead_seconds before the collectors (orchestrator)
    lead = float(leg["stress_lead_seconds"])
    run_phases = phases(spec["workload"], dur + lead)
    k_int = float(leg["kepler"]["interval_seconds"])
    g0 = -(lead + 2.0 * k_int + 2.0)
    grid = g0 + step * np.arange(int(math.ceil((dur + 2.0 * k_int + 10.0 - g0) / step)))
    edges = np.append(grid, grid[-1] + step)
    lat = latent(cfg, run_phases, grid, -lead, rng)
    power = true_power(lat, nt["power"])

    a_true, b_true = tl["begin"] - skew, tl["end"] - skew  # guest clock = true time + skew
    wm = window_means(edges, step, {k: v for k, v in lat.items() if k != "widx"}, a_true, b_true)
    phase_starts = np.array([a - lead for _, a, _ in run_phases])
    spawned = (np.histogram(phase_starts, bins=np.concatenate([[a_true[0] - 1.0], b_true]))[0]
               * (vcpus + 1)).astype(np.int64)
    cols = _guest_columns(leg, nt, rng, wm, lat, tl, grid, b_true, vcpus, spawned)
    host_vals, noise, truth_at_host = _kepler(leg, nt, rng, edges, step, power, g0, tl["host_t"])

    # a few host samples where Kepler listed no VM (vm_count 0, watts 0)
    nh = tl["host_t"].size
    absent = np.zeros(nh, dtype=bool)
    k_abs = int(rng.integers(*[int(v) for v in leg["host_vm_absent_samples"]], endpoint=True))
    absent[rng.choice(np.arange(5, nh - 5), size=min(k_abs, max(nh - 10, 0)), replace=False)] = True

    guest_start = start + skew
    if tl["version"] == 1:
        g_abs = guest_start + tl["end"]
        g_rel = g_abs - g_abs[0]
        g_iso_t = g_abs
    else:
        g_abs = guest_start + tl["end"]
        g_iso_t = guest_start + tl["target"]
        g_rel = g_iso_t - guest_start
    h_abs = start + tl["host_t"]
    pw = window_means(edges, step, power, a_true, b_true)
    return {
        "start": start, "version": tl["version"],
        "vm": {"rel": g_rel, "abs": g_abs, "iso_t": g_iso_t, "delta": g_abs - (guest_start + tl["begin"]),
               "cols": cols},
        "host": {"rel": h_abs - start, "abs": h_abs, "vals": host_vals, "absent": absent},
        "noise": noise, "labels": host_vals, "truth_at_host": truth_at_host,
        "window_truth": {z: pw[z] for z in HOST_ZONES}, "vm_true": (a_true, b_true),
    }
