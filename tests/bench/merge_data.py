"""Large synthetic run pairs for the merge benchmark, written vectorised (pyarrow CSV writer,
pandas' C JSON writer) and cached under build/bench/ (gitignored): a 10 M-row host CSV at 0.1 s
and a 1 M-sample VM JSON array, in the collectors' formats (docs/data-format.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "bench"
START_EPOCH = 1_741_597_200.0          # UTC
UTC_OFFSET_US = 2 * 3600 * 1_000_000   # both machines on local time UTC+2
ZONES = ["core", "package", "dram", "uncore"]
# The guest collector's numeric fields (docs/data-format.md), in its order.
VM_FLOATS = [
    "cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
    "page_faults", "context_switches", "cpu_utilization", "cpu_user_time", "cpu_system_time",
    "cpu_nice_time", "cpu_iowait", "cpu_irq", "cpu_softirq", "cpu_steal", "cpu_idle",
    "memory_usage_percent", "memory_available_gb", "disk_io_read_mb", "disk_io_write_mb",
    "network_bytes_sent", "network_bytes_recv", "process_count", "load_average_1min",
    "load_average_5min", "load_average_15min", "instructions_per_cycle", "cache_miss_ratio",
    "branch_miss_ratio", "cpu_efficiency", "node_process_cpu_seconds_total",
    "node_process_cpu_seconds_delta", "node_process_cpu_seconds_rate", "sys_cpu_user_seconds",
    "sys_cpu_system_seconds", "sys_cpu_idle_seconds", "sys_cpu_iowait_seconds", "sys_context_switches",
    "sys_interrupts", "sys_forks", "sys_procs_running", "sys_procs_blocked",
]
CUMULATIVE = {"node_process_cpu_seconds_total", "sys_cpu_user_seconds", "sys_cpu_system_seconds",
              "sys_cpu_idle_seconds", "sys_cpu_iowait_seconds", "sys_context_switches", "sys_interrupts", "sys_forks"}


def _iso(epoch_us: np.ndarray) -> pa.Array:
    """Naive local ISO strings 'YYYY-mm-ddTHH:MM:SS.ffffff' (Arrow's C++ strftime)."""
    return pc.strftime(pa.array((epoch_us + UTC_OFFSET_US).astype("datetime64[us]")), format="%Y-%m-%dT%H:%M:%S")


def write_host_csv(path: Path, n: int, rng: np.random.Generator) -> None:
    t = np.arange(n) * 0.1 + rng.uniform(0, 0.003, n)
    epoch_us = np.round((START_EPOCH + t) * 1e6).astype("int64")
    steps = np.repeat(rng.uniform(5, 60, n // 50 + 1), 50)[:n]  # Kepler's held 5 s values
    cols = {"timestamp": pa.array(np.round(t, 6)), "timestamp_iso": _iso(epoch_us)}
    share = {"core": 0.75, "package": 1.0, "dram": 0.1, "uncore": 0.12}
    for z in ZONES:
        cols[f"total_cpu_watts_{z}"] = pa.array(np.round(steps * share[z], 6))
    cols["vm_count"] = pa.array(np.ones(n, dtype="int64"))
    cols["collection_interval"] = pa.array(np.full(n, 0.1))
    cols["vm_filter"] = pa.array(np.full(n, "{'fedora40'}", dtype=object), type=pa.string())
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write((",".join(cols) + "\n").encode())  # unquoted header, as the collector writes it
        opts = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 20)
        pacsv.write_csv(pa.table(cols), fh, write_options=opts)
    tmp.replace(path)


def write_vm_json(path: Path, n: int, rng: np.random.Generator, host_seconds: float) -> None:
    dt = 1.0 + rng.normal(0.002, 0.0015, n).clip(-0.004, 0.008)
    dt *= host_seconds * 0.995 / dt.sum()  # stay inside the host's span
    t_abs = START_EPOCH + 0.5 + np.cumsum(dt)
    epoch_us = np.round(t_abs * 1e6).astype("int64")
    df = pd.DataFrame({
        "timestamp": np.round(np.cumsum(dt), 6),
        "timestamp_absolute": np.round(t_abs, 6),
        "timestamp_iso": _iso(epoch_us).to_numpy(zero_copy_only=False),
        "time_delta_seconds": np.round(dt, 6),
        "collection_interval": 1.0,
        "vm_hostname": "fedora40",
        "stress_workload": "cpu_cycling",
        "perf_available": True,
    })
    u = rng.uniform(0, 100, n)
    for i, name in enumerate(VM_FLOATS):
        v = u * (i + 1) * rng.uniform(0.98, 1.02, n)
        df[name] = np.round(np.cumsum(v) if name in CUMULATIVE else v, 6)
    lines = df.to_json(orient="records", lines=True, double_precision=10).splitlines()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("[\n")
        fh.write(",\n".join(lines))
        fh.write("\n]\n")
    tmp.replace(path)


def run_pair(host_rows: int = 10_000_000, vm_rows: int = 1_000_000, seed: int = 8) -> tuple[Path, Path]:
    """(vm json, host csv), generated once per size into build/bench/."""
    d = CACHE / f"merge_{host_rows}_{vm_rows}_{seed}"
    vm, bm = d / "vm_features_bench_20250310_090000.json", d / "bm_power_bench_20250310_090000.csv"
    if vm.exists() and bm.exists():
        return vm, bm
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_host_csv(bm, host_rows, rng)
    write_vm_json(vm, vm_rows, rng, host_seconds=(host_rows - 1) * 0.1)
    (d / "params.json").write_text(json.dumps({"host_rows": host_rows, "vm_rows": vm_rows, "seed": seed}))
    return vm, bm
