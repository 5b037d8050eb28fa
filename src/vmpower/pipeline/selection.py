"""The best model per node_type x output type x feature group: the one rule that picks it, the
files that record it, and their readers.

The best model of a slot is the trained model (status trained: not skipped, not failed, not
onnx_mismatch) with the lowest mean held-out MAE over its zones; a tie goes to the lower model
name (the same as the lower trainer name: a slot has one node_type). ``vmpower select`` writes
it per node_type (summary.csv with a ``best`` column, best.json), ``vmpower summary`` joins the
node_types. Readers: read_best (best.json: serving, report), best_zone_metrics (summary.csv's
best rows per zone: the gate), pick_best (from the models' metadata when there is no best.json).

Standard library at import (pandas only inside the writers): the gate reads summary.csv in a
plain Python outside any image.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from vmpower.errors import InputError
from vmpower.io import atomic_path, write_json
from vmpower.names import model_name

KEYS = ["node_type", "output_type", "feature_group"]
SUMMARY_COLUMNS = ["node_type", "output_type", "feature_group", "trainer", "zone", "status", "mae", "mape", "rmse",
                   "r2", "heldout_rows", "n_features", "onnx_max_abs_diff", "reason", "archive"]
# Statuses of a model that can serve ("trained" as exported; "ok" in older summaries).
USABLE_STATUSES = ("trained", "ok")


# ---------------------------------------------------------------- writing: summary.csv, best.json


def _zone_row(base: dict, meta: dict, zone: str, m: dict) -> dict:
    return {**base, "zone": zone, "mae": m["mae"], "mape": m["mape"], "rmse": m["rmse"], "r2": m["r2"],
            "heldout_rows": m["rows"], "n_features": len(meta["features"]),
            "onnx_max_abs_diff": meta["onnx"][zone]["max_abs_diff_watts"]}


def summary_rows(model_dirs: list[str]):
    """One row per model and zone (held-out metrics, ONNX check); a model that was not trained
    has one row with its status. ``reason`` says why a model is not usable (status != trained)."""
    import pandas as pd

    rows = []
    for d in model_dirs:
        meta = json.loads((Path(d) / "metadata.json").read_text())
        base = {k: meta[k] for k in KEYS}
        base["trainer"] = meta["trainer"].removesuffix("Trainer")
        base["archive"] = Path(d).as_posix() + ".zip"
        base["status"] = meta["status"]
        base["reason"] = meta.get("reason")
        if not meta.get("metrics"):
            rows.append({**base, "zone": None})
            continue
        rows += [_zone_row(base, meta, zone, m) for zone, m in meta["metrics"].items()]
    df = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    return df.sort_values(KEYS + ["trainer", "zone"], na_position="first").reset_index(drop=True)


def best_models(df):
    """Best trainer per node_type x output type x feature group of summary rows (the rule above)."""
    trained = df[df["status"] == "trained"]
    means = trained.groupby(KEYS + ["trainer"], as_index=False)["mae"].mean()
    means = means.sort_values(KEYS + ["mae", "trainer"])
    return means.groupby(KEYS, as_index=False).first().rename(columns={"mae": "mae_mean"})


def best_json(best) -> dict:
    """best.json's {node_type: {output_type: {feature_group: entry}}} from best_models' rows
    (with their archive)."""
    out: dict = {}
    for row in best.itertuples(index=False):
        out.setdefault(row.node_type, {}).setdefault(row.output_type, {})[row.feature_group] = {
            "trainer": row.trainer,
            "model_name": model_name(row.trainer, row.node_type),
            "mae_mean": row.mae_mean,
            "archive": row.archive,
        }
    return out


def select(model_dirs: list[str], summary_path: str, best_path: str) -> tuple[int, int]:
    """summary.csv (every model's rows, ``best`` marked) and best.json of the exported models.
    Returns (best models, node_types)."""
    df = summary_rows(model_dirs)
    best = best_models(df)
    key = KEYS + ["trainer"]
    archives = df.pop("archive")
    best = best.merge(df.assign(archive=archives)[key + ["archive"]].drop_duplicates(), on=key, how="left")
    df = df.merge(best[key].assign(best=True), on=key, how="left")
    df["best"] = df["best"].fillna(False).astype(bool)
    with atomic_path(summary_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    write_json(best_json(best), best_path)
    return len(best), df["node_type"].nunique()


def join(summaries: list[str], bests: list[str], summary_out: str, best_out: str) -> int:
    """The per-node_type selections as one summary.csv and best.json; returns the node_types."""
    import pandas as pd

    parts = [pd.read_csv(p) for p in sorted(summaries)]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    best: dict = {}
    for p in sorted(bests):
        for nt, models in json.loads(Path(p).read_text()).items():
            if nt in best:
                raise InputError(p, f"node_type {nt} is in more than one selection")
            best[nt] = models
    with atomic_path(summary_out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    write_json(dict(sorted(best.items())), best_out)
    return len(best)


# ---------------------------------------------------------------- reading


def read_best(path: str | Path, limits=None) -> dict:
    """best.json's {node_type: {output_type: {feature_group: {"trainer", "model_name",
    "mae_mean", "archive"}}}}, bounded (vmpower.jsonguard); any problem is one line naming it."""
    from vmpower import jsonguard

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read best models ({exc})") from None
    best = jsonguard.read_json(path, data, limits, "best models")
    if not isinstance(best, dict):
        raise InputError(path, "cannot read best models (not a JSON object)")
    return best


def pick_best(models) -> dict:
    """best.json's table derived from exported models' metadata, for a directory without
    best.json: ``models`` are (path, metadata) pairs; entries carry their ``path``. Models
    without a usable status or an MAE are left out."""
    best: dict = {}
    for path, meta in models:
        if meta.get("status") is None or meta.get("status") not in USABLE_STATUSES or meta.get("mae") is None:
            continue
        entry = {"trainer": str(meta.get("trainer", "")).removesuffix("Trainer"), "model_name": meta.get("model_name"),
                 "mae_mean": float(meta["mae"]), "path": str(path)}
        slot = best.setdefault(meta["node_type"], {}).setdefault(meta["output_type"], {})
        old = slot.get(meta["feature_group"])
        if old is None or (entry["mae_mean"], entry["model_name"]) < (old["mae_mean"], old["model_name"]):
            slot[meta["feature_group"]] = entry
    return best


def best_per_output(best_of_node_type: dict) -> dict[str, dict]:
    """{output_type: {"feature_group", "trainer", "mae_mean", ...}} of one node_type's best.json
    entry: the lowest mean MAE over feature groups (ties to the group name)."""
    out = {}
    for ot, by_fg in sorted(best_of_node_type.items()):
        fg, b = min(sorted(by_fg.items()), key=lambda kv: (kv[1]["mae_mean"], kv[0]))
        out[ot] = {"feature_group": fg, **b}
    return out


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def best_zone_metrics(summary_path: str | Path, metrics=("mae", "mape")) -> dict:
    """{node_type: {output_type: {feature_group: {"trainer", "zones": {zone: {metric: value}}}}}}
    from summary.csv's best rows (plain csv: no pandas)."""
    path = Path(summary_path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as err:
        raise InputError(path, "missing: build the models first (snakemake / make ci-models)") from err
    need = {*KEYS, "trainer", "zone", "status", "best", *metrics}
    if rows and not need <= set(rows[0]):
        raise InputError(path, f"not a vmpower summary (needs columns {', '.join(sorted(need))})")
    out: dict = {}
    for row in rows:
        if row["status"] != "trained" or row["best"].strip().lower() != "true" or not row["zone"]:
            continue
        model = out.setdefault(row["node_type"], {}).setdefault(row["output_type"], {}).setdefault(
            row["feature_group"], {"trainer": row["trainer"], "zones": {}}
        )
        model["zones"][row["zone"]] = {m: _float(row[m]) for m in metrics}
    return out


# ---------------------------------------------------------------- commands


def cmd_select(args) -> int:
    n_best, n_types = select(list(args.models), args.summary, args.best)
    print(f"{n_best} best models over {n_types} node types -> {args.best}")
    return 0


def cmd_summary(args) -> int:
    """The per-node_type selections (export_select) as one summary.csv and best.json."""
    n = join(list(args.summaries), list(args.best), args.summary_output, args.best_output)
    print(f"summary of {n} node types -> {args.summary_output}, {args.best_output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("summary", help="join the per-node_type selections into summary.csv and best.json")
    m.add_argument("--summaries", nargs="+", required=True, help="<node_type>.summary.csv files")
    m.add_argument("--best", nargs="+", required=True, help="<node_type>.best.json files")
    m.add_argument("--summary-output", required=True)
    m.add_argument("--best-output", required=True)
    m.set_defaults(func=cmd_summary)

    s = sub.add_parser("select", help="pick the best model per node_type/output type/feature group; write the summary")
    s.add_argument("--models", nargs="+", required=True, help="exported model directories")
    s.add_argument("--summary", required=True, help="summary.csv of all metrics")
    s.add_argument("--best", required=True, help="best.json")
    s.set_defaults(func=cmd_select)
