"""``vmpower synth``: write the built-in demo data set as raw runs in the collectors' formats.

Latent load signals per workload phase drive both the guest features and the true per-zone
active power; the host file carries Kepler's view of that power (5 s updates, lagging, noisy,
first reading 0). docs/demo-data.md documents the generating model and the noise floor.
Everything is derived from the ``synth:`` section of the config and its seed: the same config
gives byte-identical files, and unchanged files are not rewritten (Snakemake sees no change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path

from vmpower.paths import SCHEMAS
from vmpower.errors import InputError

log = logging.getLogger(__name__)

# Column order of the host collector's CSV (docs/data-format.md).
HOST_ZONE_ORDER = ("core", "package", "dram", "uncore")
PERF_COUNTERS = (
    "cpu_cycles", "instructions", "cache_references", "cache_misses",
    "branches", "branch_misses", "page_faults", "context_switches",
)
PERF_RATIOS = ("instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")
LOADAVG_TAUS = (60.0, 300.0, 900.0)  # Linux load-average time constants
USER_HZ_SECONDS = 0.01  # /proc/stat resolution
US = 1_000_000


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write the built-in demo data set (raw runs in the collectors' formats)",
        description="Generate demo runs (<out>/<node_type>/<run_id>/) from the config's synth: section.",
    )
    p.add_argument("--config", required=True, action="append",
                   help="config.yaml with a synth: section; repeat to overlay files (later ones win, "
                        "dicts merge key by key as in snakemake --configfile a b)")
    p.add_argument("--out", required=True, help="raw data directory, e.g. data/raw")
    p.add_argument("--seed", type=int, default=None, help="override synth.seed")
    p.add_argument("--node-type", action="append", default=None, dest="node_types",
                   help="generate only this node_type of synth.node_types (repeatable)")
    p.add_argument("--noise-table", action="store_true",
                   help="also print the noise-floor table of docs/demo-data.md (Markdown) for the data written")
    p.set_defaults(func=run)


def noise_floor_table(out: Path, node_types: list[str], zones: list[str]) -> str:
    """The Markdown noise-floor table of docs/demo-data.md, from the synth_noise_floor.json files."""
    import json

    lines = ["| node_type | zone | σ (W) | noise floor MAE (W) | empirical | window-truth MAE | label mean | label max |",
             "|---|---|---|---|---|---|---|---|"]
    for nt in node_types:
        floor = json.loads((out / nt / "synth_noise_floor.json").read_text())["zones"]
        for z in (z for z in zones if z in floor):  # legacy node_types have core and package only
            f = floor[z]
            lines.append(f"| {nt} | {z} | {f['sigma_watts']:g} | {f['noise_floor_mae_watts']:.3f} | "
                         f"{f['empirical_noise_mae_watts']:.3f} | {f['window_truth_mae_watts']:.2f} | "
                         f"{f['label_mean_watts']:.1f} | {f['label_max_watts']:.1f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import time

    cfg = load_config(args.config)
    if args.seed is not None:
        if args.seed < 0:
            raise InputError(args.config[-1], "--seed must be >= 0")
        cfg["seed"] = args.seed
    if args.node_types:
        unknown = sorted(set(args.node_types) - set(cfg["node_types"]))
        if unknown:
            raise InputError(args.config[-1], f"--node-type: no such synth.node_types entry: {', '.join(unknown)}")
        cfg["node_types"] = {k: v for k, v in cfg["node_types"].items() if k in args.node_types}
    t0 = time.perf_counter()
    summary = generate(cfg, Path(args.out))
    log.info(
        "synth: %d node types, %d runs, %d VM samples, %d host samples; %d files written, "
        "%d unchanged, %d stale removed (%.1f s)",
        summary["node_types"], summary["runs"], summary["vm_rows"], summary["host_rows"],
        summary["written"], summary["unchanged"], summary["removed"], time.perf_counter() - t0,
    )
    if args.noise_table:
        zones = [z for z in ("package", "core", "dram", "uncore")]
        print(noise_floor_table(Path(args.out), list(cfg["node_types"]), zones), end="")
    return 0


# --------------------------------------------------------------------------------------- config

def _merge(base: dict, over: dict) -> dict:
    """Overlay ``over`` on ``base``: dicts merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(paths: str | Path | list) -> dict:
    """The synth: section of one config file or of several overlaid ones (later ones win)."""
    import yaml

    from vmpower.configcheck import check_file

    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    doc: dict = {}
    for path in paths:
        doc = _merge(doc, check_file(path))  # syntax (line, column) and unknown keys, per file
    path = paths[-1] if len(paths) == 1 else ", ".join(map(str, paths))
    if not isinstance(doc.get("synth"), dict):
        raise InputError(path, "no 'synth:' section")
    cfg = doc["synth"]
    schema_path = SCHEMAS / "synth.schema.yaml"
    if schema_path.exists():  # absent in an installed wheel; the workflow's config schema covers it
        import jsonschema

        schema = yaml.safe_load(schema_path.read_text(encoding="utf-8"))
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
        if err is not None:
            where = "synth." + ".".join(map(str, err.absolute_path)) if err.absolute_path else "synth"
            raise InputError(path, f"{where}: {err.message}")
    if "idle" not in cfg["workloads"]:
        raise InputError(path, "synth.workloads needs an 'idle' entry (the background characteristics)")
    for nt_name, nt in cfg["node_types"].items():
        if nt.get("profile") == "legacy" and "legacy" not in cfg:
            raise InputError(path, f"synth.node_types.{nt_name}: profile legacy needs a synth.legacy section")
        for run_spec in nt.get("runs", cfg["runs"]):
            if nt.get("profile") == "legacy" and (run_spec.get("perf") or run_spec.get("killed")
                                                  or run_spec.get("vm_format", "json") != "json"):
                raise InputError(path, f"synth.node_types.{nt_name}: run {run_spec['id']}: the legacy profile "
                                       "writes perf-less JSON arrays only (no perf, killed or vm_format)")
            for name, _ in _parse_sequence(run_spec["workload"], path):
                if name not in cfg["workloads"]:
                    raise InputError(path, f"synth.runs.{run_spec['id']}: unknown workload {name!r}")
    return cfg


def _parse_sequence(spec: str, where) -> list[tuple[str, float | None]]:
    """``a:60,b:45`` (looping) or ``a,b`` (equal shares) or ``a`` -> [(name, seconds|None)]."""
    items = []
    for part in str(spec).split(","):
        name, _, dur = part.strip().partition(":")
        if not name:
            raise InputError(where, f"bad workload sequence {spec!r}")
        try:
            items.append((name.strip(), float(dur) if dur else None))
        except ValueError:
            raise InputError(where, f"bad duration in workload sequence {spec!r}") from None
    if len({d is None for _, d in items}) > 1 or any(d is not None and d <= 0 for _, d in items):
        raise InputError(where, f"workload sequence {spec!r}: give every phase a positive duration or none")
    return items


def _phases(spec: str, duration: float) -> list[tuple[str, float, float]]:
    """Phases (name, start, end) in seconds from the guest collector's start, as the
    collector's sequence runner does: explicit durations loop until the end."""
    items = _parse_sequence(spec, "synth.runs")
    if items[0][1] is None:
        share = duration / len(items)
        items = [(n, share) for n, _ in items]
    out, t, i = [], 0.0, 0
    while t < duration:
        name, d = items[i % len(items)]
        out.append((name, t, min(t + d, duration)))
        t += d
        i += 1
    return out


# --------------------------------------------------------------------------------------- random

def _rng(seed: int, *keys: str):
    """A generator for one (node_type, run, purpose): stable across processes (no hash())."""
    import numpy as np

    digest = hashlib.sha256("\x1f".join(keys).encode("utf-8")).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _ema(x, alpha: float, y0: float):
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


# --------------------------------------------------------------------------------------- model

def _latent(cfg, phases, grid, lead, rng):
    """Latent signals on the fine grid (seconds from the host collector's start).

    Returns per-point arrays: u (VM CPU utilisation 0..1), the workload index, and mixtures
    weighted by busy time (instruction rate, memory traffic, ...)."""
    import numpy as np

    wl = cfg["workloads"]
    names = list(wl)
    step = float(cfg["latent_step_seconds"])
    n = grid.size
    widx = np.full(n, names.index("idle"), dtype=np.int64)
    uw = np.zeros(n)
    mem_used = np.full(n, float(wl["idle"]["mem_used"]))
    char = {k: np.zeros(n) for k in ("ipc", "mem", "miss", "branch_miss", "system", "io", "net")}
    ar_alpha = 1.0 - math.exp(-step / float(cfg["load_noise"]["tau_seconds"]))
    for name, a, b in phases:
        w = wl[name]
        m = (grid >= lead + a) & (grid < lead + b)
        k = int(m.sum())
        if k == 0:
            continue
        widx[m] = names.index(name)
        lo, hi = (float(v) for v in w["util"])
        tt = grid[m] - (lead + a)
        pattern = w.get("pattern", "flat")
        if pattern == "flat":
            level = np.full(k, rng.uniform(lo, hi))
        elif pattern == "triangle":  # stepped 0 -> 100 % -> 0 ramp, like stress-ng load cycling
            x = (tt % float(w["period"])) / float(w["period"])
            steps = int(w.get("steps", 10))
            level = lo + (hi - lo) * np.floor((1.0 - np.abs(2.0 * x - 1.0)) * steps + 0.5) / steps
        elif pattern == "square":  # first half of each period high, second half low
            level = np.where((tt % float(w["period"])) < float(w["period"]) / 2.0, hi, lo)
        else:  # wander: smoothed random walk inside [lo, hi]
            z = _ema(rng.standard_normal(k), 1.0 - math.exp(-step / float(w["period"])), 0.0)
            z = z / (z.std() + 1e-12)
            level = lo + (hi - lo) / (1.0 + np.exp(-1.5 * z))
        jitter = _ema(rng.standard_normal(k), ar_alpha, 0.0) * float(cfg["load_noise"]["util_std"]) / math.sqrt(
            ar_alpha / (2.0 - ar_alpha))
        uw[m] = np.clip(level + np.where(level > 0, jitter, 0.0), 0.0, 1.0)
        # Phase-to-phase variety of the workload's character (same stress-ng, different data).
        for key in char:
            char[key][m] = float(w[key]) * (1.0 + float(cfg["load_noise"]["character_std"]) * rng.standard_normal())
        mem_used[m] = float(w["mem_used"])
        char["io"][m] *= uw[m] / max(hi, 1e-9)  # I/O follows the workload's activity
        char["net"][m] *= uw[m] / max(hi, 1e-9)
    char["ipc"] = np.maximum(char["ipc"], 0.05)
    char["miss"] = np.clip(char["miss"], 0.0, 0.95)
    char["branch_miss"] = np.clip(char["branch_miss"], 0.0, 0.5)

    # Background: guest daemons, timers, the odd cron job; what an idle run shows.
    bg = cfg["background"]
    z = _ema(rng.standard_normal(n), ar_alpha, 0.0) / math.sqrt(ar_alpha / (2.0 - ar_alpha))
    ubg = float(bg["util"]) * np.exp(float(bg["variability"]) * z)
    n_spikes = rng.poisson(float(bg["spikes_per_minute"]) * n * step / 60.0)
    starts = rng.uniform(grid[0], grid[-1], n_spikes)
    lengths = rng.uniform(1.0, 4.0, n_spikes)
    amps = rng.uniform(*[float(v) for v in bg["spike_util"]], n_spikes)
    for s, ln, amp in zip(starts, lengths, amps):  # a handful of spikes per run
        ubg[(grid >= s) & (grid < s + ln)] += amp
    ubg = np.clip(ubg, 0.002, 1.0)
    idle = wl["idle"]
    ub = ubg * (1.0 - uw)  # background only gets the CPU time the workload leaves
    u = uw + ub
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
        "widx": widx, "u": u, "uw": uw, "ins": ins, "refs": refs, "misses": misses,
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


def _window_means(edges, step, signals: dict, a, b) -> dict:
    """Exact means of piecewise-constant fine-grid signals over windows [a, b]."""
    import numpy as np

    out = {}
    for key, v in signals.items():
        cum = np.concatenate([[0.0], np.cumsum(v) * step])
        out[key] = (np.interp(b, edges, cum) - np.interp(a, edges, cum)) / (b - a)
    return out


def simulate_run(cfg: dict, nt_name: str, nt: dict, spec: dict, run_index: int) -> dict:
    """One collection session: guest columns, host rows, Kepler truth for the noise floor."""
    import numpy as np

    seed = int(cfg["seed"])
    rng = _rng(seed, nt_name, spec["id"], "run")
    step = float(cfg["latent_step_seconds"])
    vm_cfg, hw = nt["vm"], nt["machine_spec"]
    vcpus = int(vm_cfg["vcpus"])
    duration = float(spec["duration"])
    killed = bool(spec.get("killed", False))

    # -- schedule (host clock = true time; the guest clock is skewed)
    host_start_us = (int(cfg["start_epoch"]) + run_index * int(cfg["run_spacing_seconds"])) * US + int(
        rng.integers(0, int(cfg["start_jitter_seconds"]) * US))
    lead = float(rng.uniform(*cfg["host_lead_seconds"]))
    tail = float(rng.uniform(*cfg["host_tail_seconds"]))
    skew = float(rng.uniform(*cfg["vm_clock_skew_seconds"])) * (1.0 if rng.random() < 0.5 else -1.0)
    lead_us, skew_us = int(round(lead * US)), int(round(skew * US))
    lead = lead_us / US
    host_dur = lead + duration + tail
    phases = _phases(spec["workload"], duration)

    # -- latent signals and true power on the fine grid (seconds from host start)
    k_int = float(cfg["kepler"]["interval_seconds"])
    g0 = -(k_int + 2.0)
    grid = g0 + step * np.arange(int(math.ceil((host_dur + 2.0 * k_int + 2.0 - g0) / step)))
    edges = np.append(grid, grid[-1] + step)
    lat = _latent(cfg, phases, grid, lead, rng)
    power = true_power(lat, nt["power"])

    # -- Kepler: value j = mean true power over (u[j-1], u[j]] + N(0, sigma_z); first value 0
    n_up = int(math.ceil((edges[-1] - g0) / k_int)) + 3
    upd = -rng.uniform(0.0, k_int) + np.concatenate([[0.0], np.cumsum(
        k_int + float(cfg["kepler"]["interval_jitter_seconds"]) * rng.standard_normal(n_up - 1))])
    upd = upd[upd <= edges[-1]]  # updates after the grid would average nothing; the host has stopped by then
    truth = _window_means(edges, step, power, upd[:-1], upd[1:])
    kepler, noise = {}, {}
    for z in HOST_ZONE_ORDER:
        eps = float(nt["sigma"][z]) * rng.standard_normal(upd.size - 1)
        noise[z] = eps
        kepler[z] = np.concatenate([[0.0], np.maximum(truth[z] + eps, 0.0)])  # Kepler never reports < 0

    # -- host collector samples: ~interval with jitter, a few-second gap, values repeat between updates
    h_int = float(cfg["host_interval"])
    nh = int(host_dur / h_int) + 1
    ht_us = np.round((np.arange(nh) * h_int + np.abs(float(cfg["host_jitter_seconds"]) * rng.standard_normal(nh)))
                     * US).astype(np.int64)
    ht_us[0] = 0
    ht_us = np.maximum.accumulate(ht_us)
    gap_len = float(rng.uniform(*cfg["host_gap_seconds"]))
    gap_at = lead + duration * float(rng.uniform(0.3, 0.7))
    ht = ht_us / US
    keep_h = ~((ht >= gap_at) & (ht < gap_at + gap_len))
    ht_us, ht = ht_us[keep_h], ht[keep_h]
    which = np.searchsorted(upd, ht, side="right") - 1
    host_vals = {z: kepler[z][which] for z in HOST_ZONE_ORDER}

    # -- guest collector ticks on the guest clock (exact window lengths in whole microseconds)
    vj = cfg["vm_jitter_seconds"]
    v_int = float(cfg["vm_interval"])
    n_max = int(duration / v_int) + 10
    d_us = np.round(np.clip(v_int + float(vj["mean"]) + float(vj["std"]) * rng.standard_normal(n_max),
                            v_int * 0.5, v_int * 1.5) * US).astype(np.int64)
    ends_rel_us = np.cumsum(d_us)
    vm_dur = duration * (float(cfg["killed_fraction"]) if killed else 1.0)
    keep = ends_rel_us <= int(vm_dur * US)
    ends_rel_us, d_us = ends_rel_us[keep], d_us[keep]
    n = ends_rel_us.size
    b_true = lead + ends_rel_us / US  # window ends in true time from host start
    a_true = b_true - d_us / US
    dt = d_us / US
    wm = _window_means(edges, step, {k: v for k, v in lat.items() if k not in ("widx",)}, a_true, b_true)
    pw = _window_means(edges, step, power, a_true, b_true)
    end_idx = np.clip(np.searchsorted(edges, b_true, side="right") - 2, 0, grid.size - 1)
    names = list(cfg["workloads"])
    workload = np.array(names, dtype=object)[lat["widx"][end_idx]]

    cols = _guest_columns(cfg, nt, rng, wm, lat, end_idx, dt, vcpus, hw, spec, phases, b_true, lead)
    from vmpower.demo import pinning_variant  # pinned/unpinned guest view (docs/pinning.md); "none": unchanged

    cols = pinning_variant.apply(cfg, nt, cols, dt, _rng(seed, nt_name, spec["id"], "pinning"))

    # -- a few lost guest samples (never the first/last few)
    drop = rng.choice(np.arange(5, max(n - 5, 6)), size=min(int(cfg["vm_missing_samples"]), max(n - 10, 0)),
                      replace=False)
    keep_v = np.ones(n, dtype=bool)
    keep_v[drop] = False

    vm_start_abs_us = host_start_us + lead_us + skew_us
    vm_abs_us = vm_start_abs_us + ends_rel_us
    vm = {
        "timestamp_us": (vm_abs_us - vm_start_abs_us)[keep_v],
        "abs_us": vm_abs_us[keep_v],
        "delta_us": d_us[keep_v],
        "workload": workload[keep_v],
        "cols": {k: (kind, v[keep_v]) for k, (kind, v) in cols.items()},
    }
    host = {"abs_us": host_start_us + ht_us, "rel_us": ht_us, "vals": host_vals}

    # -- what a model that knew the truth would get against window-aligned labels (lag + noise)
    hv = {z: np.concatenate([[0.0], np.cumsum(host_vals[z])]) for z in HOST_ZONE_ORDER}
    lo_i = np.searchsorted(ht, a_true, side="left")
    hi_i = np.searchsorted(ht, b_true, side="right")
    ok = (hi_i > lo_i) & (a_true > upd[1]) & keep_v
    window_err = {z: np.abs((hv[z][hi_i] - hv[z][lo_i])[ok] / (hi_i - lo_i)[ok] - pw[z][ok]) for z in HOST_ZONE_ORDER}
    return {
        "host_start_us": host_start_us, "vm": vm, "host": host, "noise": noise, "window_err": window_err,
        "labels": {z: kepler[z][1:] for z in HOST_ZONE_ORDER}, "skew": skew, "lead": lead,
    }


def _guest_columns(cfg, nt, rng, wm, lat, end_idx, dt, vcpus, hw, spec, phases, b_true, lead) -> dict:
    """Guest feature columns {name: (kind, array)} from the window means of the latent signals."""
    import numpy as np

    g = cfg["guest"]
    fn = float(cfg["feature_noise"])
    n = dt.size
    freq_hz = float(hw["frequency"]) * 1e6
    perf = bool(spec.get("perf", True))
    wl = cfg["workloads"]

    def noisy(x, rel=fn):
        return x * np.maximum(1.0 + rel * rng.standard_normal(n), 0.0)

    busy_s = wm["u"] * vcpus * dt  # busy vCPU seconds in the window
    cycles = np.round(noisy(busy_s * freq_hz)).astype(np.int64)
    instructions = np.round(noisy(wm["ins"] * vcpus * dt * freq_hz)).astype(np.int64)
    refs = np.round(noisy(wm["refs"] * vcpus * dt * freq_hz)).astype(np.int64)
    misses = np.minimum(np.round(noisy(wm["misses"] * vcpus * dt * freq_hz)).astype(np.int64), refs)
    branches = np.round(noisy(wm["branches"] * vcpus * dt * freq_hz)).astype(np.int64)
    bmisses = np.minimum(np.round(noisy(wm["branch_misses"] * vcpus * dt * freq_hz)).astype(np.int64), branches)
    pf = rng.poisson((float(g["page_faults_per_s"]) + float(g["page_faults_mem_per_s"]) * wm["traffic"]) * dt)
    cs_true = rng.poisson((float(g["context_switches_per_s"]) * (1.0 + wm["u"] * vcpus)
                           + float(g["context_switches_io_per_s"]) * wm["io"]) * dt)

    # CPU time split (percent of the VM's CPU time)
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
    nice = np.zeros(n)

    # Memory: usage follows the workload's footprint with a lag.
    mem_target = lat["mem_used"][end_idx]
    mem_frac = _ema(mem_target, 1.0 - math.exp(-float(cfg["vm_interval"]) / float(g["memory_tau_seconds"])),
                    float(wl["idle"]["mem_used"]))
    mem_pct = np.clip(100.0 * mem_frac + 0.05 * rng.standard_normal(n), 1.0, 99.0)
    mem_gb = float(nt["vm"]["memory_gb"])
    mem_avail = mem_gb * (1.0 - mem_pct / 100.0) * (1.0 + 0.002 * rng.standard_normal(n))

    io = wm["io"]
    disk_r = np.clip(noisy(io * float(g["disk_read_mb_per_s"]) * dt, 3 * fn), 0.0, None)
    disk_w = np.clip(noisy(io * float(g["disk_write_mb_per_s"]) * dt, 3 * fn), 0.0, None)
    net_s = np.round(noisy(wm["net"] * float(g["net_bytes_per_s"]) * dt, 3 * fn)).astype(np.int64)
    net_r = np.round(noisy(wm["net"] * float(g["net_bytes_per_s"]) * 1.3 * dt, 3 * fn)).astype(np.int64)

    procs_w = np.array([float(wl[w]["procs"]) for w in wl])[lat["widx"][end_idx]]
    stress_procs = np.where(procs_w > 0, np.round(procs_w * vcpus) + 1, 0)
    base = int(rng.integers(*[int(v) for v in g["base_processes"]]))
    wander = np.clip(np.cumsum(rng.choice([-1, 0, 0, 0, 1], n)), -8, 8)
    process_count = (base + wander + stress_procs).astype(np.int64)

    runnable = busy / 100.0 * vcpus
    blocked = rng.binomial(2, np.clip(0.3 * io, 0.0, 1.0))
    y0 = float(cfg["background"]["util"]) * vcpus * rng.uniform(0.5, 3.0)
    loads = [_ema(runnable + blocked, 1.0 - math.exp(-float(cfg["vm_interval"]) / tau), y0) for tau in LOADAVG_TAUS]

    # /proc/stat counters, cumulative since boot (boot happened a while before the run)
    uptime = rng.uniform(3600.0, 20.0 * 86400.0)
    def cum_seconds(pct, frac0):
        start = uptime * vcpus * frac0
        return np.round((start + np.cumsum(pct / 100.0 * vcpus * dt)) / USER_HZ_SECONDS) * USER_HZ_SECONDS

    sys_user = cum_seconds(user + nice, 0.03)
    sys_system = cum_seconds(system + irq + softirq, 0.01)
    sys_idle = cum_seconds(idle, 0.95)
    sys_iowait = cum_seconds(iowait, 0.002)
    sys_cs = int(uptime * 900) + np.cumsum(cs_true)
    sys_irq = int(uptime * 400 * vcpus) + np.cumsum(
        rng.poisson(float(g["interrupts_per_s_per_vcpu"]) * vcpus * (0.3 + wm["u"]) * dt))
    phase_starts = np.array([lead + a for _, a, _ in phases])
    spawned = np.histogram(phase_starts, bins=np.concatenate([[b_true[0] - dt[0]], b_true]))[0]
    forks = rng.poisson(float(g["forks_per_s"]) * dt) + spawned * np.round(procs_w * vcpus + 1).astype(np.int64)
    sys_forks = int(uptime * 2) + np.cumsum(forks)
    procs_running = (1 + rng.binomial(vcpus, np.clip(wm["u"], 0.0, 1.0))).astype(np.int64)

    kepler_delta = noisy(busy_s)
    kepler_total = uptime * vcpus * 0.04 + np.cumsum(kepler_delta)

    zeros_i = np.zeros(n, dtype=np.int64)
    zeros_f = np.zeros(n)
    if perf:
        perf_cols = {
            "cpu_cycles": ("int", cycles), "instructions": ("int", instructions),
            "cache_references": ("int", refs), "cache_misses": ("int", misses),
            "branches": ("int", branches), "branch_misses": ("int", bmisses),
            "page_faults": ("int", pf.astype(np.int64)), "context_switches": ("int", cs_true.astype(np.int64)),
        }
        ratios = {
            "instructions_per_cycle": instructions / np.maximum(cycles, 1),
            "cache_miss_ratio": misses / np.maximum(refs, 1),
            "branch_miss_ratio": bmisses / np.maximum(branches, 1),
        }
    else:  # older collector without perf access: zeros for the whole run
        perf_cols = {k: ("int", zeros_i) for k in PERF_COUNTERS}
        ratios = {k: zeros_f for k in PERF_RATIOS}
    cols = {**perf_cols}
    cols.update({
        "cpu_utilization": ("float", busy), "cpu_user_time": ("float", user),
        "cpu_system_time": ("float", system), "cpu_nice_time": ("float", nice),
        "cpu_iowait": ("float", iowait), "cpu_irq": ("float", irq), "cpu_softirq": ("float", softirq),
        "cpu_steal": ("float", steal), "cpu_idle": ("float", idle),
        "memory_usage_percent": ("float", mem_pct), "memory_available_gb": ("float", mem_avail),
        "disk_io_read_mb": ("float", disk_r), "disk_io_write_mb": ("float", disk_w),
        "network_bytes_sent": ("int", net_s), "network_bytes_recv": ("int", net_r),
        "process_count": ("int", process_count),
        "load_average_1min": ("float", loads[0]), "load_average_5min": ("float", loads[1]),
        "load_average_15min": ("float", loads[2]),
        **{k: ("float", v) for k, v in ratios.items()},
        "cpu_efficiency": ("float", busy / 100.0),
        "node_process_cpu_seconds_total": ("float", kepler_total),
        "node_process_cpu_seconds_delta": ("float", kepler_delta),
        "node_process_cpu_seconds_rate": ("float", kepler_delta / dt),
        "sys_cpu_user_seconds": ("float", sys_user), "sys_cpu_system_seconds": ("float", sys_system),
        "sys_cpu_idle_seconds": ("float", sys_idle), "sys_cpu_iowait_seconds": ("float", sys_iowait),
        "sys_context_switches": ("int", sys_cs.astype(np.int64)), "sys_interrupts": ("int", sys_irq.astype(np.int64)),
        "sys_forks": ("int", sys_forks.astype(np.int64)), "sys_procs_running": ("int", procs_running),
        "sys_procs_blocked": ("int", blocked.astype(np.int64)),
    })
    return cols


# --------------------------------------------------------------------------------------- text

def _fmt_float(x):
    """Floats as Python's json/csv modules print them (repr), rounded to 6 decimals; vectorised."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x = np.round(np.asarray(x, dtype=np.float64), 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not np.isfinite(x).all():
        raise ValueError("non-finite value in synthetic data")
    s = pc.cast(pa.array(x), pa.string())
    s = pc.if_else(pc.match_substring_regex(s, r"[.e]"), s, pc.binary_join_element_wise(s, ".0", ""))
    # repr() writes 1e-06 .. 9.9e-05 in exponent form; Arrow writes them positionally.
    small = (x != 0) & (np.abs(x) < 1e-4)
    if small.any():
        k = np.round(np.abs(x) * 1e6).astype(np.int64)
        sign = np.where(x < 0, "-", "")
        d1, d2 = k // 10, k % 10
        mant = np.where(k < 10, k.astype(str), np.where(d2 == 0, d1.astype(str),
                                                        np.char.add(np.char.add(d1.astype(str), "."), d2.astype(str))))
        exp = np.where(k < 10, "e-06", "e-05")
        alt = np.char.add(np.char.add(sign, mant), exp)
        s = pc.if_else(pa.array(small), pa.array(alt.astype(object), pa.string()), s)
    return s


def _fmt_int(x):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(np.asarray(x, dtype=np.int64)), pa.string())


def _fmt_str(values):
    """JSON string literals via the few distinct values (json.dumps on each distinct one)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    lits = np.array([json.dumps(str(u)) for u in uniques], dtype=object)
    return pa.array(lits[codes], pa.string())


def _join(parts: list, sep: str):
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(*parts, sep)


def _iso(abs_us, offset_us: int):
    import numpy as np

    return np.datetime_as_string((np.asarray(abs_us) + offset_us).astype("datetime64[us]"), unit="us")


def _vm_fields(cfg, run: dict, spec: dict, offset_us: int) -> list[tuple[str, object]]:
    """(name, arrow string array of JSON literals | constant literal) in the collector's order."""
    vm = run["vm"]
    fields = [
        ("timestamp", _fmt_float(vm["timestamp_us"] / US)),
        ("timestamp_absolute", _fmt_float(vm["abs_us"] / US)),
        ("timestamp_iso", _fmt_str(_iso(vm["abs_us"], offset_us))),
        ("vm_hostname", json.dumps(cfg["vm_hostname"])),
        ("target_zones", list(cfg["target_zones"])),
        ("stress_workload", _fmt_str(vm["workload"])),
    ]
    if spec.get("perf", True):  # older collectors (the perf-less runs here) have no such field
        fields.append(("perf_available", "true"))
    for name, (kind, values) in vm["cols"].items():
        fields.append((name, _fmt_int(values) if kind == "int" else _fmt_float(values)))
    fields.append(("collection_interval", json.dumps(float(cfg["vm_interval"]))))
    fields.append(("time_delta_seconds", _fmt_float(vm["delta_us"] / US)))
    return fields


def _records_text(fields, lines: bool) -> str:
    """JSON array as json.dump(list, indent=2) writes it, or JSON Lines as json.dumps per line."""
    parts = []
    for i, (name, val) in enumerate(fields):
        key = json.dumps(name)
        if isinstance(val, list):
            if lines:
                lit = json.dumps(val)
            else:
                lit = "[\n" + ",\n".join(" " * 6 + json.dumps(v) for v in val) + "\n    ]"
            val = lit
        if lines:
            prefix = ("{" if i == 0 else ", ") + key + ": "
        else:
            prefix = ("  {\n" if i == 0 else ",\n") + "    " + key + ": "
        if isinstance(val, str):
            parts.append(prefix + val)
        else:
            parts.append(prefix)
            parts.append(val)
    parts.append("}" if lines else "\n  }")
    rows = _join(parts, "")
    if lines:
        return "\n".join(rows.to_pylist()) + "\n"
    return "[\n" + ",\n".join(rows.to_pylist()) + "\n]"


def vm_file_text(cfg, run: dict, spec: dict, offset_us: int) -> str:
    fields = _vm_fields(cfg, run, spec, offset_us)
    fmt = spec.get("vm_format", "json")
    text = _records_text(fields, lines=(fmt == "jsonl"))
    if fmt == "jsonl" and spec.get("killed", False):
        # Killed mid-write: the last sample is cut off partway through its line.
        last_start = text.rstrip("\n").rfind("\n") + 1
        text = text[: last_start + (len(text) - last_start) // 2]
    return text


def host_csv_text(cfg, run: dict, zones: list[str]) -> str:
    host = run["host"]
    n = host["rel_us"].size
    import pyarrow as pa

    cols = [_fmt_float(host["rel_us"] / US), pa.array(_iso(host["abs_us"], _offset_us(cfg)), pa.string())]
    header = ["timestamp", "timestamp_iso"]
    for z in zones:
        header.append(f"total_cpu_watts_{z}")
        cols.append(_fmt_float(host["vals"][z]))
    header += ["vm_count", "collection_interval", "vm_filter"]
    vm_filter = repr({cfg["vm_name"]})
    if "," in vm_filter or '"' in vm_filter:
        vm_filter = '"' + vm_filter.replace('"', '""') + '"'
    cols += ["1", repr(float(cfg["host_interval"])), vm_filter]
    rows = _join(cols, ",")
    return ",".join(header) + "\n" + "\n".join(rows.to_pylist()) + "\n"


def host_json_text(cfg, run: dict, zones: list[str], nt_name: str) -> str:
    host = run["host"]
    vm_id = str(_uuid(cfg["seed"], nt_name))
    fields = [
        ("timestamp", _fmt_float(host["rel_us"] / US)),
        ("timestamp_absolute", _fmt_float(host["abs_us"] / US)),
        ("timestamp_iso", _fmt_str(_iso(host["abs_us"], _offset_us(cfg)))),
    ]
    watts = {z: _fmt_float(host["vals"][z]) for z in zones}
    for z in zones:
        fields.append((f"total_cpu_watts_{z}", watts[z]))
    fields.append(("vm_count", "1"))
    # vms: one entry per zone, as json.dump(indent=2) nests them.
    vm_parts = ["[\n"]
    for i, z in enumerate(zones):
        head = "".join(
            f'{" " * 8}{json.dumps(k)}: {json.dumps(v)},\n'
            for k, v in (("vm_id", vm_id), ("vm_name", cfg["vm_name"]), ("hypervisor", cfg["hypervisor"]),
                         ("node_name", f"{nt_name}-node"), ("zone", z)))
        vm_parts += [(",\n" if i else "") + " " * 6 + "{\n" + head + " " * 8 + '"watts": ', watts[z],
                     ",\n" + " " * 8 + '"state": "running"\n' + " " * 6 + "}"]
    vm_parts.append("\n    ]")
    fields.append(("vms", _join(vm_parts, "")))
    fields.append(("collection_interval", repr(float(cfg["host_interval"]))))
    fields.append(("vm_filter", json.dumps(repr({cfg["vm_name"]}))))
    return _records_text(fields, lines=False)


def _uuid(seed, nt_name: str) -> str:
    import uuid

    return str(uuid.UUID(bytes=hashlib.sha256(f"{seed}\x1f{nt_name}\x1fvm_id".encode()).digest()[:16], version=4))


def _offset_us(cfg) -> int:
    return int(round(float(cfg["utc_offset_hours"]) * 3600 * US))


# --------------------------------------------------------------------------------------- driver

def generate(cfg: dict, out: Path) -> dict:
    """Write every node_type's runs and noise-floor file under ``out``; returns a summary."""
    import numpy as np

    from vmpower.io import dumps_json, write_if_changed

    out = Path(out)
    offset_us = _offset_us(cfg)
    summary = {"node_types": 0, "runs": 0, "vm_rows": 0, "host_rows": 0, "written": 0, "unchanged": 0,
               "removed": 0}

    def put(text: str, path: Path, expected: set):
        expected.add(path)
        if write_if_changed(text.encode("utf-8"), path):
            summary["written"] += 1
        else:
            summary["unchanged"] += 1

    for nt_name, nt in cfg["node_types"].items():
        summary["node_types"] += 1
        nt_dir = out / nt_name
        runs = nt.get("runs", cfg["runs"])
        if nt.get("profile") == "legacy":  # the seed collectors' format (synth_legacy.py)
            from vmpower.demo import legacy as synth_legacy

            expected: set[Path] = set()
            stats = synth_legacy.write_node_type(cfg, nt_name, nt, runs, nt_dir,
                                                 lambda text, path: put(text, path, expected))
            for k in ("runs", "vm_rows", "host_rows"):
                summary[k] += stats[k]
            summary["removed"] += _remove_stale(nt_dir, stats["run_dirs"], expected, cfg["legacy"]["output_prefix"])
            continue
        zones = [z for z in HOST_ZONE_ORDER if z in nt["sigma"]]
        noise_abs = {z: [] for z in zones}
        window_err = {z: [] for z in zones}
        labels = {z: [] for z in zones}
        expected: set[Path] = set()
        run_dirs = set()
        spec_text = json.dumps(nt["machine_spec"], indent=2) + "\n"
        for run_index, spec in enumerate(runs):
            run = simulate_run(cfg, nt_name, nt, spec, run_index)
            run_dir = nt_dir / spec["id"]
            run_dirs.add(run_dir)
            stamp = str(np.datetime_as_string(np.datetime64(run["host_start_us"] + offset_us, "us"), unit="s"))
            stamp = stamp.replace("-", "").replace(":", "").replace("T", "_")
            prefix = f"{cfg['output_prefix']}_{spec['id']}".replace("-", "_")
            put(vm_file_text(cfg, run, spec, offset_us), run_dir / f"vm_features_{prefix}_{stamp}.json", expected)
            if spec.get("host_format", "csv") == "json":
                put(host_json_text(cfg, run, zones, nt_name), run_dir / f"bm_power_{prefix}_{stamp}.json", expected)
            else:
                put(host_csv_text(cfg, run, zones), run_dir / f"bm_power_{prefix}_{stamp}.csv", expected)
            put(spec_text, run_dir / "machine_spec.json", expected)
            summary["runs"] += 1
            summary["vm_rows"] += int(run["vm"]["abs_us"].size)
            summary["host_rows"] += int(run["host"]["rel_us"].size)
            for z in zones:
                noise_abs[z].append(np.abs(run["noise"][z]))
                window_err[z].append(run["window_err"][z])
                labels[z].append(run["labels"][z])
        floor = {
            "node_type": nt_name,
            "seed": int(cfg["seed"]),
            "definition": "noise floor = MAE a perfect model (the true active power averaged exactly like "
                          "Kepler's ~5 s updates) gets against the labels = sigma * sqrt(2/pi); see docs/demo-data.md",
            "node_idle_watts": {z: float(nt["idle_watts"][z]) for z in zones},
            "zones": {},
        }
        for z in zones:
            sigma = float(nt["sigma"][z])
            lab = np.concatenate(labels[z])
            floor["zones"][z] = {
                "sigma_watts": sigma,
                "noise_floor_mae_watts": round(sigma * math.sqrt(2.0 / math.pi), 6),
                "empirical_noise_mae_watts": round(float(np.concatenate(noise_abs[z]).mean()), 6),
                "window_truth_mae_watts": round(float(np.concatenate(window_err[z]).mean()), 6),
                "label_mean_watts": round(float(lab.mean()), 6),
                "label_max_watts": round(float(lab.max()), 6),
            }
        put(dumps_json(floor), nt_dir / "synth_noise_floor.json", expected)
        summary["removed"] += _remove_stale(nt_dir, run_dirs, expected, str(cfg["output_prefix"]))
    return summary


def _remove_stale(nt_dir: Path, run_dirs: set, expected: set, prefix: str) -> int:
    """Remove collector files with synth's prefix that this config no longer produces (a run dir
    must hold exactly one of each). Other runs' dirs are removed only when they hold nothing but
    such files; anything else is someone's data and is left alone."""
    patterns = (f"vm_features_{prefix}_*.json", f"bm_power_{prefix}_*.csv", f"bm_power_{prefix}_*.json")
    removed = 0
    for d in sorted(p for p in nt_dir.iterdir() if p.is_dir()):
        ours = {f for pat in patterns for f in d.glob(pat)}
        if d in run_dirs:
            stale = sorted(ours - expected)
        else:
            others = {f for f in d.iterdir()} - ours - {d / "machine_spec.json"}
            stale = [] if others or not ours else sorted(f for f in d.iterdir())
        for f in stale:
            f.unlink()
            removed += 1
            log.info("synth: removed stale %s", f)
        if d not in run_dirs and stale and not any(d.iterdir()):
            d.rmdir()
    return removed
