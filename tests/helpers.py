"""Tiny raw-file writers for unit tests (the demo generator covers realistic data)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

TZ = timezone(timedelta(hours=2))  # guest and host local time zone in these tests


def iso_local(epoch: np.ndarray) -> list[str]:
    return [datetime.fromtimestamp(float(t), TZ).replace(tzinfo=None).isoformat(timespec="microseconds") for t in epoch]


def vm_records(n=60, start=1_741_600_000.0, interval=1.0, util=None, perf=True, skew=0.0):
    t = start + interval * np.arange(1, n + 1) + skew
    util = np.linspace(5, 95, n) if util is None else np.asarray(util, dtype=float)
    recs = []
    for i in range(n):
        recs.append(
            {
                "timestamp": float(interval * (i + 1)),
                "timestamp_absolute": float(t[i]),
                "timestamp_iso": iso_local(t[i : i + 1])[0],
                "time_delta_seconds": interval,
                "collection_interval": interval,
                "vm_hostname": "guest",
                "target_zones": ["package", "core"],
                "stress_workload": "cpu_cycling",
                "cpu_cycles": float(util[i] * 1e7) if perf else 0,
                "instructions": float(util[i] * 2e7) if perf else 0,
                "cpu_utilization": float(util[i]),
                "memory_usage_percent": 40.0 + (i % 3),
                "sys_context_switches": float(1000 * i),
                "sys_procs_running": float(1 + i % 4),
            }
        )
    return recs


def write_vm(path: Path, recs, form="array") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "array":
        path.write_text(json.dumps(recs, indent=2))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def host_frame(start=1_741_599_995.0, seconds=80.0, interval=0.1, watts=None, zones=("package", "core", "dram", "uncore")):
    t = start + interval * np.arange(int(seconds / interval))
    base = np.interp(t, [t[0], t[-1]], [10, 100]) if watts is None else watts(t)
    df = pd.DataFrame({"timestamp": t - t[0], "timestamp_iso": iso_local(t)})
    for k, z in enumerate(zones):
        df[f"total_cpu_watts_{z}"] = base * (1.0 - 0.2 * k)
    df["vm_count"] = 1
    df["collection_interval"] = interval
    df["vm_filter"] = "{'guest'}"
    df.attrs["epoch"] = t
    return df


def write_host_csv(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def write_host_json(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = df.assign(timestamp_absolute=df.attrs["epoch"]).to_dict(orient="records")
    for r in recs:
        r["vms"] = [{"vm_id": "1", "vm_name": "guest", "hypervisor": "kvm", "node_name": "h", "zone": "package",
                     "watts": r["total_cpu_watts_package"], "state": "running"}]
    path.write_text(json.dumps(recs))
    return path


def merge_settings(config: dict, **over):
    """The config's merge settings; per-sample window alignment unless a test asks for another."""
    from vmpower.pipeline import merge

    import dataclasses

    over.setdefault("alignment", "window")
    return dataclasses.replace(merge.MergeSettings.from_config(config), **over)
