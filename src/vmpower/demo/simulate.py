"""The demo's generating model: latent load per workload phase, the true per-zone power it
draws, and one collection session as the collectors see it (docs/demo-data.md).

Every random draw comes from one generator per (node_type, run, purpose) in a fixed order, so
the same config gives the same bytes; keep the order of the draws when editing.
"""

from __future__ import annotations

import hashlib
import math

from vmpower import workloads

# Zones the host collector writes, in its CSV's column order (docs/data-format.md).
HOST_ZONE_ORDER = ("core", "package", "dram", "uncore")
US = 1_000_000
LATENT_CHARACTER = ("ipc", "mem", "miss", "branch_miss", "system", "io", "net")


def rng_for(seed: int, *keys: str):
    """A generator for one (node_type, run, purpose): stable across processes (no hash())."""
    import numpy as np

    digest = hashlib.sha256("\x1f".join(keys).encode("utf-8")).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def ema(x, alpha: float, y0: float):
    """First-order lag y[n] = alpha*x[n] + (1-alpha)*y[n-1], y[-1] = y0, in closed form per block
    (blocks keep (1-alpha)^-k finite; scipy.signal would cost seconds of import)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    r = 1.0 - alpha
    if r <= 0.0:
        return x.copy()
    block = int(max(1, min(512, 30.0 / -math.log(r))))
    k = np.arange(block)
    up = r ** (-k)  # r^-k
    down = r ** (k + 1)  # r^(k+1)
    y = np.empty_like(x)
    prev = float(y0)
    for s in range(0, x.size, block):  # a few blocks per signal
        xb = x[s:s + block]
        m = xb.size
        y[s:s + m] = down[:m] * prev + alpha * r ** k[:m] * np.cumsum(xb * up[:m])
        prev = y[s + m - 1]
    return y


def phases(spec: str, duration: float, where: str = "synth.runs") -> list[tuple[str, float, float]]:
    """Phases (name, start, end) in seconds from the guest collector's start, as the
    collector's sequence runner does: explicit durations loop until the end."""
    return workloads.timeline(workloads.resolve(workloads.parse(spec, where), duration), duration)


# --------------------------------------------------------------------------------------- latent

def _level(w: dict, tt, k: int, step: float, rng):
    """A workload phase's utilisation pattern over its points ``tt`` (s from the phase start)."""
    import numpy as np

    lo, hi = (float(v) for v in w["util"])
    pattern = w.get("pattern", "flat")
    if pattern == "flat":
        return np.full(k, rng.uniform(lo, hi))
    if pattern == "triangle":  # stepped 0 -> 100 % -> 0 ramp, like stress-ng load cycling
        x = (tt % float(w["period"])) / float(w["period"])
        steps = int(w.get("steps", 10))
        return lo + (hi - lo) * np.floor((1.0 - np.abs(2.0 * x - 1.0)) * steps + 0.5) / steps
    if pattern == "square":  # first half of each period high, second half low
        return np.where((tt % float(w["period"])) < float(w["period"]) / 2.0, hi, lo)
    # wander: smoothed random walk inside [lo, hi]
    z = ema(rng.standard_normal(k), 1.0 - math.exp(-step / float(w["period"])), 0.0)
    z = z / (z.std() + 1e-12)
    return lo + (hi - lo) / (1.0 + np.exp(-1.5 * z))


def _workload(cfg, phases, grid, lead, rng, ar_alpha):
    """Per point: workload index, its utilisation, its character and memory footprint."""
    import numpy as np

    wl = cfg["workloads"]
    names = list(wl)
    step = float(cfg["latent_step_seconds"])
    noise = cfg["load_noise"]
    n = grid.size
    widx = np.full(n, names.index("idle"), dtype=np.int64)
    uw = np.zeros(n)
    mem_used = np.full(n, float(wl["idle"]["mem_used"]))
    char = {k: np.zeros(n) for k in LATENT_CHARACTER}
    for name, a, b in phases:
        w = wl[name]
        m = (grid >= lead + a) & (grid < lead + b)
        k = int(m.sum())
        if k == 0:
            continue
        widx[m] = names.index(name)
        hi = float(w["util"][1])
        level = _level(w, grid[m] - (lead + a), k, step, rng)
        jitter = ema(rng.standard_normal(k), ar_alpha, 0.0) * float(noise["util_std"]) / math.sqrt(
            ar_alpha / (2.0 - ar_alpha))
        uw[m] = np.clip(level + np.where(level > 0, jitter, 0.0), 0.0, 1.0)
        # Phase-to-phase variety of the workload's character (same stress-ng, different data).
        for key in char:
            char[key][m] = float(w[key]) * (1.0 + float(noise["character_std"]) * rng.standard_normal())
        mem_used[m] = float(w["mem_used"])
        char["io"][m] *= uw[m] / max(hi, 1e-9)  # I/O follows the workload's activity
        char["net"][m] *= uw[m] / max(hi, 1e-9)
    char["ipc"] = np.maximum(char["ipc"], 0.05)
    char["miss"] = np.clip(char["miss"], 0.0, 0.95)
    char["branch_miss"] = np.clip(char["branch_miss"], 0.0, 0.5)
    return widx, uw, char, mem_used


def _background(cfg, grid, rng, ar_alpha):
    """Guest daemons, timers, the odd cron job: what an idle run shows (utilisation per point)."""
    import numpy as np

    bg = cfg["background"]
    n = grid.size
    step = float(cfg["latent_step_seconds"])
    z = ema(rng.standard_normal(n), ar_alpha, 0.0) / math.sqrt(ar_alpha / (2.0 - ar_alpha))
    ubg = float(bg["util"]) * np.exp(float(bg["variability"]) * z)
    n_spikes = rng.poisson(float(bg["spikes_per_minute"]) * n * step / 60.0)
    starts = rng.uniform(grid[0], grid[-1], n_spikes)
    lengths = rng.uniform(1.0, 4.0, n_spikes)
    amps = rng.uniform(*[float(v) for v in bg["spike_util"]], n_spikes)
    for s, ln, amp in zip(starts, lengths, amps):  # a handful of spikes per run
        ubg[(grid >= s) & (grid < s + ln)] += amp
    return np.clip(ubg, 0.002, 1.0)


def latent(cfg, phases, grid, lead, rng):
    """Latent signals on the fine grid (seconds from the host collector's start).

    Returns per-point arrays: u (VM CPU utilisation 0..1), the workload index, and mixtures
    weighted by busy time (instruction rate, memory traffic, ...)."""
    step = float(cfg["latent_step_seconds"])
    ar_alpha = 1.0 - math.exp(-step / float(cfg["load_noise"]["tau_seconds"]))
    widx, uw, char, mem_used = _workload(cfg, phases, grid, lead, rng, ar_alpha)
    ubg = _background(cfg, grid, rng, ar_alpha)
    idle = cfg["workloads"]["idle"]
    ub = ubg * (1.0 - uw)  # background only gets the CPU time the workload leaves
    g = cfg["guest"]

    def mix(key):  # busy-time weighted mixture of workload and background character
        return uw * char[key] + ub * float(idle[key])

    ins = mix("ipc")
    rpi_w = float(g["refs_per_instruction"]) * (1.0 + float(g["refs_mem_gain"]) * char["mem"])
    rpi_b = float(g["refs_per_instruction"]) * (1.0 + float(g["refs_mem_gain"]) * float(idle["mem"]))
    refs = uw * char["ipc"] * rpi_w + ub * float(idle["ipc"]) * rpi_b
    misses = uw * char["ipc"] * rpi_w * char["miss"] + ub * float(idle["ipc"]) * rpi_b * float(idle["miss"])
    bpi = float(g["branches_per_instruction"])
    return {
        "widx": widx, "u": uw + ub, "uw": uw, "ins": ins, "refs": refs, "misses": misses,
        "branches": ins * bpi, "branch_misses": (uw * char["ipc"] * char["branch_miss"]
                                                 + ub * float(idle["ipc"]) * float(idle["branch_miss"])) * bpi,
        "traffic": mix("mem"), "system": mix("system"),
        "io": char["io"] + float(idle["io"]), "net": char["net"] + float(idle["net"]),
        "mem_used": mem_used,
    }


def true_power(lat: dict, p: dict) -> dict:
    """True active power (W) the VM is responsible for, per zone (docs/demo-data.md)."""
    import numpy as np

    u = lat["u"]
    ipc = lat["ins"] / np.maximum(u, 1e-9)
    knee = float(p["knee"])
    g = u + float(p["knee_gain"]) * np.maximum(u - knee, 0.0) ** 2 / (1.0 - knee)
    core = float(p["core_base_w"]) + float(p["core_w"]) * g * (
        1.0 + float(p["ipc_weight"]) * (ipc / float(p["ipc_ref"]) - 1.0))
    uncore = float(p["uncore_base_w"]) + float(p["uncore_w"]) * u + float(p["uncore_mem_w"]) * lat["traffic"]
    dram = float(p["dram_base_w"]) + float(p["dram_w"]) * u + float(p["dram_mem_w"]) * lat["traffic"]
    package = core + uncore + float(p["other_base_w"]) + float(p["other_w"]) * u
    return {"package": package, "core": core, "dram": dram, "uncore": uncore}


def window_means(edges, step, signals: dict, a, b) -> dict:
    """Exact means of piecewise-constant fine-grid signals over windows [a, b]."""
    import numpy as np

    out = {}
    for key, v in signals.items():
        cum = np.concatenate([[0.0], np.cumsum(v) * step])
        out[key] = (np.interp(b, edges, cum) - np.interp(a, edges, cum)) / (b - a)
    return out
