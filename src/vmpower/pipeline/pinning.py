"""``vmpower pinning``: would CPU pinning improve this node_type's power estimates? (EP-003 FR5,
"Pinning Recommendation System"; docs/pinning.md.)

Per run of the merged data (results/merged/<node_type>/<run>.parquet, the guest's features per
sample) and the held-out predictions of the node_type's best model (results/train/.../holdout.parquet,
leave-one-run-out):

* ``utilization_variance``: median |Δ cpu_steal| / median |Δ cpu_utilization| between
  consecutive samples: the share of the utilisation's tick-to-tick jitter that is steal time
  (0 with dedicated vCPUs). Robust (medians) to the workload's own steps.
* ``context_switch_variability``: median |Δ ln(context-switch rate)|: the typical relative change
  of the rate between consecutive samples (scheduler interference; Poisson noise alone is a few %).
* ``accuracy_variance``: std(prediction - power) / mean(power) of the zone, on held-out rows.
* ``steal_mean`` / ``steal_std``: steal time in percent of the VM's CPU time.

The node_type's value of each is the median over its runs, scored as the EP does: +0.3 if
utilization_variance > 0.15, +0.4 if context_switch_variability > 0.2, +0.3 if
accuracy_variance > 0.1; should_pin = score > 0.5, confidence = score.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vmpower.errors import InputError
from vmpower.names import power_column

log = logging.getLogger("vmpower.pipeline.pinning")

# (metric, threshold, score, benefit): the EP's analyze_pinning_effectiveness.
RULES = (
    ("utilization_variance", 0.15, 0.3, "less steal-time noise in the CPU utilisation features"),
    ("context_switch_variability", 0.2, 0.4, "less scheduler interference (context-switch variability)"),
    ("accuracy_variance", 0.1, 0.3, "tighter model residuals (more consistent accuracy)"),
)
SHOULD_PIN_ABOVE = 0.5
CS_COLUMNS = ("sys_context_switches_rate", "context_switches")  # /proc's count first: perf may be off


def _median_abs_diff(x):
    import numpy as np

    d = np.abs(np.diff(x[np.isfinite(x)]))
    return float(np.median(d)) if d.size else float("nan")


def window_metrics(steal, util, cs_rate) -> dict:
    """Scheduler metrics of consecutive samples (arrays of cpu_steal %, cpu_utilization %, the
    context-switch rate or None): shared by the analysis of collected runs and serve's live view."""
    import numpy as np

    steal = np.asarray(steal, "float64") if steal is not None else np.full(len(util), np.nan)
    util = np.asarray(util, "float64")
    du = _median_abs_diff(util)
    out = {"samples": int(len(util)), "steal_mean": float(np.nanmean(steal)) if np.isfinite(steal).any() else None,
           "steal_std": float(np.nanstd(steal)) if np.isfinite(steal).any() else None,
           "utilization_variance": (_median_abs_diff(steal) / du) if du > 0 else 0.0,
           "context_switch_variability": None}
    if cs_rate is not None:
        cs = np.asarray(cs_rate, "float64")
        cs = cs[np.isfinite(cs) & (cs > 0)]
        if cs.size > 2:
            out["context_switch_variability"] = _median_abs_diff(np.log(cs))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def run_metrics(df) -> dict:
    """Scheduler metrics of one run's merged samples (time order)."""
    cs = next((df[c].to_numpy("float64") for c in CS_COLUMNS if c in df), None)
    return window_metrics(df["cpu_steal"].to_numpy("float64") if "cpu_steal" in df else None,
                          df["cpu_utilization"].to_numpy("float64"), cs)


def residual_spread(holdout, zone: str) -> dict[str, float]:
    """Per run: std(pred - power) / mean(power) of ``zone`` on held-out rows."""
    import numpy as np

    power = power_column(zone)
    need = {"run_id", power, f"pred_{zone}"}
    if not need <= set(holdout.columns):
        raise ValueError(f"needs columns {', '.join(sorted(need - set(holdout.columns)))}")
    r = holdout[f"pred_{zone}"] - holdout[power]
    g = holdout.assign(_r=r, _p=holdout[power].abs()).groupby("run_id", sort=True)
    spread = g["_r"].std(ddof=0) / g["_p"].mean()
    return {k: float(v) for k, v in spread.items() if np.isfinite(v)}


def recommend(metrics: dict) -> dict:
    """The EP's recommendation from node_type-level metrics (None: not measured, scores 0)."""
    score, benefits = 0.0, []
    for name, threshold, points, benefit in RULES:
        v = metrics.get(name)
        if v is not None and v > threshold:
            score += points
            benefits.append(benefit)
    score = round(score, 6)
    return {"should_pin": score > SHOULD_PIN_ABOVE, "confidence": score, "primary_benefits": benefits}


def analyse(merged: dict, holdout=None, zone: str = "package") -> dict:
    """{run: frame} merged runs (+ the best model's holdout frame) -> the report dict."""
    import numpy as np

    if not merged:
        raise ValueError("no merged runs")
    runs = {name: run_metrics(df) for name, df in sorted(merged.items())}
    spread = residual_spread(holdout, zone) if holdout is not None else {}
    for name, m in runs.items():
        m["accuracy_variance"] = spread.get(name)

    def median(key):
        vals = [m[key] for m in runs.values() if m.get(key) is not None]
        return float(np.median(vals)) if vals else None

    keys = ("utilization_variance", "context_switch_variability", "accuracy_variance", "steal_mean", "steal_std")
    metrics = {k: median(k) for k in keys}
    return {"zone": zone, "metrics": metrics, **recommend(metrics), "runs": runs}


def best_holdout(best_path: Path, train_dir: Path, node_type: str, output_type: str = "AbsPower") -> Path:
    """The holdout predictions of the node_type's best model (lowest held-out MAE over groups)."""
    try:
        best = json.loads(Path(best_path).read_text())
        groups = best[node_type][output_type]
        group = min(groups, key=lambda g: (groups[g]["mae_mean"], g))
        trainer = groups[group]["trainer"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(best_path, f"no {output_type} best model of {node_type} ({type(exc).__name__}: {exc})") from None
    return Path(train_dir) / output_type / group / trainer / "holdout.parquet"


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read ({' '.join(str(exc).split())[:120]})") from None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def text(report: dict, node_type: str) -> str:
    m = report["metrics"]
    lines = [f"{node_type}: should_pin={'yes' if report['should_pin'] else 'no'} "
             f"(confidence {report['confidence']:.2f})"]
    lines += [f"  {name} = {_fmt(m.get(name))} (> {t:g}: +{p:g})" for name, t, p, _b in RULES]
    lines.append(f"  steal mean {_fmt(m.get('steal_mean'))} %, std {_fmt(m.get('steal_std'))} %")
    lines += [f"  benefit: {b}" for b in report["primary_benefits"]]
    return "\n".join(lines)


def markdown(report: dict, node_type: str) -> str:
    """A report fragment: the recommendation and the per-run metrics."""
    m = report["metrics"]
    head = (f"### CPU pinning: {node_type}\n\n**should_pin: {'yes' if report['should_pin'] else 'no'}** "
            f"(confidence {report['confidence']:.2f})"
            + (f"; benefits: {'; '.join(report['primary_benefits'])}" if report["primary_benefits"] else "") + "\n\n")
    cols = ("steal_mean", "utilization_variance", "context_switch_variability", "accuracy_variance")
    rows = ["| run | samples | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    rows += [f"| {run} | {r['samples']} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |"
             for run, r in report["runs"].items()]
    rows.append("| **median** | | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    return head + "\n".join(rows) + "\n"


def cmd_pinning(args) -> int:
    from vmpower.io import write_json, write_text

    files = sorted(p for d in args.merged for p in ([Path(d)] if Path(d).is_file() else Path(d).glob("*.parquet")))
    if not files:
        raise InputError(args.merged[0], "no merged runs (*.parquet) here")
    merged = {p.stem: _read_parquet(p) for p in files}
    for p, df in zip(files, merged.values()):
        if "cpu_utilization" not in df:
            raise InputError(p, "no cpu_utilization column: not a merged run")
    node_type = args.node_type or files[0].parent.name
    holdout_path = Path(args.holdout) if args.holdout else None
    if holdout_path is None and args.best:
        if not args.train_dir:
            raise InputError(args.best, "--best needs --train-dir (results/train/<node_type>)")
        holdout_path = best_holdout(Path(args.best), Path(args.train_dir), node_type)
    holdout = _read_parquet(holdout_path) if holdout_path else None
    try:
        report = analyse(merged, holdout, args.zone)
    except ValueError as exc:
        raise InputError(holdout_path or files[0], str(exc)) from None
    report = {"node_type": node_type, **report}
    print(text(report, node_type))
    if args.json:
        write_json(report, args.json)
    if args.markdown:
        write_text(markdown(report, node_type), args.markdown)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pinning", help="CPU pinning recommendation from merged runs and the best model's residuals")
    p.add_argument("--merged", nargs="+", required=True, help="merged run files, or directories of them "
                   "(results/merged/<node_type>)")
    p.add_argument("--holdout", help="held-out predictions of a model (results/train/.../holdout.parquet)")
    p.add_argument("--best", help="best.json: use the node_type's best model's holdout (with --train-dir)")
    p.add_argument("--train-dir", help="results/train/<node_type> (with --best)")
    p.add_argument("--node-type", help="node_type (default: the merged directory's name)")
    p.add_argument("--zone", default="package", help="zone of the residuals (default: package)")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--markdown", help="write a report fragment (markdown) here")
    p.set_defaults(func=cmd_pinning)
