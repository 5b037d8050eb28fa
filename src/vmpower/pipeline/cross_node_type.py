"""How a model trained on one node_type does on the others (``vmpower train-cross``,
results/cross_node_type.csv)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from vmpower.io import atomic_path
from vmpower.names import power_column


def cross_node_type(models: dict[str, str], metrics: dict[str, str], datasets: dict[str, str]) -> pd.DataFrame:
    """MAE of each node_type's model on every node_type's data. The diagonal is the model's own
    held-out (leave-one-run-out) MAE; off the diagonal every row of the other node_type is unseen.
    ``ratio`` = MAE / the evaluated node_type's own held-out MAE (1 = as good as its own model)."""
    import joblib

    own = {}
    for nt, path in metrics.items():
        rep = json.loads(open(path).read())
        own[nt] = {z: m["mae"] for z, m in rep.get("metrics", {}).items()}
    rows = []
    for src in sorted(models):
        bundle = joblib.load(models[src])
        feats = bundle["features"]
        for dst in sorted(datasets):
            df = pd.read_parquet(datasets[dst])
            missing = [f for f in feats if f not in df.columns]
            for zone in bundle["zones"]:
                row = {"trained_on": src, "evaluated_on": dst, "zone": zone}
                if src == dst:
                    row.update({"mae": own[src].get(zone), "rows": None, "kind": "held-out runs"})
                elif zone not in bundle["models"]:  # skipped or failed in training (its metrics say why)
                    row.update({"mae": None, "rows": 0, "kind": "not trained"})
                elif missing or power_column(zone) not in df.columns:
                    row.update({"mae": None, "rows": 0,
                                "kind": f"missing {', '.join(missing[:3]) or 'zone'}"})
                else:
                    ok = df[feats].notna().all(axis=1) & df[power_column(zone)].notna()
                    X = df.loc[ok, feats].to_numpy("float64")
                    y = df.loc[ok, power_column(zone)].to_numpy("float64")
                    pred = bundle["models"][zone].predict(X)
                    row.update({"mae": float(np.abs(pred - y).mean()), "rows": int(ok.sum()), "kind": "all rows"})
                base = own.get(dst, {}).get(zone)
                row["ratio"] = row["mae"] / base if row["mae"] is not None and base else None
                rows.append(row)
    return pd.DataFrame(rows, columns=["trained_on", "evaluated_on", "zone", "mae", "ratio", "rows", "kind"])


def cmd_cross(args) -> int:
    names = args.node_types
    table = cross_node_type(dict(zip(names, args.models)), dict(zip(names, args.metrics)), dict(zip(names, args.datasets)))
    table.insert(0, "model", args.model_name)
    with atomic_path(args.output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    pkg = table[table.zone == table.zone.iloc[0]] if len(table) else table
    if len(pkg):
        print(pkg.pivot(index="trained_on", columns="evaluated_on", values="mae").round(2).to_string())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("train-cross", help="matrix: a node_type's model evaluated on every node_type's data")
    c.add_argument("--node-types", nargs="+", required=True)
    c.add_argument("--models", nargs="+", required=True, help="model.joblib per node_type (same order)")
    c.add_argument("--metrics", nargs="+", required=True, help="metrics.json per node_type (same order)")
    c.add_argument("--datasets", nargs="+", required=True, help="isolated dataset per node_type (same order)")
    c.add_argument("--model-name", required=True, help="<output_type>/<feature_group>/<trainer> compared")
    c.add_argument("--output", required=True, help="cross_node_type.csv")
    c.set_defaults(func=cmd_cross)
