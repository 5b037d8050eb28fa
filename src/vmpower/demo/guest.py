"""The demo guest collector's columns, from the window means of the latent signals.

Each helper draws from the run's generator in the order the columns were first written; keep
the order of the calls in :func:`guest_columns` when editing (every byte depends on it).
"""

from __future__ import annotations

import math

from vmpower.demo.simulate import ema

PERF_COUNTERS = (
    "cpu_cycles", "instructions", "cache_references", "cache_misses",
    "branches", "branch_misses", "page_faults", "context_switches",
)
PERF_RATIOS = ("instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")
LOADAVG_TAUS = (60.0, 300.0, 900.0)  # Linux load-average time constants
USER_HZ_SECONDS = 0.01  # /proc/stat resolution


def _perf(g, wm, dt, vcpus, freq_hz, noisy, rng) -> dict:
    """perf counters of the window (what perf stat would count for the VM's vCPUs)."""
    import numpy as np

    v = {"busy_s": wm["u"] * vcpus * dt}  # busy vCPU seconds in the window
    v["cycles"] = np.round(noisy(v["busy_s"] * freq_hz)).astype(np.int64)
    v["instructions"] = np.round(noisy(wm["ins"] * vcpus * dt * freq_hz)).astype(np.int64)
    v["refs"] = np.round(noisy(wm["refs"] * vcpus * dt * freq_hz)).astype(np.int64)
    v["misses"] = np.minimum(np.round(noisy(wm["misses"] * vcpus * dt * freq_hz)).astype(np.int64), v["refs"])
    v["branches"] = np.round(noisy(wm["branches"] * vcpus * dt * freq_hz)).astype(np.int64)
    v["bmisses"] = np.minimum(np.round(noisy(wm["branch_misses"] * vcpus * dt * freq_hz)).astype(np.int64),
                              v["branches"])
    v["pf"] = rng.poisson((float(g["page_faults_per_s"]) + float(g["page_faults_mem_per_s"]) * wm["traffic"]) * dt)
    v["cs_true"] = rng.poisson((float(g["context_switches_per_s"]) * (1.0 + wm["u"] * vcpus)
                                + float(g["context_switches_io_per_s"]) * wm["io"]) * dt)
    return v


def _cpu_split(g, wm, n, noisy, rng) -> dict:
    """CPU time split in percent of the VM's CPU time."""
    import numpy as np

    busy = np.clip(100.0 * noisy(wm["u"]) + 0.2 * rng.standard_normal(n), 0.05, 100.0)
    steal = np.clip(float(g["steal_percent"]) * (0.3 + wm["u"]) * np.abs(1.0 + 0.3 * rng.standard_normal(n)), 0.0, None)
    irq = (0.02 + 0.15 * wm["u"]) * np.abs(1.0 + 0.1 * rng.standard_normal(n))
    softirq = (0.05 + 1.5 * np.minimum(wm["net"], 1.0)) * np.abs(1.0 + 0.1 * rng.standard_normal(n))
    rest = np.clip(busy - steal - irq - softirq, 0.0, None)
    system_share = np.clip(wm["system"] / np.maximum(wm["u"], 1e-9), 0.0, 1.0)
    system = rest * system_share
    user = rest - system
    steal, irq, softirq = (np.minimum(x, busy) for x in (steal, irq, softirq))
    busy = user + system + irq + softirq + steal
    iowait = np.clip(100.0 * 0.06 * np.minimum(wm["io"], 1.0) * (1.0 - busy / 100.0), 0.0, None)
    idle = np.clip(100.0 - busy - iowait, 0.0, None)
    return {"busy": busy, "steal": steal, "irq": irq, "softirq": softirq, "system": system, "user": user,
            "iowait": iowait, "idle": idle, "nice": np.zeros(n)}


def _memory_io(cfg, nt, wm, lat, end_idx, dt, n, fn, noisy, rng) -> dict:
    """Memory (usage follows the workload's footprint with a lag), disk and network."""
    import numpy as np

    g = cfg["guest"]
    mem_frac = ema(lat["mem_used"][end_idx],
                   1.0 - math.exp(-float(cfg["vm_interval"]) / float(g["memory_tau_seconds"])),
                   float(cfg["workloads"]["idle"]["mem_used"]))
    mem_pct = np.clip(100.0 * mem_frac + 0.05 * rng.standard_normal(n), 1.0, 99.0)
    mem_gb = float(nt["vm"]["memory_gb"])
    io = wm["io"]
    return {
        "mem_pct": mem_pct,
        "mem_avail": mem_gb * (1.0 - mem_pct / 100.0) * (1.0 + 0.002 * rng.standard_normal(n)),
        "disk_r": np.clip(noisy(io * float(g["disk_read_mb_per_s"]) * dt, 3 * fn), 0.0, None),
        "disk_w": np.clip(noisy(io * float(g["disk_write_mb_per_s"]) * dt, 3 * fn), 0.0, None),
        "net_s": np.round(noisy(wm["net"] * float(g["net_bytes_per_s"]) * dt, 3 * fn)).astype(np.int64),
        "net_r": np.round(noisy(wm["net"] * float(g["net_bytes_per_s"]) * 1.3 * dt, 3 * fn)).astype(np.int64),
    }


def _processes(cfg, wm, lat, end_idx, busy, vcpus, n, rng) -> dict:
    """Process count (stress-ng workers on top of a wandering base) and load averages."""
    import numpy as np

    g, wl = cfg["guest"], cfg["workloads"]
    procs_w = np.array([float(wl[w]["procs"]) for w in wl])[lat["widx"][end_idx]]
    stress_procs = np.where(procs_w > 0, np.round(procs_w * vcpus) + 1, 0)
    base = int(rng.integers(*[int(v) for v in g["base_processes"]]))
    wander = np.clip(np.cumsum(rng.choice([-1, 0, 0, 0, 1], n)), -8, 8)
    runnable = busy / 100.0 * vcpus
    blocked = rng.binomial(2, np.clip(0.3 * wm["io"], 0.0, 1.0))
    y0 = float(cfg["background"]["util"]) * vcpus * rng.uniform(0.5, 3.0)
    alpha = [1.0 - math.exp(-float(cfg["vm_interval"]) / tau) for tau in LOADAVG_TAUS]
    return {"procs_w": procs_w, "process_count": (base + wander + stress_procs).astype(np.int64),
            "blocked": blocked, "loads": [ema(runnable + blocked, a, y0) for a in alpha]}


def _proc_stat(cfg, wm, cpu, v, procs_w, dt, vcpus, spawned, rng) -> dict:
    """/proc/stat counters, cumulative since boot (boot happened a while before the run)."""
    import numpy as np

    g = cfg["guest"]
    uptime = rng.uniform(3600.0, 20.0 * 86400.0)

    def cum_seconds(pct, frac0):
        start = uptime * vcpus * frac0
        return np.round((start + np.cumsum(pct / 100.0 * vcpus * dt)) / USER_HZ_SECONDS) * USER_HZ_SECONDS

    out = {"uptime": uptime,
           "sys_user": cum_seconds(cpu["user"] + cpu["nice"], 0.03),
           "sys_system": cum_seconds(cpu["system"] + cpu["irq"] + cpu["softirq"], 0.01),
           "sys_idle": cum_seconds(cpu["idle"], 0.95),
           "sys_iowait": cum_seconds(cpu["iowait"], 0.002),
           "sys_cs": int(uptime * 900) + np.cumsum(v["cs_true"])}
    out["sys_irq"] = int(uptime * 400 * vcpus) + np.cumsum(
        rng.poisson(float(g["interrupts_per_s_per_vcpu"]) * vcpus * (0.3 + wm["u"]) * dt))
    forks = rng.poisson(float(g["forks_per_s"]) * dt) + spawned * np.round(procs_w * vcpus + 1).astype(np.int64)
    out["sys_forks"] = int(uptime * 2) + np.cumsum(forks)
    out["procs_running"] = (1 + rng.binomial(vcpus, np.clip(wm["u"], 0.0, 1.0))).astype(np.int64)
    return out


def _perf_columns(v: dict, perf: bool, n: int) -> dict:
    """perf counters and ratios; an older collector without perf access writes zeros."""
    import numpy as np

    if not perf:
        return {k: ("int", np.zeros(n, dtype=np.int64)) for k in PERF_COUNTERS}, {k: np.zeros(n) for k in PERF_RATIOS}
    cols = {
        "cpu_cycles": ("int", v["cycles"]), "instructions": ("int", v["instructions"]),
        "cache_references": ("int", v["refs"]), "cache_misses": ("int", v["misses"]),
        "branches": ("int", v["branches"]), "branch_misses": ("int", v["bmisses"]),
        "page_faults": ("int", v["pf"].astype(np.int64)), "context_switches": ("int", v["cs_true"].astype(np.int64)),
    }
    ratios = {
        "instructions_per_cycle": v["instructions"] / np.maximum(v["cycles"], 1),
        "cache_miss_ratio": v["misses"] / np.maximum(v["refs"], 1),
        "branch_miss_ratio": v["bmisses"] / np.maximum(v["branches"], 1),
    }
    return cols, ratios


def guest_columns(cfg, nt, rng, wm, lat, end_idx, dt, spec, phases, b_true, lead) -> dict:
    """Guest feature columns {name: (kind, array)} in the collector's order."""
    import numpy as np

    fn = float(cfg["feature_noise"])
    n = dt.size
    vcpus = int(nt["vm"]["vcpus"])

    def noisy(x, rel=fn):
        return x * np.maximum(1.0 + rel * rng.standard_normal(n), 0.0)

    v = _perf(cfg["guest"], wm, dt, vcpus, float(nt["machine_spec"]["frequency"]) * 1e6, noisy, rng)
    cpu = _cpu_split(cfg["guest"], wm, n, noisy, rng)
    mem = _memory_io(cfg, nt, wm, lat, end_idx, dt, n, fn, noisy, rng)
    procs = _processes(cfg, wm, lat, end_idx, cpu["busy"], vcpus, n, rng)
    phase_starts = np.array([lead + a for _, a, _ in phases])
    spawned = np.histogram(phase_starts, bins=np.concatenate([[b_true[0] - dt[0]], b_true]))[0]
    st = _proc_stat(cfg, wm, cpu, v, procs["procs_w"], dt, vcpus, spawned, rng)
    kepler_delta = noisy(v["busy_s"])
    kepler_total = st["uptime"] * vcpus * 0.04 + np.cumsum(kepler_delta)
    perf_cols, ratios = _perf_columns(v, bool(spec.get("perf", True)), n)
    loads, busy = procs["loads"], cpu["busy"]
    return {
        **perf_cols,
        "cpu_utilization": ("float", busy), "cpu_user_time": ("float", cpu["user"]),
        "cpu_system_time": ("float", cpu["system"]), "cpu_nice_time": ("float", cpu["nice"]),
        "cpu_iowait": ("float", cpu["iowait"]), "cpu_irq": ("float", cpu["irq"]),
        "cpu_softirq": ("float", cpu["softirq"]), "cpu_steal": ("float", cpu["steal"]),
        "cpu_idle": ("float", cpu["idle"]),
        "memory_usage_percent": ("float", mem["mem_pct"]), "memory_available_gb": ("float", mem["mem_avail"]),
        "disk_io_read_mb": ("float", mem["disk_r"]), "disk_io_write_mb": ("float", mem["disk_w"]),
        "network_bytes_sent": ("int", mem["net_s"]), "network_bytes_recv": ("int", mem["net_r"]),
        "process_count": ("int", procs["process_count"]),
        "load_average_1min": ("float", loads[0]), "load_average_5min": ("float", loads[1]),
        "load_average_15min": ("float", loads[2]),
        **{k: ("float", x) for k, x in ratios.items()},
        "cpu_efficiency": ("float", busy / 100.0),
        "node_process_cpu_seconds_total": ("float", kepler_total),
        "node_process_cpu_seconds_delta": ("float", kepler_delta),
        "node_process_cpu_seconds_rate": ("float", kepler_delta / dt),
        "sys_cpu_user_seconds": ("float", st["sys_user"]), "sys_cpu_system_seconds": ("float", st["sys_system"]),
        "sys_cpu_idle_seconds": ("float", st["sys_idle"]), "sys_cpu_iowait_seconds": ("float", st["sys_iowait"]),
        "sys_context_switches": ("int", st["sys_cs"].astype(np.int64)),
        "sys_interrupts": ("int", st["sys_irq"].astype(np.int64)),
        "sys_forks": ("int", st["sys_forks"].astype(np.int64)), "sys_procs_running": ("int", st["procs_running"]),
        "sys_procs_blocked": ("int", procs["blocked"].astype(np.int64)),
    }
