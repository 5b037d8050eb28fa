"""``vmpower report``: the plain-text build report (results/report.md)."""

from __future__ import annotations

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
                    "warnings": "; ".join(q.get("warnings") or []) or "-",
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
    failed = unusable_models(summary)
    if len(failed):
        out += ["## Models not exported as ONNX (never selected)", "",
                _table(failed[["node_type", "output_type", "feature_group", "trainer", "status", "reason"]]), ""]
    return "\n".join(out)


def unusable_models(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model whose status is not trained (skipped, train_failed, onnx_mismatch, ...)
    with its reason."""
    if "status" not in summary:
        return summary.iloc[0:0]
    keys = ["node_type", "output_type", "feature_group", "trainer"]
    failed = summary[summary["status"] != "trained"].drop_duplicates(keys).copy()
    failed["reason"] = failed["reason"].fillna("") if "reason" in failed else ""
    return failed.sort_values(keys, kind="stable")


def cmd_report(args) -> int:
    summary = pd.read_csv(args.summary)
    best = json.loads(Path(args.best).read_text())
    datasets = {Path(p).name.removesuffix(".summary.json"): json.loads(Path(p).read_text()) for p in args.datasets}
    isolation = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in args.isolation}
    text = render(summary, best, datasets, isolation)
    if args.layout_problems:  # node_types this build left out (rules/common.smk), said up front
        head, rest = text.split("\n", 1)
        lines = "".join(f"- `{p}`\n" for p in args.layout_problems)
        text = f"{head}\n\n## Not built: runs with a layout problem (their node_types are left out)\n\n{lines}{rest}"
    if args.pinning:  # EP-003 FR5: would CPU pinning help? (vmpower pinning, one section per node_type)
        text += "\n## CPU pinning recommendation (EP-003 FR5)\n\n" + "\n".join(
            Path(p).read_text() for p in sorted(args.pinning))
    write_text(text, args.output)
    return 0
