"""``vmpower synth`` profile ``legacy``: runs exactly as the seed's collectors write them.

The seed's guest collector (vm_feature_collector.py) and host collector (bm_power_collector.py)
write a format the demo profile does not: per-interval ``sys_*`` deltas from /proc/stat (not
counters since boot), CPU shares computed from psutil's float seconds, perf counters as 0 when
the VM has no perf access, no workload annotation, a ``vm_hostname`` that is the guest's own
hostname, floats at full ``repr`` precision, and a host file sampled every second while Kepler
updates about every 1.7 s (values repeat). Load and power come from the demo's latent model
(demo.simulate: latent, true_power); legacy_model.py emulates the collectors' arithmetic and
timing, this module writes their files.

Two collector versions are emulated per run (``collector_version``): 1 wrote measured times
(``timestamp = timestamp_absolute - first timestamp_absolute``) and a 1 s gap after the first
sample; 2 (the seed's HEAD) writes target times (``timestamp = k * interval``), falls behind
them by the collection overhead (``timestamp_absolute`` is the window end) and adds
``core_count``; its host collector writes target times too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from vmpower.demo.formats import (fmt_int, fmt_repr, fmt_str, iso_local, join, records_text, vm_filter_cell, vm_id,
                                  vms_array)

# Field order of the guest collector's JSON (dataclasses.asdict of VMFeaturePoint).
PERF_INTS = ("cpu_cycles", "instructions", "cache_references", "cache_misses",
             "branches", "branch_misses", "page_faults", "context_switches")
VM_FIELDS = (
    "timestamp", "timestamp_absolute", "timestamp_iso", *PERF_INTS,
    "cpu_utilization", "cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq",
    "cpu_softirq", "cpu_steal", "cpu_idle", "memory_usage_percent", "memory_available_gb",
    "disk_io_read_mb", "disk_io_write_mb", "network_bytes_sent", "network_bytes_recv", "process_count",
    "load_average_1min", "load_average_5min", "load_average_15min",
    "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio", "cpu_efficiency",
    "sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_total_seconds", "sys_context_switches",
    "sys_processes_created", "sys_procs_running", "sys_procs_blocked",
    "collection_interval", "time_delta_seconds", "vm_hostname",
)
HOST_ZONES = ("core", "package")  # the host collector reads these two zones only
HOST_CSV_COLUMNS = ("timestamp", "timestamp_iso", "total_cpu_watts_core", "total_cpu_watts_package",
                    "vm_count", "collection_interval", "vm_filter")


# --------------------------------------------------------------------------------------- writers

def vm_text(cfg: dict, nt: dict, run: dict) -> str:
    leg, vm = cfg["legacy"], run["vm"]
    off = float(leg["utc_offset_hours"]) * 3600.0
    cols = vm["cols"]
    fields = [("timestamp", fmt_repr(vm["rel"])), ("timestamp_absolute", fmt_repr(vm["abs"])),
              ("timestamp_iso", fmt_str(iso_local(vm["iso_t"], off).to_numpy(zero_copy_only=False)))]
    for name in VM_FIELDS[3:-3]:
        kind, values = cols[name]
        fields.append((name, fmt_int(values) if kind == "int" else fmt_repr(values)))
    fields += [("collection_interval", repr(float(leg["interval"]))),
               ("time_delta_seconds", fmt_repr(vm["delta"])),
               ("vm_hostname", json.dumps(leg["vm_hostname"]))]
    if run["version"] == 2:
        fields.append(("core_count", str(int(nt["vm"]["vcpus"]))))
    return records_text(fields, lines=False)


def _watts(run: dict):
    """Per zone: the JSON/CSV literal of the summed watts ("0" when no VM was listed: sum([]))."""
    import pyarrow as pa
    import pyarrow.compute as pc

    absent = pa.array(run["host"]["absent"])
    return {z: pc.if_else(absent, "0", fmt_repr(run["host"]["vals"][z])) for z in HOST_ZONES}


def host_csv_text(cfg: dict, run: dict) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    leg, host = cfg["legacy"], run["host"]
    watts = _watts(run)
    cols = [fmt_repr(host["rel"]), iso_local(host["abs"], float(leg["utc_offset_hours"]) * 3600.0),
            watts["core"], watts["package"], pc.if_else(pa.array(host["absent"]), "0", "1"),
            repr(float(leg["interval"])), vm_filter_cell(cfg["vm_name"])]
    # csv.DictWriter on a newline='' file: lines end in \r\n (measured in the seed's files).
    rows = join(cols, ",")
    return "\r\n".join([",".join(HOST_CSV_COLUMNS), *rows.to_pylist()]) + "\r\n"


def host_json_text(cfg: dict, run: dict, nt_name: str) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    leg, host = cfg["legacy"], run["host"]
    watts = _watts(run)
    absent = pa.array(host["absent"])
    vms = pc.if_else(absent, "[]", vms_array(cfg, vm_id(cfg["seed"], nt_name), leg["node_name"], HOST_ZONES, watts))
    iso = iso_local(host["abs"], float(leg["utc_offset_hours"]) * 3600.0)
    fields = [("timestamp", fmt_repr(host["rel"])), ("timestamp_absolute", fmt_repr(host["abs"])),
              ("timestamp_iso", fmt_str(iso.to_numpy(zero_copy_only=False))),
              ("total_cpu_watts_core", watts["core"]), ("total_cpu_watts_package", watts["package"]),
              ("vm_count", pc.if_else(absent, "0", "1")), ("vms", vms),
              ("collection_interval", repr(float(leg["interval"]))),
              ("kepler_endpoint", json.dumps(leg["kepler_endpoint"])),
              ("vm_filter", json.dumps(repr({cfg["vm_name"]})))]
    return records_text(fields, lines=False)


def run_files(cfg: dict, nt_name: str, nt: dict, spec: dict, run_index: int) -> tuple[dict, dict]:
    """({file name: text}, run) for one run, named as the orchestrator names them."""
    from vmpower.demo.legacy_model import simulate_run

    run = simulate_run(cfg, nt_name, nt, spec, run_index)
    leg = cfg["legacy"]
    stamp = iso_local([run["start"]], float(leg["utc_offset_hours"]) * 3600.0).to_pylist()[0][:19]
    stamp = stamp.replace("-", "").replace(":", "").replace("T", "_")
    prefix = f"{leg['output_prefix']}_{stamp}"
    files = {f"vm_features_{prefix}.json": vm_text(cfg, nt, run)}
    if spec.get("host_format", "csv") == "json":
        files[f"bm_power_{prefix}.json"] = host_json_text(cfg, run, nt_name)
    else:
        files[f"bm_power_{prefix}.csv"] = host_csv_text(cfg, run)
    return files, run


def noise_floor(cfg: dict, nt_name: str, nt: dict, runs: list[dict]) -> dict:
    """synth_noise_floor.json for a legacy node_type (zones core and package)."""
    import numpy as np

    out = {"node_type": nt_name, "seed": int(cfg["seed"]), "profile": "legacy",
           "definition": "noise floor = MAE a perfect model (the true active power averaged exactly like "
                         "Kepler's updates) gets against the labels = sigma * sqrt(2/pi); see docs/demo-data.md",
           "node_idle_watts": {z: float(nt["idle_watts"][z]) for z in ("package", "core")}, "zones": {}}
    for z in ("package", "core"):
        sigma = float(nt["sigma"][z])
        lab = np.concatenate([r["labels"][z][~r["host"]["absent"]] for r in runs])
        werr = []
        for r in runs:  # mean host value over each VM window vs the true window power
            a, b = r["vm_true"]
            ht = r["host"]["rel"]
            hv = np.concatenate([[0.0], np.cumsum(r["labels"][z])])
            lo, hi = np.searchsorted(ht, a, "left"), np.searchsorted(ht, b, "right")
            ok = hi > lo
            werr.append(np.abs((hv[hi] - hv[lo])[ok] / (hi - lo)[ok] - r["window_truth"][z][ok]))
        out["zones"][z] = {
            "sigma_watts": sigma,
            "noise_floor_mae_watts": round(sigma * math.sqrt(2.0 / math.pi), 6),
            "empirical_noise_mae_watts": round(float(np.concatenate([np.abs(r["noise"][z]) for r in runs]).mean()), 6),
            "window_truth_mae_watts": round(float(np.concatenate(werr).mean()), 6),
            "label_mean_watts": round(float(lab.mean()), 6),
            "label_max_watts": round(float(lab.max()), 6),
        }
    return out


def write_node_type(cfg: dict, nt_name: str, nt: dict, runs: list[dict], nt_dir: Path, put) -> dict:
    """Write a legacy node_type's runs (no machine_spec.json: the seed writes none) and its noise
    floor; ``put(text, path)`` writes if changed. Returns counts and the run dirs."""
    from vmpower.io import dumps_json

    stats = {"runs": 0, "vm_rows": 0, "host_rows": 0, "run_dirs": set()}
    sims = []
    for run_index, spec in enumerate(runs):
        files, run = run_files(cfg, nt_name, nt, spec, run_index)
        run_dir = nt_dir / spec["id"]
        stats["run_dirs"].add(run_dir)
        for name, text in files.items():
            put(text, run_dir / name)
        stats["runs"] += 1
        stats["vm_rows"] += int(run["vm"]["abs"].size)
        stats["host_rows"] += int(run["host"]["abs"].size)
        sims.append(run)
    put(dumps_json(noise_floor(cfg, nt_name, nt, sims)), nt_dir / "synth_noise_floor.json")
    return stats
