"""The build report.

* ``vmpower report``: a plain-text report (results/report.md);
* ``vmpower report-quality`` / ``report-models`` / ``report-provenance``: per node_type figures
  (matplotlib, PNG) and HTML tables for ``snakemake --report results/report.html`` (rules in
  rules/report.smk, captions in report/*.rst): data quality per run, predicted vs measured
  power on held-out runs, residuals, the metrics of every trainer and feature group, feature
  importance of the tree models, and the provenance (image digests, lock hashes, input
  checksums);
* ``vmpower report-paths`` for ``make run``.

Figures are deterministic: the Agg backend, fixed fonts and styles, no dates or software
version in the PNG metadata, so rebuilding gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from vmpower.io import atomic_path, write_text


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
    write_text(text, args.output)
    return 0


def cmd_paths(args) -> int:
    from vmpower.configcheck import check_file

    cfg = check_file(args.config)
    res = Path(cfg.get("results_dir", "results"))
    print("vmpower build finished:")
    print(f"  models (ONNX + Kepler archives): {res / 'models'}/<output_type>/<feature_group>/")
    print(f"  best models:                     {res / 'best.json'}")
    print(f"  metrics of every model:          {res / 'summary.csv'}")
    print(f"  report:                          {res / 'report.md'}")
    print(f"  HTML report (figures):           snakemake --report {res / 'report.html'}")
    return 0


# ------------------------------------------------------------------------------ HTML report parts

TREE_TRAINERS = ("GradientBoostingRegressor", "XGBRegressor")
ZONE_COLORS = {"package": "#1f77b4", "core": "#d62728", "dram": "#2ca02c", "uncore": "#9467bd"}
_CSS = (
    "body{font-family:sans-serif;font-size:13px;margin:12px;color:#222}"
    "table{border-collapse:collapse;margin:6px 0 18px}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f0f0f0}td.l,th.l{text-align:left}tr.best td{background:#e8f4e8;font-weight:bold}"
    "code{font-size:12px}h2{font-size:16px;margin-top:18px}"
)


def _esc(v) -> str:
    import html

    return html.escape(str(v), quote=True)


def _fmt(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def html_table(header: list[str], rows: list[list], left: int = 1, row_classes: list[str] | None = None) -> str:
    """A plain HTML table; the first ``left`` columns are left-aligned (text)."""
    out = ["<table>", "<tr>" + "".join(
        f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>" for i, h in enumerate(header)
    ) + "</tr>"]
    for n, row in enumerate(rows):
        cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="l">{_esc(_fmt(v))}</td>' if i < left else f"<td>{_esc(_fmt(v))}</td>"
            for i, v in enumerate(row)
        ) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{_esc(title)}</h1>", *body, "</body>", "</html>", "",
    ])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "figure.dpi": 100,
        "savefig.dpi": 100, "path.simplify": True, "svg.hashsalt": "vmpower", "axes.grid": True,
        "grid.alpha": 0.3,
    })
    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """PNG without software/date metadata (same bytes on every rebuild), written atomically."""
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def _message_figure(text: str, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True)
    save_png(fig, path)


# ---------------------------------------------------------------- data quality per run


def quality_rows(quality_files: list[str]) -> list[dict]:
    rows = []
    for p in sorted(quality_files):
        q = json.loads(Path(p).read_text())
        rows.append({"run": Path(p).name.removesuffix(".quality.json"), **q})
    return rows


def _clock_offset(q: dict) -> float:
    """Guest clock offset used for a run: configured plus estimated (kepler_interval)."""
    return float(q.get("vm_clock_offset_seconds") or 0.0) + float((q.get("kepler") or {}).get("clock_offset_seconds") or 0.0)


def cmd_quality(args) -> int:
    rows = quality_rows(args.quality)
    nt = args.node_type
    plt = _pyplot()
    runs = [r["run"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    x = list(range(len(runs)))
    ax = axes[0]
    ax.bar(x, [100.0 * (r.get("match_rate") or 0.0) for r in rows], color="#1f77b4")
    ax.set_ylim(0, 105)
    ax.set_title("match rate: VM samples with host power (%)")
    ax = axes[1]
    w = 0.38
    ax.bar([i - w / 2 for i in x], [r.get("time_diff_mean") or 0.0 for r in rows], w, label="mean", color="#2ca02c")
    ax.bar([i + w / 2 for i in x], [r.get("time_diff_max") or 0.0 for r in rows], w, label="max", color="#ff7f0e")
    ax.set_title("VM sample vs host reading time difference (s)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    ax = axes[2]
    reasons = sorted({k for r in rows for k in (r.get("rows_dropped") or {})})
    bottom = [float(r.get("rows_kept") or 0) for r in rows]
    ax.bar(x, bottom, color="#7f7f7f", label="kept")
    cmap = plt.get_cmap("tab10")
    for n, reason in enumerate(reasons):
        vals = [float((r.get("rows_dropped") or {}).get(reason, 0)) for r in rows]
        ax.bar(x, vals, bottom=bottom, color=cmap((n + 3) % 10), label=f"dropped: {reason}")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("rows kept and dropped (by reason)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    ax = axes[3]
    w3 = 0.26
    ax.bar([i - w3 for i in x], [(r.get("vm_utc_offset_seconds") or 0.0) / 3600.0 for r in rows], w3,
           label="guest UTC offset (h)", color="#17becf")
    ax.bar(x, [_clock_offset(r) for r in rows], w3, label="guest clock offset (s)", color="#bcbd22")
    ax.bar([i + w3 for i in x], [(r.get("lag") or {}).get("lag_seconds") or 0.0 for r in rows], w3,
           label="label lag per sample (s)", color="#9467bd")
    ax.set_title("clocks: UTC offset, clock offset, label lag")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    for ax in axes:
        ax.set_xticks(x, runs, rotation=30, ha="right")
    fig.suptitle(f"{nt}: data quality per run")
    save_png(fig, args.figure)

    header = ["run", "time base", "alignment", "VM samples", "rows kept", "match rate", "mean time diff (s)",
              "max time diff (s)", "guest UTC offset (s)", "guest clock offset (s)", "label lag (s)", "overlap (s)",
              "dropped", "warnings"]
    table = [
        [r["run"], r.get("time_base", "-"), r.get("alignment", "-"), r.get("vm_samples"), r.get("rows_kept"),
         r.get("match_rate"), r.get("time_diff_mean"), r.get("time_diff_max"), r.get("vm_utc_offset_seconds"),
         _clock_offset(r), (r.get("lag") or {}).get("lag_seconds"), r.get("overlap_seconds"),
         ", ".join(f"{k}={v}" for k, v in sorted((r.get("rows_dropped") or {}).items())) or "-",
         "; ".join(r.get("warnings") or []) or "-"]
        for r in rows
    ]
    body = [
        "<p>Per run: how many VM samples found host power (match rate), the time difference between a "
        "VM sample and the host readings it was paired with (with <code>kepler_interval</code> alignment: "
        "the uncertainty of Kepler's update times), the guest's UTC offset, the guest clock offset "
        "(configured <code>merge.vm_clock_offset_seconds</code> plus the offset estimated per run), how "
        "late the labels are against the per-sample features (cross-correlation), the rows or "
        "intervals dropped with their reasons, and the run's warnings (<code>merge.quality_warnings</code>: "
        "the seed's match-rate and time-difference indicators, repaired rows, dropped features).</p>",
        html_table(header, table, left=3),
    ]
    write_text(html_page(f"{nt}: data quality per run", body), args.table)
    return 0


# ---------------------------------------------------------------- models: held-out, residuals, metrics


def _best_per_output(best: dict) -> dict[str, dict]:
    """{output_type: {"feature_group", "trainer", "mae_mean"}}: the lowest mean MAE over feature groups."""
    out = {}
    for ot, by_fg in sorted(best.items()):
        fg, b = min(sorted(by_fg.items()), key=lambda kv: (kv[1]["mae_mean"], kv[0]))
        out[ot] = {"feature_group": fg, **b}
    return out


def _train_dir(path: str) -> tuple[str, str, str]:
    """(output_type, feature_group, trainer) from results/train/<nt>/<ot>/<fg>/<trainer>/<file>."""
    parts = Path(path).parts
    return parts[-4], parts[-3], parts[-2]


def _series(holdout, zone: str):
    """Held-out runs placed side by side: x positions, run boundaries and labels."""
    import numpy as np

    xs, bounds, labels, start = [], [], [], 0.0
    df = holdout.sort_values(["run_id", "t_rel"], kind="stable")
    for run, part in df.groupby("run_id", sort=True):
        t = part["t_rel"].to_numpy("float64")
        xs.append(t - t.min() + start)
        labels.append((start, str(run)))
        start = float(xs[-1].max()) + 30.0
        bounds.append(start - 15.0)
    x = np.concatenate(xs) if xs else np.array([])
    return df, x, bounds[:-1], labels


def cmd_models(args) -> int:
    import numpy as np

    nt = args.node_type
    summary = pd.read_csv(args.summary)
    summary = summary[summary["node_type"] == nt]
    best = json.loads(Path(args.best).read_text()).get(nt, {})
    chosen = _best_per_output(best)
    holdouts = {_train_dir(p): p for p in args.holdouts}
    plt = _pyplot()

    # predicted vs measured over time, and residuals, for each output type's best model
    data = {}
    for ot, b in chosen.items():
        p = holdouts.get((ot, b["feature_group"], b["trainer"]))
        if p:
            data[ot] = pd.read_parquet(p)
    zones = [z for z in ("package", "core", "dram", "uncore")
             if any(f"pred_{z}" in df.columns for df in data.values())]
    if not data or not zones:
        _message_figure(f"{nt}: no trained model, nothing to plot", args.heldout_figure)
        _message_figure(f"{nt}: no trained model, nothing to plot", args.residuals_figure)
    else:
        ots = sorted(data)
        fig, axes = plt.subplots(len(zones), len(ots), figsize=(7.5 * len(ots), 2.3 * len(zones) + 0.8),
                                 squeeze=False, constrained_layout=True)
        for j, ot in enumerate(ots):
            b = chosen[ot]
            df, x, bounds, labels = _series(data[ot], zones[0])
            for i, zone in enumerate(zones):
                ax = axes[i][j]
                if f"pred_{zone}" not in df.columns:
                    ax.axis("off")
                    continue
                ax.plot(x, df[f"power_{zone}"].to_numpy("float64"), lw=0.8, color="#222222", label="measured")
                ax.plot(x, df[f"pred_{zone}"].to_numpy("float64"), lw=0.8, color=ZONE_COLORS[zone],
                        label="predicted (held out)")
                for bx in bounds:
                    ax.axvline(bx, color="#999999", lw=0.6, ls="--")
                if i == 0:
                    for lx, run in labels:
                        ax.annotate(run, (lx, 1.0), xycoords=("data", "axes fraction"), va="bottom",
                                    fontsize=7, color="#555555")
                    ax.set_title(f"{ot}: {b['trainer']} / {b['feature_group']}\n", loc="left")
                ax.set_ylabel(f"{zone} (W)")
                ax.legend(loc="upper right", fontsize=7)
            axes[-1][j].set_xlabel("time within each held-out run (s); runs side by side")
        fig.suptitle(f"{nt}: predicted vs measured power on held-out runs (best model per output type)")
        save_png(fig, args.heldout_figure)

        fig, axes = plt.subplots(len(zones), 2 * len(ots), figsize=(5.0 * len(ots) * 1.5, 2.4 * len(zones) + 0.8),
                                 squeeze=False, constrained_layout=True,
                                 gridspec_kw={"width_ratios": [3, 1] * len(ots)})
        for j, ot in enumerate(ots):
            df = data[ot]
            b = chosen[ot]
            for i, zone in enumerate(zones):
                ax, hx = axes[i][2 * j], axes[i][2 * j + 1]
                if f"pred_{zone}" not in df.columns:
                    ax.axis("off")
                    hx.axis("off")
                    continue
                y = df[f"power_{zone}"].to_numpy("float64")
                res = df[f"pred_{zone}"].to_numpy("float64") - y
                ax.scatter(y, res, s=3, alpha=0.35, color=ZONE_COLORS[zone], linewidths=0, rasterized=False)
                ax.axhline(0.0, color="#222222", lw=0.8)
                ax.set_ylabel(f"{zone}: pred - meas (W)")
                mae = float(np.abs(res).mean()) if len(res) else float("nan")
                ax.text(0.01, 0.97, f"MAE {mae:.3f} W, bias {float(res.mean()):+.3f} W", transform=ax.transAxes,
                        va="top", fontsize=7)
                hx.hist(res, bins=40, orientation="horizontal", color=ZONE_COLORS[zone], alpha=0.8)
                hx.axhline(0.0, color="#222222", lw=0.8)
                hx.sharey(ax)
                if i == 0:
                    ax.set_title(f"{ot}: {b['trainer']} / {b['feature_group']}", loc="left")
                    hx.set_title("distribution")
            axes[-1][2 * j].set_xlabel("measured power (W)")
            axes[-1][2 * j + 1].set_xlabel("rows")
        fig.suptitle(f"{nt}: residuals on held-out rows (best model per output type)")
        save_png(fig, args.residuals_figure)

    # feature importance of the tree models (the feature group of each output type's best model)
    tree_models = {_train_dir(p): p for p in args.tree_models}
    panels = [(ot, tr, tree_models[(ot, chosen[ot]["feature_group"], tr)])
              for ot in sorted(chosen) for tr in TREE_TRAINERS
              if (ot, chosen[ot]["feature_group"], tr) in tree_models]
    if not panels:
        _message_figure(f"{nt}: no tree model (GradientBoostingRegressor, XGBRegressor) trained", args.importance_figure)
    else:
        import joblib

        cols = len({tr for _, tr, _ in panels})
        rows_n = len({ot for ot, _, _ in panels})
        fig, axes = plt.subplots(rows_n, cols, figsize=(7.0 * cols, 4.2 * rows_n), squeeze=False,
                                 constrained_layout=True)
        trainers = sorted({tr for _, tr, _ in panels}, key=TREE_TRAINERS.index)
        ots = sorted({ot for ot, _, _ in panels})
        for ax_row in axes:
            for ax in ax_row:
                ax.axis("off")
        for ot, tr, path in panels:
            ax = axes[ots.index(ot)][trainers.index(tr)]
            ax.axis("on")
            bundle = joblib.load(path)
            feats = list(bundle["features"])
            imp = np.zeros(len(feats))
            for zone in bundle["models"]:  # none when the trainer was skipped
                est = bundle["models"][zone].steps[-1][1]
                v = np.asarray(est.feature_importances_, dtype="float64")
                imp += v / v.sum() if v.sum() > 0 else v
            imp /= max(len(bundle["zones"]), 1)
            order = sorted(range(len(feats)), key=lambda k: (-imp[k], feats[k]))[:15][::-1]
            ax.barh([feats[k] for k in order], [imp[k] for k in order], color="#1f77b4")
            ax.set_title(f"{ot} / {chosen[ot]['feature_group']}: {tr}", loc="left")
            ax.set_xlabel("importance (mean over zones, normalised)")
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle(f"{nt}: feature importance of the tree models (top 15)")
        save_png(fig, args.importance_figure)

    # metrics of all trainers and feature groups
    cols = ["output_type", "feature_group", "trainer", "zone", "mae", "mape", "rmse", "r2", "heldout_rows",
            "n_features"]
    trained = summary[summary["status"] == "trained"].copy()
    for c in cols:
        if c not in trained:
            trained[c] = None
    trained = trained.sort_values(["output_type", "feature_group", "trainer", "zone"], kind="stable")
    body = ["<p>Held-out metrics (leave-one-run-out) of every trainer and feature group, per zone. MAE and "
            "RMSE in W, MAPE in % (rows above <code>train.mape_floor_watts</code>). Highlighted: the best "
            "trainer per output type and feature group (lowest mean MAE over zones).</p>"]
    best_keys = {(ot, fg, b["trainer"]) for ot, by_fg in best.items() for fg, b in by_fg.items()}
    for ot, part in trained.groupby("output_type", sort=True):
        body.append(f"<h2>{_esc(ot)}</h2>")
        mean = (part.groupby(["feature_group", "trainer"], sort=True)[["mae", "mape", "rmse", "r2"]].mean()
                .reset_index())
        body.append("<p>Mean over zones:</p>")
        body.append(html_table(
            ["feature group", "trainer", "MAE (W)", "MAPE (%)", "RMSE (W)", "R²"],
            [[r.feature_group, r.trainer, r.mae, r.mape, r.rmse, r.r2] for r in mean.itertuples()], left=2,
            row_classes=["best" if (ot, r.feature_group, r.trainer) in best_keys else "" for r in mean.itertuples()],
        ))
        body.append("<p>Per zone:</p>")
        body.append(html_table(
            ["feature group", "trainer", "zone", "MAE (W)", "MAPE (%)", "RMSE (W)", "R²", "held-out rows",
             "features"],
            [[r.feature_group, r.trainer, r.zone, r.mae, r.mape, r.rmse, r.r2,
              None if pd.isna(r.heldout_rows) else int(r.heldout_rows),
              None if pd.isna(r.n_features) else int(r.n_features)] for r in part.itertuples()],
            left=3,
            row_classes=["best" if (ot, r.feature_group, r.trainer) in best_keys else "" for r in part.itertuples()],
        ))
    failed = unusable_models(summary)
    if len(failed):
        body.append("<h2>Models not exported as ONNX (never selected)</h2>")
        body.append(html_table(["output type", "feature group", "trainer", "status", "reason"],
                               [[r.output_type, r.feature_group, r.trainer, r.status, r.reason]
                                for r in failed.itertuples()], left=5))
    write_text(html_page(f"{nt}: held-out metrics of all trainers and feature groups", body), args.metrics_table)
    return 0


# ---------------------------------------------------------------- provenance


def provenance_summary(node_type: str, run_files: list[str], records: list[str], locks: list[str],
                       image_lock: str | None) -> dict:
    from vmpower.ops.provenance import input_checksums

    runs: dict = {}
    for path, digest in input_checksums(run_files).items():
        run = Path(path).parent.name
        runs.setdefault(run, {})[Path(path).name] = digest
    digests: dict = {}
    envs: dict = {}
    for p in sorted(records):
        rec = json.loads(Path(p).read_text())
        env = rec.get("environment") or {}
        digest = env.get("image_digest", "?")
        digests[digest] = digests.get(digest, 0) + 1
        key = json.dumps({"python": env.get("python"), "packages": env.get("packages") or {}}, sort_keys=True)
        envs[key] = envs.get(key, 0) + 1
    images = {}
    if image_lock and Path(image_lock).exists():
        lock = json.loads(Path(image_lock).read_text())
        for name, entry in sorted((lock.get("images") or {}).items()):
            images[name] = {
                "name": entry.get("name"), "env_lock": entry.get("env_lock"),
                "manifest_digest": entry.get("manifest_digest"),
                **{eng: {"id": (entry.get(eng) or {}).get("id"),
                         "env_lock_sha256": (entry.get(eng) or {}).get("env_lock_sha256")}
                   for eng in ("docker", "podman") if entry.get(eng)},
            }
    return {
        "node_type": node_type,
        "runs": runs,
        "job_image_digests": digests,
        "job_environments": [{**json.loads(k), "jobs": n} for k, n in sorted(envs.items())],
        "locks": input_checksums(locks),
        "image_lock": input_checksums([image_lock])[Path(image_lock).as_posix()] if image_lock and Path(image_lock).exists() else None,
        "locked_images": images,
    }


def cmd_provenance(args) -> int:
    data = provenance_summary(args.node_type, args.inputs, args.records, args.locks, args.image_lock)
    from vmpower.io import write_json

    write_json(data, args.json)
    nt = args.node_type
    body = ["<h2>Images the jobs ran in</h2>",
            "<p>The image digest each job of this node_type recorded (<code>local</code>: the venv of "
            "<code>envs/dev.lock</code>, runtime=local).</p>",
            html_table(["image digest", "jobs"], [[d, n] for d, n in sorted(data["job_image_digests"].items())])]
    for env in data["job_environments"]:
        body.append(f"<p>Python {_esc(env.get('python'))}, {env['jobs']} jobs:</p>")
        body.append(html_table(["package", "version"], sorted((env.get("packages") or {}).items()), left=2))
    body.append("<h2>Locked images</h2>")
    rows = []
    for image, entry in data["locked_images"].items():
        for eng in ("docker", "podman"):
            if eng in entry:
                rows.append([image, eng, entry[eng]["id"], entry.get("env_lock"), entry[eng]["env_lock_sha256"]])
        if entry.get("manifest_digest"):
            rows.append([image, "registry", entry["manifest_digest"], entry.get("env_lock"), "-"])
    body.append(html_table(["image", "engine", "image ID / digest", "env lock", "env lock sha256"], rows, left=5)
                if rows else "<p>(no image lock)</p>")
    body.append("<h2>Lock files</h2>")
    locks = dict(data["locks"])
    if args.image_lock and data["image_lock"]:
        locks[Path(args.image_lock).as_posix()] = data["image_lock"]
    body.append(html_table(["file", "sha256"], sorted(locks.items()), left=2))
    body.append("<h2>Input runs</h2>")
    body.append(html_table(["run", "file", "sha256"],
                           [[run, f, d] for run, files in sorted(data["runs"].items()) for f, d in sorted(files.items())],
                           left=3))
    write_text(html_page(f"{nt}: provenance", body), args.html)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the markdown build report")
    p.add_argument("--summary", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--datasets", nargs="*", default=[])
    p.add_argument("--isolation", nargs="*", default=[])
    p.add_argument("--layout-problems", nargs="*", default=[], help="one line per broken run (not built)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_report)

    r = sub.add_parser("report-quality", help="data quality per run of a node_type: figure and table")
    r.add_argument("--node-type", required=True)
    r.add_argument("--quality", nargs="+", required=True, help="the runs' .quality.json files")
    r.add_argument("--figure", required=True, help="PNG")
    r.add_argument("--table", required=True, help="HTML")
    r.set_defaults(func=cmd_quality)

    m = sub.add_parser("report-models", help="held-out predictions, residuals, feature importance, metrics of a node_type")
    m.add_argument("--node-type", required=True)
    m.add_argument("--summary", required=True)
    m.add_argument("--best", required=True)
    m.add_argument("--holdouts", nargs="*", default=[], help="results/train/<nt>/<ot>/<fg>/<trainer>/holdout.parquet")
    m.add_argument("--tree-models", nargs="*", default=[], help="model.joblib of the tree trainers")
    m.add_argument("--heldout-figure", required=True)
    m.add_argument("--residuals-figure", required=True)
    m.add_argument("--importance-figure", required=True)
    m.add_argument("--metrics-table", required=True)
    m.set_defaults(func=cmd_models)

    v = sub.add_parser("report-provenance", help="image digests, lock hashes and input checksums of a node_type")
    v.add_argument("--node-type", required=True)
    v.add_argument("--inputs", nargs="*", default=[], help="the node_type's raw files")
    v.add_argument("--records", nargs="*", default=[], help="the node_type's job provenance records")
    v.add_argument("--locks", nargs="*", default=[], help="environment lock files")
    v.add_argument("--image-lock", default=None, help="containers/images.lock.json")
    v.add_argument("--json", required=True)
    v.add_argument("--html", required=True)
    v.set_defaults(func=cmd_provenance)

    q = sub.add_parser("report-paths", help="print where the models, metrics and report are")
    q.add_argument("--config", default="config.yaml")
    q.set_defaults(func=cmd_paths)
