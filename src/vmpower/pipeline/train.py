"""Train one trainer on one (node_type, output type, feature group): one model per zone.

Evaluation is honest: held-out rows come from whole runs (leave-one-run-out, grouped into at
most ``max_folds`` folds) or, with a single run, from the last ``holdout_fraction`` of it. The
scaler is part of each pipeline, so it is fitted on training rows only. The exported model is
then refitted on all rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json

import numpy as np
import pandas as pd

from vmpower import settings as settings_mod
from vmpower.errors import InputError
from vmpower.io import atomic_path, write_json, write_parquet
from vmpower.names import META_COLUMNS, POWER_PREFIX, power_column, zone_of
from vmpower.pipeline.trainers import TRAINERS, fit_notes, fit_pipeline


@dataclasses.dataclass(frozen=True)
class TrainSettings(settings_mod.Section):
    """config.yaml's train section (the keys a train job reads; defaults in the schema)."""

    seed: int
    max_folds: int
    holdout_fraction: float
    mape_floor_watts: float
    max_train_rows: int
    max_missing_feature_fraction: float
    min_rows: int
    params: dict
    search: dict
    search_folds: int
    search_max_rows: int

    def params_of(self, trainer: str) -> dict:
        return dict(self.params.get(trainer, {}))

    def grid_of(self, trainer: str) -> dict:
        return dict(self.search.get(trainer, {}))



# ---------------------------------------------------------------- features


def candidate_features(df: pd.DataFrame) -> list[str]:
    return [
        c
        for c in df.columns
        if c not in META_COLUMNS and not c.startswith(POWER_PREFIX) and pd.api.types.is_float_dtype(df[c].dtype)
    ]


def group_matches(name: str, patterns: list[str]) -> bool:
    """Whether a column belongs to a feature group: it (or, for an engineered column such as
    ``<base>_mean<w>s`` or ``<base>_hinge<k>``, its base feature) matches an entry, and no
    ``!pattern`` entry excludes it."""
    from vmpower.pipeline.engineer import base_feature

    names = [name]
    base = base_feature(name)
    if base:
        names.append(base)
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    if any(fnmatch.fnmatchcase(n, p) for n in names for p in exclude):
        return False
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in include)


def select_features(df: pd.DataFrame, patterns: list[str], max_missing: float) -> tuple[list[str], pd.Series, dict]:
    """Resolve a feature group against the data. Returns (features, usable-row mask, report).

    Features missing in more than ``max_missing`` of the rows are dropped; rows missing any
    remaining feature are left out; features constant over the usable rows carry no signal
    (e.g. perf counters that read 0 all run) and are dropped too."""
    cands = candidate_features(df)
    chosen = [c for c in cands if group_matches(c, patterns)]
    report: dict = {"requested": list(patterns), "dropped": {}}
    missing_frac = df[chosen].isna().mean()
    too_sparse = [c for c in chosen if missing_frac[c] > max_missing]
    for c in too_sparse:
        report["dropped"][c] = f"missing in {missing_frac[c]:.0%} of rows"
    chosen = [c for c in chosen if c not in too_sparse]
    usable = df[chosen].notna().all(axis=1) if chosen else pd.Series(True, index=df.index)
    if chosen:
        block = df.loc[usable, chosen]
        constant = [c for c in chosen if block[c].nunique(dropna=True) <= 1]
        for c in constant:
            report["dropped"][c] = "constant in the training data"
        chosen = [c for c in chosen if c not in constant]
    dropped_rows = df.loc[~usable, "run_id"].value_counts().sort_index()
    report["rows_without_features"] = {str(k): int(v) for k, v in dropped_rows.items()}
    return chosen, usable, report


# ---------------------------------------------------------------- evaluation


def holdout_folds(df: pd.DataFrame, max_folds: int, holdout_fraction: float) -> tuple[np.ndarray, dict]:
    """Fold number per row (-1 = never held out). Whole runs are held out when there are
    at least two; a single run holds out its last ``holdout_fraction`` by time."""
    runs = sorted(df["run_id"].unique())
    if len(runs) >= 2:
        k = min(len(runs), max(int(max_folds), 2))
        fold_of_run = {r: i % k for i, r in enumerate(runs)}
        folds = df["run_id"].map(fold_of_run).to_numpy("int64")
        scheme = {
            "scheme": "leave-one-run-out" if k == len(runs) else f"grouped-by-run {k}-fold",
            "folds": [[r for r in runs if fold_of_run[r] == i] for i in range(k)],
        }
        return folds, scheme
    rank = df.groupby("run_id")["time"].rank(pct=True, method="first").to_numpy()
    folds = np.where(rank > 1.0 - holdout_fraction, 0, -1)
    return folds, {"scheme": f"last {holdout_fraction:.0%} of each run", "folds": [runs]}


def even_subsample(n: int, limit: int) -> np.ndarray:
    """Evenly spaced rows (deterministic, keeps every part of every run represented)."""
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype("int64"))


def zone_metrics(y: np.ndarray, pred: np.ndarray, mape_floor: float) -> dict:
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    above = y > mape_floor
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mape": float((np.abs(err[above]) / y[above]).mean() * 100) if above.any() else None,
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else None,
        "rows": int(len(y)),
        "mape_rows": int(above.sum()),
    }


def training_data(rows: pd.DataFrame, features: list[str], rows_train: int, source: str) -> dict:
    """What an exporter reports about a model's training data (kepler_vm_training_data_points_total,
    kepler_vm_last_training_timestamp, kepler_vm_model_confidence_score): the training rows, the
    newest sample's time and each feature's [min, max] over ``rows``."""
    X = rows[features].to_numpy("float64")
    lo, hi = X.min(axis=0), X.max(axis=0)
    return {
        "rows": int(rows_train),
        "ranges_from": source,
        "ranges_rows": int(len(rows)),
        # On the clock the merge aligned on: epoch when both collectors wrote epoch times.
        "last_sample_time": float(rows["time"].max()),
        "feature_ranges": {f: {"min": float(a), "max": float(b)} for f, a, b in zip(features, lo, hi)},
    }


def param_grid(base: dict, grid: dict) -> list[dict]:
    """base params overlaid with every combination of the grid (sorted keys, config order)."""
    import itertools

    keys = sorted(grid)
    combos = itertools.product(*(list(grid[k]) for k in keys)) if keys else [()]
    return [{**base, **dict(zip(keys, c))} for c in combos]


def inner_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, scoring rows) of the search's inner folds: run-grouped, or with one run its
    last 20 % by time (rows are time-ordered within a run). Folds that would leave either side
    empty (too few rows) are not formed."""
    n = len(groups)
    runs = np.unique(groups)
    if len(runs) >= 2:
        k = min(len(runs), max(int(n_folds), 2))
        fold_of_row = np.searchsorted(runs, groups) % k
    else:
        k, fold_of_row = 1, np.where(np.arange(n) >= 0.8 * n, 0, -1)
    out = [(np.flatnonzero(fold_of_row != f), np.flatnonzero(fold_of_row == f)) for f in range(k)]
    return [(tr, te) for tr, te in out if len(tr) and len(te)]


def search_params(trainer, candidates, seed, X, y, groups, n_folds, max_rows) -> tuple[dict, list]:
    """Pick the candidate with the lowest mean MAE over run-grouped inner folds of (X, y) (the
    rows of one training split only; at most ``max_rows`` evenly spaced rows to fit and to score
    per inner fold). Ties go to the earlier candidate; with no inner fold to score on (too few
    rows), the first candidate. Returns (params, scores)."""
    folds = inner_folds(groups, n_folds)
    if len(candidates) == 1 or not folds:
        return candidates[0], []
    scores = []
    for params in candidates:
        errs = []
        for tr, te in folds:
            tr = tr[even_subsample(len(tr), max_rows)]
            # Scoring rows are capped like training rows: the search only ranks candidates, and
            # predicting every inner held-out row dominates for KNN on large data sets.
            te = te[even_subsample(len(te), max_rows)]
            model, _ = fit_pipeline(trainer, params, seed, X[tr], y[tr])
            errs.append(float(np.abs(model.predict(X[te]) - y[te]).mean()))
        scores.append(float(np.mean(errs)))
    return candidates[int(np.argmin(scores))], scores


def fit_zone(trainer, params, seed, X, y, folds, max_rows, groups=None, grid=None, search_folds=3, search_rows=0):
    """Cross-validated predictions on held-out rows, then the final model on all rows.

    With a grid, the parameters are searched inside each training split only (run-grouped
    inner folds over the training runs: held-out runs are never seen), and again over all rows
    for the final model. Parameters adapt to the rows of each fit (trainers.adapt_params).
    Returns (final model, predictions, search report)."""
    candidates = param_grid(params, grid or {})
    groups = np.zeros(len(y), dtype="int64") if groups is None else groups
    search_rows = int(search_rows) or int(max_rows)
    pred = np.full(len(y), np.nan)
    chosen_per_fold = []
    for f in np.unique(folds[folds >= 0]):
        test = folds == f
        train_idx = np.flatnonzero(~test)
        if len(train_idx) == 0:
            continue
        best, _ = search_params(trainer, candidates, seed, X[train_idx], y[train_idx], groups[train_idx],
                                search_folds, search_rows)
        chosen_per_fold.append({k: best[k] for k in sorted(grid or {})})
        train_idx = train_idx[even_subsample(len(train_idx), max_rows)]
        model, _ = fit_pipeline(trainer, best, seed, X[train_idx], y[train_idx])
        pred[test] = model.predict(X[test])
    best, scores = search_params(trainer, candidates, seed, X, y, groups, search_folds, search_rows)
    final_idx = even_subsample(len(y), max_rows)
    final, adapted = fit_pipeline(trainer, best, seed, X[final_idx], y[final_idx])
    search = {"params": best, "per_fold": chosen_per_fold, "adapted": adapted, "fit": fit_notes(final),
              "final_scores": [{"params": {k: c[k] for k in sorted(grid or {})}, "mae": sc} for c, sc in zip(candidates, scores)]}
    return final, pred, search


def power_zones(df: pd.DataFrame) -> list[str]:
    """The zones of a data set's power columns, in column order."""
    return [z for z in map(zone_of, df.columns) if z is not None]


def fit_zones(trainer, data, features, folds, settings: TrainSettings) -> tuple[dict, dict, dict, dict]:
    """fit_zone for every power_<zone> column. Returns (models, metrics, search per zone,
    held-out labels and predictions per zone)."""
    X = data[features].to_numpy("float64")
    params, grid = settings.params_of(trainer), settings.grid_of(trainer)
    groups = pd.factorize(data["run_id"], sort=True)[0].astype("int64")
    held = folds >= 0
    models, metrics, searched, columns = {}, {}, {}, {}
    for zone in power_zones(data):
        y = data[power_column(zone)].to_numpy("float64")
        models[zone], pred, searched[zone] = fit_zone(
            trainer, params, settings.seed, X, y, folds, settings.max_train_rows, groups=groups,
            grid=grid, search_folds=settings.search_folds, search_rows=settings.search_max_rows,
        )
        metrics[zone] = zone_metrics(y[held], pred[held], settings.mape_floor_watts)
        columns[power_column(zone)], columns[f"pred_{zone}"] = y[held], pred[held]
    return models, metrics, searched, columns


def _search_report(settings: TrainSettings, trainer: str, searched: dict) -> dict:
    """The training report's search part: the grid, the choice per zone, what the fits changed."""
    grid = settings.grid_of(trainer)
    return {
        "search": {"grid": grid, "inner_folds": settings.search_folds,
                   "scheme": "inside each training split: run-grouped inner folds over its training runs",
                   "chosen": {z: v["params"] for z, v in searched.items()},
                   "per_zone": searched} if grid else None,
        "chosen_params": {z: v["params"] for z, v in searched.items()},
        # Parameters the final model could not take on this data ({zone: {param: [asked, used]}}).
        "adapted_params": {z: v["adapted"] for z, v in searched.items() if v["adapted"]},
        # What the final fit did to its rows (KNN: identical vectors averaged into one point).
        "final_fit": {z: v["fit"] for z, v in searched.items() if v["fit"]},
    }


def train(df: pd.DataFrame, trainer: str, patterns: list[str], settings: TrainSettings, engineering: dict,
          path: str) -> tuple[dict, dict, pd.DataFrame]:
    """One trainer on one data set, all zones: (models per zone, training report, held-out rows
    with predictions). ``engineering``: the features section's engineering keys (train_settings
    in rules/common.smk), described in the report."""
    zones = power_zones(df)
    if not zones:
        raise InputError(path, "no power_<zone> columns")
    features, usable, feat_report = select_features(df, patterns, settings.max_missing_feature_fraction)
    data = df.loc[usable].reset_index(drop=True)
    base = {"features": features, "feature_report": feat_report, "zones": zones}
    if not features or len(data) < settings.min_rows:
        reason = "no usable feature" if not features else f"too few rows ({len(data)}, train.min_rows {settings.min_rows})"
        return {}, {**base, "status": "skipped", "reason": reason}, pd.DataFrame()
    folds, scheme = holdout_folds(data, settings.max_folds, settings.holdout_fraction)
    try:
        models, metrics, searched, columns = fit_zones(trainer, data, features, folds, settings)
    except ValueError as exc:  # what an estimator raises for data it cannot fit: this trainer only
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {}, {**base, "status": "train_failed", "reason": reason[:300]}, pd.DataFrame()
    held = folds >= 0
    holdout = data.loc[held, ["run_id", "time", "t_rel", "stress_workload", *features]].reset_index(drop=True)
    holdout = pd.concat([holdout, pd.DataFrame(columns)], axis=1)
    from vmpower.pipeline import engineer

    report = {
        **base,
        "feature_engineering": engineer.describe(features, engineer.settings_from(engineering)),
        "status": "trained",
        "trainer": trainer,
        "params": settings.params_of(trainer),
        **_search_report(settings, trainer, searched),
        "seed": settings.seed,
        "evaluation": scheme,
        "rows_train": int(len(data)),
        "rows_heldout": int(held.sum()),
        # Export copies this into metadata.json; computed here, where the training rows are.
        "training_data": training_data(data, features, len(data), "training rows"),
        "runs": sorted(data["run_id"].unique()),
        "metrics": metrics,
        "mae_mean": float(np.mean([m["mae"] for m in metrics.values()])),
    }
    return models, report, holdout


def cmd_train(args) -> int:
    import joblib

    mapping = json.loads(args.settings)
    settings = TrainSettings.build(mapping, "--settings")
    df = pd.read_parquet(args.dataset)
    models, report, holdout = train(df, args.trainer, list(mapping["patterns"]), settings,
                                    mapping.get("engineering") or {}, args.dataset)
    report.update({"node_type": args.node_type, "output_type": args.output_type, "feature_group": args.feature_group})
    with atomic_path(args.model) as tmp:
        joblib.dump({"features": report["features"], "zones": report["zones"], "models": models}, tmp, compress=3)
    write_parquet(holdout, args.holdout)
    write_json(report, args.metrics)
    if report["status"] == "trained":
        maes = ", ".join(f"{z} {m['mae']:.3f} W" for z, m in report["metrics"].items())
        print(f"{args.trainer} {args.node_type}/{args.output_type}/{args.feature_group}: held-out MAE {maes}")
    else:
        print(f"{args.trainer} {args.node_type}/{args.output_type}/{args.feature_group}: {report['status']} ({report['reason']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one trainer for all zones of a node_type/output type/feature group")
    p.add_argument("--dataset", required=True, help="isolated dataset (AbsPower or DynPower parquet)")
    p.add_argument("--node-type", required=True)
    p.add_argument("--output-type", required=True)
    p.add_argument("--feature-group", required=True)
    p.add_argument("--trainer", required=True, choices=sorted(TRAINERS))
    p.add_argument("--model", required=True, help="native model output (joblib)")
    p.add_argument("--metrics", required=True, help="metrics + training report (JSON)")
    p.add_argument("--holdout", required=True, help="held-out rows with predictions (parquet)")
    p.add_argument("--settings", required=True, help="JSON: train config plus the group's feature patterns")
    p.set_defaults(func=cmd_train)

