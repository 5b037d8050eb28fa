"""Isolators: AbsPower keeps the merged power; DynPower removes the node_type's idle power.

* ``profile`` – idle power per zone is the mean power of the node_type's idle runs (runs
  whose samples all carry an idle workload, or listed in ``isolate.idle_runs``);
* ``min``     – idle power per zone is the minimum observed (used when there is no idle run).

Dynamic power is clipped at 0 (an estimate below idle is noise, not negative power).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pandas as pd

from vmpower.errors import InputError
from vmpower.io import write_json, write_parquet
from vmpower.names import power_column, zone_of
from vmpower.settings import Section


@dataclasses.dataclass(frozen=True)
class IsolateSettings(Section):
    """The config's ``isolate`` section (defaults: config.yaml and its schema)."""

    method: str
    idle_workloads: list
    idle_runs: dict  # {node_type: [run_id, ...]}


def power_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if zone_of(c) is not None]


def idle_runs(df: pd.DataFrame, idle_workloads: list[str], listed: list[str]) -> list[str]:
    is_idle = df["stress_workload"].isin(idle_workloads).groupby(df["run_id"]).all()
    found = set(is_idle[is_idle].index) | (set(listed) & set(df["run_id"].unique()))
    return sorted(found)


def idle_power(df: pd.DataFrame, method: str, idle_workloads: list[str], listed: list[str]) -> tuple[dict, dict]:
    cols = power_columns(df)
    runs = idle_runs(df, idle_workloads, listed) if method == "profile" else []
    if method == "profile" and runs:
        sel = df[df["run_id"].isin(runs)]
        idle = sel[cols].mean()
        info = {"method": "profile", "idle_runs": runs, "idle_rows": int(len(sel))}
    elif method in ("profile", "min"):
        idle = df[cols].min()
        info = {"method": "min", "idle_runs": []}
        if method == "profile":
            info["fallback_reason"] = "no idle run for this node_type"
    else:
        raise ValueError(f"unknown isolator {method!r}")
    return {zone_of(c): float(idle[c]) for c in cols}, info


def dyn_power(df: pd.DataFrame, idle: dict) -> tuple[pd.DataFrame, dict]:
    out = df.copy()
    clipped = {}
    for zone, watts in idle.items():
        col = power_column(zone)
        dyn = out[col] - watts
        clipped[zone] = float((dyn < 0).mean())
        out[col] = dyn.clip(lower=0.0)
    return out, clipped


def isolate(df: pd.DataFrame, node_type: str, s: IsolateSettings) -> tuple[pd.DataFrame, dict]:
    """(DynPower dataset, isolation metadata) of a node_type's AbsPower dataset."""
    idle, info = idle_power(df, s.method, s.idle_workloads, s.idle_runs.get(node_type, []))  # not listed: none
    dyn, clipped = dyn_power(df, idle)
    return dyn, {
        "node_type": node_type,
        "requested_method": s.method,
        **info,
        "idle_power_watts": idle,
        "dyn_clipped_fraction": clipped,
        "rows": int(len(df)),
    }


def _settings(settings_json: str | None, config: str | None) -> IsolateSettings:
    """--settings (the workflow's JSON) or the isolate section of --config (the bundled config.yaml)."""
    if settings_json:
        return IsolateSettings.build(json.loads(settings_json), "--settings")
    from vmpower import settings
    from vmpower.paths import CONFIG

    path = config or CONFIG
    return IsolateSettings.build(settings.load(path)["isolate"], str(path))


def cmd_isolate(args) -> int:
    s = _settings(args.settings, args.config)
    df = pd.read_parquet(args.dataset)
    if df.empty:
        raise InputError(args.dataset, "dataset has no rows")
    dyn, info = isolate(df, args.node_type, s)
    write_parquet(df, args.abs_output)
    write_parquet(dyn, args.dyn_output)
    write_json(info, args.info)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("isolate", help="write AbsPower and DynPower (idle power removed) datasets")
    p.add_argument("--dataset", required=True)
    p.add_argument("--node-type", required=True)
    p.add_argument("--abs-output", required=True)
    p.add_argument("--dyn-output", required=True)
    p.add_argument("--info", required=True, help="isolation metadata JSON (method, idle power per zone)")
    p.add_argument("--config", help="read the isolate section from this config.yaml (default: the bundled one)")
    p.add_argument("--settings", help=argparse.SUPPRESS)  # JSON of the isolate section, passed by the workflow
    p.set_defaults(func=cmd_isolate)
