"""Accuracy ablation on the demo data (``make bench``): the variants of bench/accuracy.py,
per node_type and zone, best trainer; written to results/bench/ablation.csv and .json.
Needs the demo data (``make demo-data``). VMPOWER_BENCH_ABLATION_TRAINERS limits the trainers
(comma-separated; default: all but GradientBoostingRegressor, the slowest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.accuracy import ablation, best_table

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "data" / "raw"


def test_ablation(benchmark):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    nts = sorted(p.name for p in RAW.iterdir() if (p / "synth_noise_floor.json").exists()) if RAW.exists() else []
    if not nts:
        pytest.skip("no demo data (make demo-data)")
    default = ",".join(t for t in cfg["train"]["trainers"] if t != "GradientBoostingRegressor")
    trainers = os.environ.get("VMPOWER_BENCH_ABLATION_TRAINERS", default).split(",")
    def both_groups():
        # Full through every step; Activity (few inputs, the hinge basis) for the last one.
        full = ablation(RAW, cfg, nts, group="Full", trainers=trainers)
        act = ablation(RAW, cfg, nts, group="Activity", trainers=trainers,
                       variants=["interval+offset", "interval+offset+hinges"])
        return pd.concat([full, act], ignore_index=True)

    df = benchmark.pedantic(both_groups, rounds=1, iterations=1)
    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ablation.csv", index=False, float_format="%.4f")
    best = best_table(df[df.feature_group == "Full"])
    table = best.pivot_table(index=["node_type", "zone"], columns="variant", values="x_floor")
    act = best_table(df[df.feature_group == "Activity"])
    act_table = act.pivot_table(index=["node_type", "zone"], columns="variant", values="x_floor")
    (out / "ablation.json").write_text(json.dumps({
        "trainers": trainers,
        "best": best[["node_type", "variant", "trainer", "zone", "mae", "noise_floor", "window_truth", "x_floor"]]
        .to_dict(orient="records"),
        "best_activity": act[["node_type", "variant", "trainer", "zone", "mae", "noise_floor", "x_floor"]]
        .to_dict(orient="records"),
    }, indent=2) + "\n")
    print(table.round(2).to_string())
    print(act_table.round(2).to_string())
    # Each step the pipeline takes must pay off on every node_type and zone.
    assert (table["window+lag+windows"] < table["window"]).all().all()
    assert (table["interval+offset"] < table["window+lag+windows"]).all().all()
    # The hinge basis: the best Activity model improves on every node_type and meets the target.
    mean = act_table.groupby(level="node_type").mean()
    assert (mean["interval+offset+hinges"] < mean["interval+offset"]).all()
    assert (act_table["interval+offset+hinges"] <= 1.15).all()
