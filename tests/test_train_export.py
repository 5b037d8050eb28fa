import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower import cli

from vmpower.pipeline import isolate, train
from vmpower.io import write_parquet

CONFIG = yaml.safe_load(open("config.yaml"))


def dataset(runs=4, n=150, seed=0, perf_missing_run=None):
    rng = np.random.default_rng(seed)
    parts = []
    for r in range(runs):
        u = rng.uniform(0, 100, n) if r else np.full(n, 2.0) + rng.normal(0, 0.2, n)
        mem = rng.uniform(10, 60, n)
        df = pd.DataFrame(
            {
                "run_id": f"run{r}",
                "time": 1e9 + r * 1000 + np.arange(n, dtype=float),
                "t_rel": np.arange(n, dtype=float),
                "time_delta_seconds": 1.0,
                "stress_workload": "idle" if r == 0 else "cpu_intensive",
                "cpu_utilization": u,
                "memory_usage_percent": mem,
                "cpu_cycles": u * 1e7 + rng.normal(0, 1e6, n),
                "cpu_steal": 0.0,  # constant: must be dropped
            }
        )
        if perf_missing_run == r:
            df["cpu_cycles"] = np.nan
        df["power_package"] = 20 + 0.5 * u + 0.1 * mem + rng.normal(0, 0.5, n)
        df["power_core"] = 5 + 0.4 * u + rng.normal(0, 0.3, n)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def test_holdout_never_mixes_a_run_between_train_and_test():
    df = dataset(runs=5)
    folds, scheme = train.holdout_folds(df, max_folds=10, holdout_fraction=0.2)
    assert scheme["scheme"] == "leave-one-run-out" and len(scheme["folds"]) == 5
    per_run = pd.Series(folds).groupby(df["run_id"]).nunique()
    assert (per_run == 1).all()
    folds3, scheme3 = train.holdout_folds(df, max_folds=3, holdout_fraction=0.2)
    assert len(set(folds3)) == 3 and "3-fold" in scheme3["scheme"]


def test_single_run_holds_out_its_last_part():
    df = dataset(runs=1)
    folds, scheme = train.holdout_folds(df, max_folds=10, holdout_fraction=0.2)
    held = df.loc[folds == 0, "t_rel"]
    assert len(held) == 30 and held.min() >= df["t_rel"].quantile(0.79)


def test_feature_selection_drops_constant_and_sparse():
    df = dataset(runs=4, perf_missing_run=1)
    feats, usable, rep = train.select_features(df, ["*"], max_missing=0.5)
    assert "cpu_steal" not in feats and rep["dropped"]["cpu_steal"].startswith("constant")
    assert "cpu_cycles" in feats and rep["rows_without_features"] == {"run1": 150}
    feats2, usable2, rep2 = train.select_features(df, ["*"], max_missing=0.1)
    assert "cpu_cycles" not in feats2 and usable2.all()


@pytest.mark.parametrize("trainer", CONFIG["train"]["trainers"])
def test_train_is_honest_and_accurate(trainer):
    df = dataset(runs=4)
    settings = {**CONFIG["train"], "patterns": ["cpu_utilization", "memory_usage_percent"]}
    models, report, holdout = train.train(df, trainer, settings["patterns"], train.TrainSettings.build(settings), {}, "x")
    assert report["status"] == "trained" and set(models) == {"package", "core"}
    # Held-out error near the noise (0.5 W / 0.3 W std), well below the spread of the data.
    limit = {"LinearRegression": 1.0, "SGDRegressor": 1.5}.get(trainer, 3.5)
    assert report["metrics"]["package"]["mae"] < limit
    assert report["metrics"]["package"]["mae"] > 0.2  # not evaluated on training rows
    assert len(holdout) == len(df)  # every run held out exactly once


def test_isolation_profile_and_min():
    df = dataset(runs=3)
    idle, info = isolate.idle_power(df, "profile", ["idle"], [])
    assert info["method"] == "profile" and info["idle_runs"] == ["run0"]
    assert idle["package"] == pytest.approx(df.loc[df.run_id == "run0", "power_package"].mean())
    dyn, clipped = isolate.dyn_power(df, idle)
    assert (dyn["power_package"] >= 0).all() and 0 < clipped["package"] < 0.7
    busy = df[df.run_id != "run0"]
    idle2, info2 = isolate.idle_power(busy, "profile", ["idle"], [])
    assert info2["method"] == "min" and "fallback_reason" in info2
    assert idle2["core"] == pytest.approx(busy["power_core"].min())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train and export every trainer once (in-process CLI calls, as the workflow makes them)."""
    root = tmp_path_factory.mktemp("export")
    data = root / "AbsPower.parquet"
    write_parquet(dataset(runs=4), data)
    spec = root / "machine_spec.json"
    spec.write_text(json.dumps({"processor": "Test CPU", "cores": 8, "chips": 1, "memory": 32, "frequency": 2000}))
    out = {}
    trainers = CONFIG["train"]["trainers"]
    for trainer in trainers:
        d = root / trainer
        tset = json.dumps({**CONFIG["train"], "patterns": ["cpu_*", "memory_usage_percent"]})
        assert cli.main(["train", "--dataset", str(data), "--node-type", "nt", "--output-type", "AbsPower",
                         "--feature-group", "Full", "--trainer", trainer, "--model", str(d / "model.joblib"),
                         "--metrics", str(d / "metrics.json"), "--holdout", str(d / "holdout.parquet"),
                         "--settings", tset]) == 0
        out[trainer] = d
    # One export call for every trainer of the feature group, as export_models makes it; twice.
    for copy in ("a", "b"):
        assert cli.main(["export", "--trainer", *trainers,
                         "--model", *(str(out[t] / "model.joblib") for t in trainers),
                         "--metrics", *(str(out[t] / "metrics.json") for t in trainers),
                         "--holdout", *(str(out[t] / "holdout.parquet") for t in trainers),
                         "--node-type", "nt", "--output-type", "AbsPower", "--feature-group", "Full",
                         "--machine-spec", str(spec), "--lock", "envs/pipeline.lock",
                         "--out-dir", *(str(out[t] / copy / f"{t}Trainer_nt") for t in trainers),
                         "--archive", *(str(out[t] / copy / f"{t}Trainer_nt.zip") for t in trainers),
                         "--settings", json.dumps(CONFIG["export"])]) == 0
    out["_dataset"] = data
    out["_spec"] = spec
    return out


def _export(d, out, *extra, output_type="AbsPower", settings=None, trainer="LinearRegression"):
    return cli.main(["export", "--model", str(d / "model.joblib"), "--metrics", str(d / "metrics.json"), "--holdout",
                     str(d / "holdout.parquet"), "--node-type", "nt", "--output-type", output_type, "--feature-group",
                     "Full", "--trainer", trainer, "--out-dir", str(out), "--archive", str(out) + ".zip",
                     "--settings", json.dumps(settings or CONFIG["export"]), *map(str, extra)])


def test_training_ranges_recorded_by_train_equal_the_dataset_and_the_held_out_rows(exported, tmp_path):
    """metadata.json training_data: rows, newest time and per-feature [min, max] of the rows train
    used, as train recorded them; `export --dataset` recomputes the same from the data set, and
    metrics without them fall back to the held-out rows (the same rows with several runs)."""
    d = exported["LinearRegression"]
    meta = json.loads((d / "a" / "LinearRegressionTrainer_nt" / "metadata.json").read_text())
    df = pd.read_parquet(exported["_dataset"])
    td = meta["training_data"]
    assert td["rows"] == td["ranges_rows"] == len(df) == 600 and td["ranges_from"] == "training rows"
    assert td["last_sample_time"] == df["time"].max()
    assert td["feature_ranges"]["cpu_utilization"] == {"min": df["cpu_utilization"].min(), "max": df["cpu_utilization"].max()}
    assert td == json.loads((d / "metrics.json").read_text())["training_data"]
    assert exported["_dataset"].as_posix() not in meta["provenance"]["inputs"]

    assert _export(d, tmp_path / "ds", "--dataset", exported["_dataset"]) == 0
    from_ds = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    assert from_ds["training_data"] == {**td, "ranges_from": "dataset"}
    assert exported["_dataset"].as_posix() in from_ds["provenance"]["inputs"]

    legacy = tmp_path / "legacy"
    shutil.copytree(d, legacy, ignore=shutil.ignore_patterns("a", "b"))
    report = json.loads((legacy / "metrics.json").read_text())
    del report["training_data"]
    (legacy / "metrics.json").write_text(json.dumps(report))
    assert _export(legacy, tmp_path / "h") == 0
    held = json.loads((tmp_path / "h" / "metadata.json").read_text())["training_data"]
    assert held == {**td, "ranges_from": "holdout"}


def test_one_export_call_checks_every_model_before_writing_any(exported, tmp_path, capsys):
    """A job exports all trainers of a feature group: lists of unequal length are refused with
    one line, bad input for one model leaves none of the others written, and a model failing
    its ONNX check is written with that status while the others export as usual."""
    lr, gbr = exported["LinearRegression"], exported["GradientBoostingRegressor"]
    base = ["export", "--node-type", "nt", "--output-type", "AbsPower", "--feature-group", "Full",
            "--holdout", str(lr / "holdout.parquet"), str(gbr / "holdout.parquet"),
            "--out-dir", str(tmp_path / "o" / "lr"), str(tmp_path / "o" / "gbr"),
            "--archive", str(tmp_path / "o" / "lr.zip"), str(tmp_path / "o" / "gbr.zip")]
    metrics = ["--metrics", str(lr / "metrics.json"), str(gbr / "metrics.json")]
    both = ["--trainer", "LinearRegression", "GradientBoostingRegressor", "--model", str(lr / "model.joblib"),
            str(gbr / "model.joblib")]
    assert cli.main([*base, *metrics, "--trainer", "LinearRegression", "GradientBoostingRegressor", "--model",
                     str(lr / "model.joblib"), "--settings", json.dumps(CONFIG["export"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vmpower export: error: --model: has 1 values for 2 trainers (one per --trainer)"]
    # The second model's training report does not fit the data set: the first is not written either.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**json.loads((gbr / "metrics.json").read_text()), "rows_train": 7}))
    assert cli.main([*base, *both, "--metrics", str(lr / "metrics.json"), str(wrong), "--dataset",
                     str(exported["_dataset"]), "--settings", json.dumps(CONFIG["export"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the training report says 7" in err[0]
    assert not (tmp_path / "o").exists()
    # Linear models match ONNX to ~1e-13 W, float32 trees only to ~1e-6 W: a 1e-9 W limit
    # passes the first model and fails the second, which alone gets status onnx_mismatch.
    strict = {**CONFIG["export"], "max_abs_diff_watts": 1e-9}
    assert cli.main([*base, *both, *metrics, "--settings", json.dumps(strict)]) == 0
    assert json.loads((tmp_path / "o" / "gbr" / "metadata.json").read_text())["status"] == "onnx_mismatch"
    assert not list((tmp_path / "o" / "gbr").glob("*.onnx"))
    ok = json.loads((tmp_path / "o" / "lr" / "metadata.json").read_text())
    assert ok["status"] == "trained" and (tmp_path / "o" / "lr" / "package.onnx").is_file()
    assert cli.main([*base, *both, *metrics, "--settings", json.dumps(CONFIG["export"])]) == 0
    for name in ("lr", "gbr"):  # the same bytes as one export per model
        trainer = {"lr": "LinearRegression", "gbr": "GradientBoostingRegressor"}[name]
        one = tmp_path / "one" / name
        assert _export(exported[trainer], one, trainer=trainer) == 0
        assert (one / "metadata.json").read_bytes() == (tmp_path / "o" / name / "metadata.json").read_bytes()


def test_export_refuses_a_dataset_the_model_was_not_trained_on(exported, tmp_path, capsys):
    d = exported["LinearRegression"]
    other = tmp_path / "other.parquet"
    write_parquet(dataset(runs=3), other)
    assert _export(d, tmp_path / "m", "--dataset", other) == 2
    assert capsys.readouterr().err.strip().endswith(
        "other.parquet: has 450 rows with the model's features, the training report says 600: not the data set the model was trained on")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.zip").exists()


def test_dynpower_archives_record_the_isolator(exported, tmp_path, capsys):
    df = dataset(runs=4)
    iso = tmp_path / "iso"
    assert cli.main(["isolate", "--dataset", str(exported["_dataset"]), "--node-type", "nt", "--abs-output",
                     str(iso / "AbsPower.parquet"), "--dyn-output", str(iso / "DynPower.parquet"), "--info",
                     str(iso / "isolation.json"), "--settings", json.dumps(CONFIG["isolate"])]) == 0
    d = tmp_path / "dyn"
    tset = json.dumps({**CONFIG["train"], "patterns": ["cpu_*", "memory_usage_percent"]})
    assert cli.main(["train", "--dataset", str(iso / "DynPower.parquet"), "--node-type", "nt", "--output-type",
                     "DynPower", "--feature-group", "Full", "--trainer", "LinearRegression", "--model",
                     str(d / "model.joblib"), "--metrics", str(d / "metrics.json"), "--holdout",
                     str(d / "holdout.parquet"), "--settings", tset]) == 0
    assert _export(d, tmp_path / "m", "--dataset", iso / "DynPower.parquet", output_type="DynPower") == 2
    assert "a DynPower model needs --isolation" in capsys.readouterr().err
    for copy in ("a", "b"):
        assert _export(d, tmp_path / copy / "m", "--dataset", iso / "DynPower.parquet", "--isolation",
                       iso / "isolation.json", output_type="DynPower") == 0
    assert (tmp_path / "a" / "m.zip").read_bytes() == (tmp_path / "b" / "m.zip").read_bytes()
    meta = json.loads((tmp_path / "a" / "m" / "metadata.json").read_text())
    info = json.loads((iso / "isolation.json").read_text())
    assert meta["isolator"] == info["method"] == "profile"
    assert meta["idle_power_watts"] == info["idle_power_watts"]
    assert meta["idle_power_watts"]["package"] == pytest.approx(df.loc[df.run_id == "run0", "power_package"].mean())
    # AbsPower models have no isolator and refuse one
    absm = json.loads((exported["LinearRegression"] / "a" / "LinearRegressionTrainer_nt" / "metadata.json").read_text())
    assert "isolator" not in absm and "idle_power_watts" not in absm
    assert _export(exported["LinearRegression"], tmp_path / "x", "--isolation", iso / "isolation.json") == 2
    assert "--isolation is for DynPower models, not AbsPower" in capsys.readouterr().err


@pytest.mark.parametrize("trainer", CONFIG["train"]["trainers"])
def test_onnx_matches_native_and_archive_is_reproducible(exported, trainer):
    import joblib
    import onnxruntime as ort

    d = exported[trainer]
    a = (d / "a" / f"{trainer}Trainer_nt.zip").read_bytes()
    assert a == (d / "b" / f"{trainer}Trainer_nt.zip").read_bytes()
    model_dir = d / "a" / f"{trainer}Trainer_nt"
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["model_name"] == f"{trainer}Trainer_nt" and meta["machine_spec"]["processor"] == "Test CPU"
    assert sorted(meta["features"]) == ["cpu_cycles", "cpu_utilization", "memory_usage_percent"]
    assert set(meta["zones"]) == {"package", "core"} and meta["package_mae"] > 0
    assert meta["feature_engineering"]["windowed_features"] == {}  # this data set has no windows
    assert set(meta["chosen_params"]) == {"package", "core"}
    with zipfile.ZipFile(d / "a" / f"{trainer}Trainer_nt.zip") as zf:
        names = zf.namelist()
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    assert {"metadata.json", "manifest.sha256", "package.onnx", "core.onnx"} <= set(names)
    # Kepler has no feature for cpu_utilization or memory_usage_percent: no weight.json, and why
    # (the weights Kepler reads: tests/test_kepler_weights.py).
    assert "weight.json" not in names and meta["kepler_weight_reason"]
    # Independent check: ONNX on fresh rows (not the held-out rows the export checked).
    bundle = joblib.load(d / "model.joblib")
    X = dataset(runs=2, seed=9)[meta["features"]].to_numpy("float64")
    for zone in ("package", "core"):
        sess = ort.InferenceSession(str(model_dir / f"{zone}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"features": X})[0].ravel()
        assert np.max(np.abs(got - bundle["models"][zone].predict(X))) < 1e-3
        assert meta["onnx"][zone]["max_abs_diff_watts"] < 1e-3


# ---------------------------------------------------------------- feature engineering (issue 8)


def lagged_runs(lag_s=4.0, runs=3, n=400, seed=3):
    """Power follows cpu_utilization by lag_s seconds, as a 5 s Kepler-style held average."""
    rng = np.random.default_rng(seed)
    parts = []
    for r in range(runs):
        t = 1e9 + r * 10_000 + np.arange(n, dtype=float) * 1.0 + rng.uniform(-0.01, 0.01, n)
        u = np.repeat(rng.uniform(0, 100, n // 10 + 1), 10)[:n] + rng.normal(0, 1, n)
        k = int(lag_s)
        power = np.r_[np.full(k, 20.0), 20 + 0.5 * u[: n - k]] + rng.normal(0, 0.3, n)
        parts.append(pd.DataFrame({"run_id": f"run{r}", "time": t, "t_rel": t - t[0], "time_delta_seconds": 1.0,
                                   "stress_workload": "cpu_intensive", "cpu_utilization": u,
                                   "memory_usage_percent": rng.uniform(10, 60, n),
                                   "power_package": power, "power_core": 0.8 * power}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("lag", [0, 3, 7])
def test_lag_estimate_recovers_a_known_lag(lag):
    from vmpower.pipeline import engineer

    g = lagged_runs(lag_s=lag, runs=1)
    info = engineer.estimate_lag(g["time"].to_numpy(), g["cpu_utilization"].to_numpy(), g["power_package"].to_numpy(), 15)
    assert info["lag_seconds"] == pytest.approx(lag, abs=0.6)
    assert info["correlation"] > 0.9


def test_lag_correction_pairs_features_with_later_labels_within_each_run():
    from vmpower.pipeline import engineer

    df = lagged_runs(lag_s=4.0, runs=2)
    out, info = engineer.apply_lag(df, {"run0": 4.0, "run1": 4.0})
    assert info["rows_dropped"] == {"run0": 4, "run1": 4}  # the last 4 s of each run have no label
    for r in ("run0", "run1"):
        a, b = df[df.run_id == r].reset_index(drop=True), out[out.run_id == r].reset_index(drop=True)
        np.testing.assert_allclose(b["power_package"], a["power_package"].iloc[4:].to_numpy())
        np.testing.assert_allclose(b["cpu_utilization"], a["cpu_utilization"].iloc[:-4].to_numpy())
    raw_corr = np.corrcoef(df.cpu_utilization, df.power_package)[0, 1]
    assert np.corrcoef(out.cpu_utilization, out.power_package)[0, 1] > raw_corr + 0.2


def test_windows_are_causal_and_never_cross_runs():
    from vmpower.pipeline import engineer

    df = lagged_runs(runs=2, n=50)
    means = engineer.rolling_means(df, ["cpu_utilization"], [5.0])
    col = means["cpu_utilization_mean5s"].to_numpy()
    t, u, run = df["time"].to_numpy(), df["cpu_utilization"].to_numpy(), df["run_id"].to_numpy()
    for i in range(len(df)):  # brute force: same run, time in (t - 5, t]
        sel = (run == run[i]) & (t > t[i] - 5.0) & (t <= t[i])
        assert col[i] == pytest.approx(u[sel].mean(), rel=1e-12)
    # Causal: changing the future never changes the past; the first row of run1 sees only itself.
    first1 = int(np.flatnonzero(run == "run1")[0])
    assert col[first1] == pytest.approx(u[first1])
    changed = df.copy()
    changed.loc[30:, "cpu_utilization"] += 100.0
    col2 = engineer.rolling_means(changed, ["cpu_utilization"], [5.0])["cpu_utilization_mean5s"].to_numpy()
    np.testing.assert_array_equal(col2[:30], col[:30])


def test_windowed_features_follow_their_group_and_exclusions():
    assert train.group_matches("cpu_utilization_mean5s", ["cpu_utilization"])
    assert not train.group_matches("memory_usage_percent_mean5s", ["cpu_utilization"])
    assert not train.group_matches("process_count", ["*", "!process_count"])
    assert not train.group_matches("process_count_mean5s", ["*", "!process_count"])
    assert train.group_matches("cpu_utilization_hinge70", ["cpu_utilization"])
    assert not train.group_matches("cpu_utilization_hinge70", ["cpu_*", "!cpu_utilization"])


def test_hyperparameter_search_never_sees_held_out_runs(monkeypatch):
    df = dataset(runs=4)
    settings = {**CONFIG["train"], "search": {"KNeighborsRegressor": {"n_neighbors": [3, 15]}}, "search_folds": 2}
    seen = []
    original = train.search_params

    def spy(trainer, candidates, seed, X, y, groups, n_folds, max_rows):
        seen.append(set(np.unique(groups).tolist()))
        return original(trainer, candidates, seed, X, y, groups, n_folds, max_rows)

    monkeypatch.setattr(train, "search_params", spy)
    _, report, _ = train.train(df, "KNeighborsRegressor", ["cpu_utilization", "memory_usage_percent"],
                               train.TrainSettings.build(settings), {}, "x")
    # Per zone: one search per held-out run (on the other 3 runs), then one on all 4 for the final model.
    assert len(seen) == 2 * 5
    folds = [s for s in seen if len(s) == 3]
    assert len(folds) == 8 and {frozenset({0, 1, 2, 3}) - s for s in map(frozenset, folds)} == {frozenset({i}) for i in range(4)}
    assert report["search"]["grid"] == {"n_neighbors": [3, 15]}
    assert set(report["chosen_params"]["package"]) >= {"n_neighbors", "weights"}
