"""A plain-text build report (results/report.md) and `vmpower report-paths` for `make run`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from vmpower.io import write_text


def _table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(summary: pd.DataFrame, best: dict, datasets: dict[str, dict], isolation: dict[str, dict]) -> str:
    out = ["# vmpower build report", ""]
    out += ["## Data quality per run", ""]
    rows = []
    for nt, ds in sorted(datasets.items()):
        for run, q in sorted(ds.get("run_quality", {}).items()):
            rows.append(
                {
                    "node_type": nt,
                    "run": run,
                    "rows kept": q["rows_kept"],
                    "VM samples": q["vm_samples"],
                    "match rate": q["match_rate"],
                    "mean time diff (s)": q["time_diff_mean"] or 0.0,
                    "max time diff (s)": q["time_diff_max"] or 0.0,
                    "dropped": ", ".join(f"{k}={v}" for k, v in q["rows_dropped"].items()) or "-",
                }
            )
    out += [_table(pd.DataFrame(rows)) if rows else "(no runs)", ""]
    out += ["## Idle power (DynPower isolation)", ""]
    iso_rows = [
        {"node_type": nt, "method": i["method"], **{f"idle {z} (W)": w for z, w in i["idle_power_watts"].items()}}
        for nt, i in sorted(isolation.items())
    ]
    out += [_table(pd.DataFrame(iso_rows)) if iso_rows else "(none)", ""]
    out += ["## Best model per node_type, output type and feature group (held-out MAE, mean over zones)", ""]
    best_rows = [
        {"node_type": nt, "output_type": ot, "feature_group": fg, "trainer": b["trainer"], "MAE (W)": b["mae_mean"]}
        for nt, by_ot in sorted(best.items())
        for ot, by_fg in sorted(by_ot.items())
        for fg, b in sorted(by_fg.items())
    ]
    out += [_table(pd.DataFrame(best_rows)) if best_rows else "(none)", ""]
    out += ["## All held-out metrics", ""]
    cols = ["node_type", "output_type", "feature_group", "trainer", "zone", "mae", "mape", "rmse", "r2"]
    trained = summary[summary["status"] == "trained"][cols] if "status" in summary else summary
    out += [_table(trained), ""]
    skipped = summary[summary["status"] != "trained"] if "status" in summary else summary.iloc[0:0]
    if len(skipped):
        out += ["Skipped (no usable features): " + ", ".join(
            f"{r.node_type}/{r.output_type}/{r.feature_group}/{r.trainer}" for r in skipped.itertuples()), ""]
    return "\n".join(out)


def cmd_report(args) -> int:
    summary = pd.read_csv(args.summary)
    best = json.loads(Path(args.best).read_text())
    datasets = {Path(p).name.removesuffix(".summary.json"): json.loads(Path(p).read_text()) for p in args.datasets}
    isolation = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in args.isolation}
    write_text(render(summary, best, datasets, isolation), args.output)
    return 0


def cmd_paths(args) -> int:
    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text())
    res = Path(cfg["results_dir"])
    print("vmpower build finished:")
    print(f"  models (ONNX + Kepler archives): {res / 'models'}/<output_type>/<feature_group>/")
    print(f"  best models:                     {res / 'best.json'}")
    print(f"  metrics of every model:          {res / 'summary.csv'}")
    print(f"  report:                          {res / 'report.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the markdown build report")
    p.add_argument("--summary", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--datasets", nargs="*", default=[])
    p.add_argument("--isolation", nargs="*", default=[])
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_report)

    q = sub.add_parser("report-paths", help="print where the models, metrics and report are")
    q.add_argument("--config", default="config.yaml")
    q.set_defaults(func=cmd_paths)
