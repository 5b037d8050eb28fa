"""Held-out metrics, best-model selection, summary.csv and the ONNX check that fails a job."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower import cli, export, train
from vmpower.io import write_parquet

CONFIG = yaml.safe_load(open("config.yaml"))


def test_zone_metrics_by_hand():
    y = np.array([0.5, 2.0, 4.0, 10.0])
    pred = np.array([1.5, 1.0, 5.0, 7.0])  # errors +1, -1, +1, -3
    m = train.zone_metrics(y, pred, mape_floor=1.0)
    assert m["mae"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 1 + 1 + 9) / 4))
    # MAPE only over rows above the floor (0.5 W is excluded): (1/2 + 1/4 + 3/10) / 3
    assert m["mape"] == pytest.approx(100 * (0.5 + 0.25 + 0.3) / 3) and m["mape_rows"] == 3
    ss_tot = ((y - y.mean()) ** 2).sum()
    assert m["r2"] == pytest.approx(1 - 12 / ss_tot) and m["rows"] == 4
    flat = train.zone_metrics(np.full(3, 2.0), np.full(3, 2.5), mape_floor=5.0)
    assert flat["r2"] is None and flat["mape"] is None and flat["mae"] == pytest.approx(0.5)


def _meta_dir(root, nt, out_type, group, trainer, maes, status="trained"):
    d = root / f"{out_type}/{group}/{trainer}Trainer_{nt}"
    d.mkdir(parents=True)
    zones = list(maes)
    meta = {"node_type": nt, "output_type": out_type, "feature_group": group, "trainer": f"{trainer}Trainer",
            "status": status, "features": ["a", "b"], "zones": zones}
    if status == "trained":
        meta["metrics"] = {z: {"mae": v, "mape": 2 * v, "rmse": 1.5 * v, "r2": 0.9, "rows": 10} for z, v in maes.items()}
        meta["onnx"] = {z: {"max_abs_diff_watts": 1e-6} for z in zones}
    (d / "metadata.json").write_text(json.dumps(meta))
    return str(d)


def test_best_model_is_lowest_mean_mae_and_summary_has_every_metric(tmp_path):
    dirs = [
        _meta_dir(tmp_path, "nt", "AbsPower", "Full", "LinearRegression", {"package": 1.0, "core": 3.0}),  # mean 2
        _meta_dir(tmp_path, "nt", "AbsPower", "Full", "XGBRegressor", {"package": 2.5, "core": 1.0}),  # mean 1.75
        _meta_dir(tmp_path, "nt", "AbsPower", "Full", "SGDRegressor", {}, status="too_few_rows"),
        _meta_dir(tmp_path, "nt", "DynPower", "Full", "LinearRegression", {"package": 0.5, "core": 0.5}),
        _meta_dir(tmp_path, "nt", "DynPower", "Full", "KNeighborsRegressor", {"package": 0.5, "core": 0.5}),  # tie
    ]
    summary, best = tmp_path / "summary.csv", tmp_path / "best.json"
    assert cli.main(["select", "--models", *dirs, "--summary", str(summary), "--best", str(best)]) == 0
    chosen = json.loads(best.read_text())["nt"]
    assert chosen["AbsPower"]["Full"]["trainer"] == "XGBRegressor"
    assert chosen["AbsPower"]["Full"]["mae_mean"] == pytest.approx(1.75)
    assert chosen["DynPower"]["Full"]["trainer"] == "KNeighborsRegressor"  # ties: by trainer name, stable
    df = pd.read_csv(summary)
    assert {"mae", "mape", "rmse", "r2", "heldout_rows", "onnx_max_abs_diff", "best", "zone"} <= set(df.columns)
    assert len(df) == 2 * 4 + 1  # two zones per trained model, one row for the untrained one
    assert df.loc[df["trainer"] == "SGDRegressor", "status"].tolist() == ["too_few_rows"]
    assert df.loc[df["best"], "trainer"].tolist().count("XGBRegressor") == 2


def test_onnx_check_above_the_limit_fails_the_export_and_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 120
    u = rng.uniform(0, 100, n)
    df = pd.DataFrame({"run_id": np.repeat(["r0", "r1"], n // 2), "time": np.arange(n, dtype=float),
                       "t_rel": np.arange(n, dtype=float), "time_delta_seconds": 1.0, "stress_workload": "x",
                       "cpu_utilization": u, "power_package": 10 + 0.3 * u + rng.normal(0, 0.2, n),
                       "power_core": 2 + 0.2 * u})
    data = tmp_path / "AbsPower.parquet"
    write_parquet(df, data)
    tset = json.dumps({**CONFIG["train"], "patterns": ["cpu_*"]})
    m = tmp_path / "m"
    assert cli.main(["train", "--dataset", str(data), "--node-type", "nt", "--output-type", "AbsPower",
                     "--feature-group", "Full", "--trainer", "GradientBoostingRegressor", "--model",
                     str(m / "model.joblib"), "--metrics", str(m / "metrics.json"), "--holdout",
                     str(m / "holdout.parquet"), "--settings", tset]) == 0
    # float32 trees in ONNX differ from float64 sklearn by ~1e-6 W: a 1e-12 W limit must fail.
    strict = {**CONFIG["export"], "max_abs_diff_watts": 1e-12}
    out = tmp_path / "out"
    code = cli.main(["export", "--model", str(m / "model.joblib"), "--metrics", str(m / "metrics.json"),
                     "--holdout", str(m / "holdout.parquet"), "--node-type", "nt", "--output-type", "AbsPower",
                     "--feature-group", "Full", "--trainer", "GradientBoostingRegressor", "--lock",
                     "envs/pipeline.lock", "--out-dir", str(out / "GradientBoostingRegressorTrainer_nt"),
                     "--archive", str(out / "GradientBoostingRegressorTrainer_nt.zip"),
                     "--settings", json.dumps(strict)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "model.joblib: ONNX package model differs from the native model by" in err[0] and "limit 1e-12 W" in err[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
