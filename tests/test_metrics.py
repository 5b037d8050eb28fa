"""Held-out metrics, best-model selection, summary.csv and the ONNX check that fails a job."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower import cli

from vmpower.pipeline import export, train
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


def _train_cli(data, m, trainer, patterns=("cpu_*",), **overrides):
    tset = json.dumps({**CONFIG["train"], **overrides, "patterns": list(patterns)})
    return cli.main(["train", "--dataset", str(data), "--node-type", "nt", "--output-type", "AbsPower",
                     "--feature-group", "Full", "--trainer", trainer, "--model", str(m / "model.joblib"),
                     "--metrics", str(m / "metrics.json"), "--holdout", str(m / "holdout.parquet"), "--settings", tset])


def _export_cli(dirs: dict, out, settings):
    names = list(dirs)
    return cli.main(["export", "--trainer", *names, "--model", *(str(dirs[t] / "model.joblib") for t in names),
                     "--metrics", *(str(dirs[t] / "metrics.json") for t in names),
                     "--holdout", *(str(dirs[t] / "holdout.parquet") for t in names),
                     "--node-type", "nt", "--output-type", "AbsPower", "--feature-group", "Full",
                     "--lock", "envs/pipeline.lock", "--out-dir", *(str(out / f"{t}Trainer_nt") for t in names),
                     "--archive", *(str(out / f"{t}Trainer_nt.zip") for t in names), "--settings", json.dumps(settings)])


def test_a_model_failing_its_onnx_check_is_recorded_never_selected_and_takes_no_other_down(tmp_path, capsys):
    import zipfile

    from vmpower.ops import gate

    from vmpower.serving import artifact, selection
    from vmpower.errors import InputError

    rng = np.random.default_rng(3)
    n = 120
    u = rng.uniform(0, 100, n)
    df = pd.DataFrame({"run_id": np.repeat(["r0", "r1"], n // 2), "time": np.arange(n, dtype=float),
                       "t_rel": np.arange(n, dtype=float), "time_delta_seconds": 1.0, "stress_workload": "x",
                       "cpu_utilization": u, "cpu_iowait": rng.uniform(0, 2, n),
                       "power_package": 10 + 0.004 * u**2 + rng.normal(0, 0.2, n), "power_core": 2 + 0.002 * u**2})
    data = tmp_path / "AbsPower.parquet"
    write_parquet(df, data)
    # Power is convex in utilisation: the tree model has the lower held-out MAE and would be the
    # best if it exported.
    dirs = {t: tmp_path / t for t in ("LinearRegression", "GradientBoostingRegressor")}
    for t, d in dirs.items():
        assert _train_cli(data, d, t) == 0
    # float32 trees in ONNX differ from float64 sklearn by ~1e-6 W, linear models by ~1e-13 W:
    # a 1e-9 W limit fails the tree model only.
    out = tmp_path / "out"
    capsys.readouterr()
    assert _export_cli(dirs, out, {**CONFIG["export"], "max_abs_diff_watts": 1e-9}) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("exported LinearRegressionTrainer_nt (2 zones")
    assert printed[1].startswith("exported GradientBoostingRegressorTrainer_nt as onnx_mismatch: ONNX ")
    gbr = out / "GradientBoostingRegressorTrainer_nt"
    meta = json.loads((gbr / "metadata.json").read_text())
    assert meta["status"] == "onnx_mismatch" and "limit 1e-09 W" in meta["reason"]
    worst = max(v["max_abs_diff_watts"] for v in meta["onnx"].values())
    assert 1e-9 < worst < 1e-3 and f"by {worst:.3g} W" in meta["reason"]
    assert all(v["file"] is None for v in meta["onnx"].values())
    # Its outputs exist (the workflow declares them): metadata and manifest, no ONNX, nothing else.
    assert sorted(p.name for p in gbr.iterdir()) == ["manifest.sha256", "metadata.json"]
    with zipfile.ZipFile(f"{gbr}.zip") as zf:
        assert sorted(zf.namelist()) == ["manifest.sha256", "metadata.json"]
    assert {"package.onnx", "core.onnx"} <= {p.name for p in (out / "LinearRegressionTrainer_nt").iterdir()}
    # predict refuses it with one line; a results directory without best.json skips it.
    with pytest.raises(InputError) as err:
        artifact.Model.load(gbr)
    assert "onnx_mismatch" in str(err.value) and "\n" not in str(err.value)
    table, _ = selection.best_table(out)
    assert table["nt"]["AbsPower"]["Full"]["trainer"] == "LinearRegression"
    # summary.csv records it with its difference; best.json and the gate never pick it.
    summary, best = tmp_path / "summary.csv", tmp_path / "best.json"
    assert cli.main(["select", "--models", str(out / "LinearRegressionTrainer_nt"), str(gbr),
                     "--summary", str(summary), "--best", str(best)]) == 0
    rows = pd.read_csv(summary)
    bad = rows[rows["trainer"] == "GradientBoostingRegressor"]
    assert set(bad["status"]) == {"onnx_mismatch"} and len(bad) == 2 and not bad["best"].any()
    assert bad["onnx_max_abs_diff"].max() == pytest.approx(worst, rel=1e-5)
    assert bad["mae"].mean() < rows.loc[rows["trainer"] == "LinearRegression", "mae"].mean()
    assert json.loads(best.read_text())["nt"]["AbsPower"]["Full"]["trainer"] == "LinearRegression"
    assert gate.best_models(summary)["nt"]["AbsPower"]["Full"]["trainer"] == "LinearRegression"
    # ... and the report lists it with its reason.
    from vmpower.pipeline.report import markdown as report

    text = report.render(rows, json.loads(best.read_text()), {}, {})
    assert "## Models not exported as ONNX" in text and "| GradientBoostingRegressor | onnx_mismatch | ONNX " in text
