"""``vmpower report-models``: held-out predictions, residuals, feature importance and the metrics
of every trainer and feature group of a node_type."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vmpower.io import write_text
from vmpower.names import TREE_TRAINERS, ZONES, power_column
from vmpower.pipeline.report.html import ZONE_COLORS, esc, html_page, html_table, message_figure, pyplot, save_png
from vmpower.pipeline.report.markdown import unusable_models
from vmpower.pipeline.selection import best_per_output


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


def heldout_data(chosen: dict, holdout_files: list[str]) -> dict:
    """{output_type: held-out rows} of each output type's best model."""
    holdouts = {_train_dir(p): p for p in holdout_files}
    data = {}
    for ot, b in chosen.items():
        p = holdouts.get((ot, b["feature_group"], b["trainer"]))
        if p:
            data[ot] = pd.read_parquet(p)
    return data


def plot_heldout(nt: str, chosen: dict, data: dict, zones: list[str], path) -> None:
    """Predicted vs measured over time, per zone and output type."""
    plt = pyplot()
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
            ax.plot(x, df[power_column(zone)].to_numpy("float64"), lw=0.8, color="#222222", label="measured")
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
    save_png(fig, path)

def plot_residuals(nt: str, chosen: dict, data: dict, zones: list[str], path) -> None:
    """Residuals against measured power, with their distribution, per zone and output type."""
    import numpy as np

    plt = pyplot()
    ots = sorted(data)
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
            y = df[power_column(zone)].to_numpy("float64")
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
    save_png(fig, path)

def _importance(path: str):
    """(features, importance per feature: mean over zones of each tree model's normalised importances)."""
    import joblib
    import numpy as np

    bundle = joblib.load(path)
    feats = list(bundle["features"])
    imp = np.zeros(len(feats))
    for zone in bundle["models"]:  # none when the trainer was skipped
        est = bundle["models"][zone].steps[-1][1]
        v = np.asarray(est.feature_importances_, dtype="float64")
        imp += v / v.sum() if v.sum() > 0 else v
    imp /= max(len(bundle["zones"]), 1)
    return feats, imp


def plot_importance(nt: str, chosen: dict, tree_model_files: list[str], path) -> None:
    """Feature importance of the tree models (the feature group of each output type's best model)."""
    tree_models = {_train_dir(p): p for p in tree_model_files}
    panels = [(ot, tr, tree_models[(ot, chosen[ot]["feature_group"], tr)])
              for ot in sorted(chosen) for tr in sorted(TREE_TRAINERS)
              if (ot, chosen[ot]["feature_group"], tr) in tree_models]
    if not panels:
        message_figure(f"{nt}: no tree model (GradientBoostingRegressor, XGBRegressor) trained", path)
        return
    plt = pyplot()
    cols = len({tr for _, tr, _ in panels})
    rows_n = len({ot for ot, _, _ in panels})
    fig, axes = plt.subplots(rows_n, cols, figsize=(7.0 * cols, 4.2 * rows_n), squeeze=False,
                             constrained_layout=True)
    trainers = sorted({tr for _, tr, _ in panels})
    ots = sorted({ot for ot, _, _ in panels})
    for ax_row in axes:
        for ax in ax_row:
            ax.axis("off")
    for ot, tr, model_path in panels:
        ax = axes[ots.index(ot)][trainers.index(tr)]
        ax.axis("on")
        feats, imp = _importance(model_path)
        order = sorted(range(len(feats)), key=lambda k: (-imp[k], feats[k]))[:15][::-1]
        ax.barh([feats[k] for k in order], [imp[k] for k in order], color="#1f77b4")
        ax.set_title(f"{ot} / {chosen[ot]['feature_group']}: {tr}", loc="left")
        ax.set_xlabel("importance (mean over zones, normalised)")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{nt}: feature importance of the tree models (top 15)")
    save_png(fig, path)


def _metrics_body(summary, best: dict) -> list[str]:
    """The metrics page's body: per output type, the mean over zones and the per-zone rows."""
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
        body.append(f"<h2>{esc(ot)}</h2>")
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
    return body


def metrics_table(nt: str, summary, best: dict, path) -> None:
    """The held-out metrics of every trainer and feature group (HTML), best ones highlighted."""
    write_text(html_page(f"{nt}: held-out metrics of all trainers and feature groups", _metrics_body(summary, best)), path)


def cmd_models(args) -> int:
    nt = args.node_type
    summary = pd.read_csv(args.summary)
    summary = summary[summary["node_type"] == nt]
    best = json.loads(Path(args.best).read_text()).get(nt, {})
    chosen = best_per_output(best)
    data = heldout_data(chosen, args.holdouts)
    zones = [z for z in ZONES if any(f"pred_{z}" in df.columns for df in data.values())]
    if not data or not zones:
        message_figure(f"{nt}: no trained model, nothing to plot", args.heldout_figure)
        message_figure(f"{nt}: no trained model, nothing to plot", args.residuals_figure)
    else:
        plot_heldout(nt, chosen, data, zones, args.heldout_figure)
        plot_residuals(nt, chosen, data, zones, args.residuals_figure)
    plot_importance(nt, chosen, args.tree_models, args.importance_figure)
    metrics_table(nt, summary, best, args.metrics_table)
    return 0
