"""The workflow end to end on the demo data: outputs, accuracy, rebuild rules, determinism, bad input."""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from workflow import make_workspace, planned_jobs, snakemake, tree_digest

pytestmark = pytest.mark.slow


def set_train(ws, feature_groups, trainers):
    cfg = yaml.safe_load((ws / "config.yaml").read_text())
    cfg["train"].update({"feature_groups": feature_groups, "trainers": trainers})
    (ws / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


ALL_TRAINERS = ["LinearRegression", "SGDRegressor", "GradientBoostingRegressor", "XGBRegressor",
                "KNeighborsRegressor"]


def small_config(ws, trainers=("LinearRegression", "XGBRegressor")):
    """A slice of the demo (two node types, one feature group) for the repeated builds."""
    set_train(ws, ["Full"], list(trainers))
    for nt in sorted((ws / "data/raw").iterdir())[2:]:
        shutil.rmtree(nt)


# Every node type and runs of the demo, with three of the five trainers and two of the four
# feature groups (all five trainers are exported and checked in test_train_export.py): keeps
# the suite within CI's time while the whole data path is exercised.
DEMO_GROUPS = ["Activity", "Full"]
DEMO_TRAINERS = ["LinearRegression", "XGBRegressor", "KNeighborsRegressor"]
N_MODELS = 3 * 2 * len(DEMO_GROUPS) * len(DEMO_TRAINERS)
# Best held-out MAE per zone, as a multiple of the generator's noise floor: the best model of
# each node_type meets issue 8's target (1.15); the best Full model (40+ inputs, harder to
# generalise from six runs) stays within 3x. Measured: docs/performance.md.
ACCURACY_TARGET_X_FLOOR = 1.15
ACCURACY_X_FLOOR = 3.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("demo"))
    set_train(ws, DEMO_GROUPS, DEMO_TRAINERS)
    snakemake(ws, "--cores", "2")
    return ws


def test_demo_build_outputs(demo):
    res = demo / "results"
    summary = pd.read_csv(res / "summary.csv")
    best = json.loads((res / "best.json").read_text())
    assert sorted(best) == ["demo-epyc", "demo-xeon-e5", "demo-xeon-gold"]
    assert set(summary["zone"].dropna()) == {"package", "core", "dram", "uncore"}
    assert len(list((res / "models").glob("*/*/*.zip"))) == N_MODELS
    assert (summary["onnx_max_abs_diff"].dropna() <= 1e-3).all()
    # Kepler publishes 5 s means late; with kepler_interval alignment each label meets the
    # features of the interval it describes, so the best model must come near the generator's
    # noise floor (the error of the true power against the labels) and far below the error a
    # per-sample model is bounded by (window_truth_mae) and below predicting the mean.
    trained = summary[summary.status == "trained"]
    for nt in best:
        floor = json.loads((demo / "data/raw" / nt / "synth_noise_floor.json").read_text())["zones"]
        row = best[nt]["AbsPower"]["Full"]
        m = trained[(trained.node_type == nt) & (trained.output_type == "AbsPower") & (trained.feature_group == "Full") & (trained.trainer == row["trainer"])]
        data = pd.read_parquet(res / "isolated" / nt / "AbsPower.parquet")
        for zone in ("package", "core", "dram", "uncore"):
            got = m[m.zone == zone].iloc[0]
            mad = (data[f"power_{zone}"] - data[f"power_{zone}"].mean()).abs().mean()
            assert got["mae"] < 0.3 * mad, (nt, zone, got["mae"], mad)
            assert got["mae"] < ACCURACY_X_FLOOR * floor[zone]["noise_floor_mae_watts"], (nt, zone, got["mae"])
            assert got["mae"] < 0.85 * floor[zone]["window_truth_mae_watts"], (nt, zone, got["mae"])
    # The target: the best model of each node_type (here AbsPower/Activity, linear on
    # the utilisation hinge basis) within 1.15x the noise floor on every zone.
    for nt in best:
        floor = json.loads((demo / "data/raw" / nt / "synth_noise_floor.json").read_text())["zones"]
        m = trained[(trained.node_type == nt) & (trained.output_type == "AbsPower")]
        mean = m.groupby(["feature_group", "trainer"])["mae"].mean().sort_values()
        group, trainer = mean.index[0]
        assert (group, trainer) == ("Activity", "LinearRegression"), mean.head()
        for zone in ("package", "core", "dram", "uncore"):
            got = m[(m.feature_group == group) & (m.trainer == trainer) & (m.zone == zone)]["mae"].iloc[0]
            assert got <= ACCURACY_TARGET_X_FLOOR * floor[zone]["noise_floor_mae_watts"], (nt, zone, got)
    act = json.loads((res / "models/AbsPower/Activity/LinearRegressionTrainer_demo-epyc/metadata.json").read_text())
    assert "cpu_utilization_hinge70" in act["features"]
    assert act["feature_engineering"]["hinge_features"]["cpu_utilization_hinge70"]["knot"] == 70.0
    # The quality report: Kepler's update interval and the guest clock offset per run (the demo
    # skews guest clocks by 0.2-0.8 s), and the per-sample lag of the labels.
    q2 = json.loads((res / "merged/demo-epyc/run02-cycling.quality.json").read_text())
    assert abs(q2["kepler"]["median_interval_seconds"] - 5.0) < 0.05
    assert q2["kepler"]["offset_trusted"] and q2["kepler"]["offset_correlation"] > 0.95
    assert abs(q2["kepler"]["clock_offset_seconds"]) <= 1.5
    assert 2.0 <= q2["lag"]["lag_seconds"] <= 10.0 and q2["lag"]["correlation"] > 0.8
    full = json.loads((res / "models/AbsPower/Full/XGBRegressorTrainer_demo-epyc/metadata.json").read_text())
    assert set(full["chosen_params"]["package"]) >= {"max_depth"} and full["search"]["grid"]
    cross = pd.read_csv(res / "cross_node_type.csv")
    assert len(cross) == 3 * 3 * 4 and cross["mae"].notna().all()
    diag = cross[cross.trained_on == cross.evaluated_on]
    assert (diag["ratio"] == 1.0).all()
    iso = json.loads((res / "isolated/demo-epyc/isolation.json").read_text())
    assert iso["method"] == "profile" and iso["idle_runs"] == ["run01-idle"]
    q = json.loads((res / "merged/demo-epyc/run02-cycling.quality.json").read_text())
    # kepler_interval: samples in intervals with a host gap, a missed sample or a run edge are out
    assert q["match_rate"] > 0.8 and q["time_base"] == "naive" and q["alignment"] == "kepler_interval"
    meta = json.loads((res / "models/AbsPower/Full/LinearRegressionTrainer_demo-epyc/metadata.json").read_text())
    assert meta["machine_spec"]["processor"] and meta["provenance"]["inputs"]
    assert "/tmp" not in json.dumps(meta)  # no absolute paths inside artifacts


def test_up_to_date_tree_has_nothing_to_do(demo):
    res = snakemake(demo, "-n", "--cores", "2")
    assert "Nothing to be done" in res.stdout + res.stderr


def test_editing_a_stage_reruns_only_that_stage_and_below(demo):
    src = demo / "src/vmpower/pipeline/isolate.py"
    original = src.read_text()
    try:
        src.write_text(original + "\n# edited\n")
        jobs = planned_jobs(snakemake(demo, "-n", "--cores", "2"))
    finally:
        src.write_text(original)
    assert jobs.get("isolate_power") == 3 and "merge_run" not in jobs and jobs.get("train_model") == N_MODELS


def test_adding_a_run_rebuilds_only_its_node_type(demo):
    raw = demo / "data/raw/demo-epyc"
    new = raw / "run06-copy"
    shutil.copytree(raw / "run02-cycling", new)
    try:
        res = snakemake(demo, "-n", "--cores", "2")
        jobs = planned_jobs(res)
        text = res.stdout + res.stderr
    finally:
        shutil.rmtree(new)
    assert jobs["merge_run"] == 1 and jobs["merge_dataset"] == 1 and jobs["isolate_power"] == 1
    assert jobs["train_model"] == N_MODELS // 3
    assert jobs["export_models"] == N_MODELS // 3 // len(DEMO_TRAINERS)  # one job exports every trainer
    assert "node_type=demo-epyc" in text
    assert "node_type=demo-xeon-gold" not in text and "node_type=demo-xeon-e5" not in text


def test_two_clean_builds_with_1_and_2_cores_are_byte_identical(tmp_path):
    """Plain `snakemake --cores 1` from a shell without PYTHONHASHSEED (every step in its own
    interpreter with a random hash seed) and `--cores 2` under the preloaded worker (`make run`,
    PYTHONHASHSEED=0): the same bytes."""
    a = make_workspace(tmp_path / "a")
    b = make_workspace(tmp_path / "b")
    small_config(a, ALL_TRAINERS)  # every trainer's ONNX and archive must be reproducible
    small_config(b, ALL_TRAINERS)
    snakemake(a, "--cores", "1", hashseed=None)
    res = snakemake(b, "--cores", "2", worker=True)
    steps = int(re.search(r"vmpower worker: served (\d+) steps", res.stderr).group(1))
    jobs = int(re.search(r"(\d+) of \1 steps \(100%\) done", res.stdout + res.stderr).group(1))
    assert steps == jobs - 1  # every job but `all` (no command) ran in the worker
    da, db = tree_digest(a / "results"), tree_digest(b / "results")
    assert len(da) > 30
    zips = sorted(p for p in da if p.endswith(".zip"))
    assert {p.rsplit("/", 1)[1].split("Trainer_")[0] for p in zips} == set(ALL_TRAINERS)
    assert len(zips) == 2 * 2 * len(ALL_TRAINERS)  # node types x output types x trainers
    assert da == db
    kinds = {p.rsplit(".", 1)[-1] for p in da}
    assert {"parquet", "zip", "json", "onnx", "csv", "md"} <= kinds


def _json_records(path):
    """A VM file's records, array or JSON Lines (the demo writes both forms)."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    lines = [line for line in text.splitlines() if line.strip()]
    if not text.endswith("\n"):
        lines = lines[:-1]  # a collector killed mid-write (the demo has such files)
    return [json.loads(line) for line in lines]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _vm_drop_times(path):
    recs = [{k: v for k, v in r.items() if k not in ("timestamp_absolute", "timestamp_iso")} for r in _json_records(path)]
    path.write_text(json.dumps(recs))


def _vm_shift_a_day(path):
    recs = _json_records(path)
    for r in recs:
        r["timestamp_absolute"] += 86400.0
        r["timestamp_iso"] = "2025-03-11" + r["timestamp_iso"][10:]
    path.write_text(json.dumps(recs))


def _vm_nan(path):
    # One missing cell only drops its sample (counted); a third of the run fails merge.min_kept_fraction.
    recs = _json_records(path)
    for r in recs[: len(recs) // 3]:
        r["cpu_utilization"] = None
    path.write_text(json.dumps(recs))


def _host_csv(path, edit):
    df = pd.read_csv(path, dtype={"timestamp_iso": str})
    edit(df)
    df.to_csv(path, index=False)


def _host_drop_times(df):
    df.drop(columns=["timestamp_iso"], inplace=True)


def _host_drop_package(df):
    df.drop(columns=["total_cpu_watts_package"], inplace=True)


def _host_nan(df):
    # (a few NaN cells are tolerated and counted since issue 14: tests/test_ingest.py)
    df["total_cpu_watts_package"] = float("nan")


def _host_shift_a_day(df):
    df["timestamp_iso"] = "2025-03-11" + df["timestamp_iso"].str[10:]


# (side, how the file is damaged, the one line expected in the job's log after "<file>: ").
BAD_INPUTS = {
    "vm-truncated": ("vm", _truncate, r"truncated JSON array \(no closing '\]'\)"),
    "vm-empty": ("vm", lambda p: p.write_text(""), r"empty file"),
    "vm-no-times": ("vm", _vm_drop_times, r"no absolute time: needs timestamp_absolute or timestamp_iso"),
    "vm-no-overlap": ("vm", _vm_shift_a_day, r"no time overlap with bm_power_\S+ on the \w+ clock"),
    "vm-nan": ("vm", _vm_nan, r"kept only \d+ of the \d+ VM samples in the host file's time range .*"
                              r"top drop reasons: missing_feature=\d+"),
    "host-truncated": ("host", lambda p: p.write_bytes(p.read_bytes()[:30]), r"(malformed|truncated|no data rows)"),
    "host-empty": ("host", lambda p: p.write_text(""), r"empty file"),
    "host-no-times": ("host", lambda p: _host_csv(p, _host_drop_times),
                      r"no absolute time: needs timestamp_absolute or timestamp_iso"),
    "host-no-overlap": ("host", lambda p: _host_csv(p, _host_shift_a_day), r"no time overlap"),
    "host-missing-zone": ("host", lambda p: _host_csv(p, _host_drop_package),
                          r"missing zone column\(s\) total_cpu_watts_package \(zones present: core, dram, uncore\)"),
    "host-nan": ("host", lambda p: _host_csv(p, _host_nan), r"total_cpu_watts_package has no power value in any"),
}


def test_bad_input_stops_that_job_with_one_line_and_no_outputs(tmp_path):
    """Every kind of bad input, each in its own run: the run's merge job stops with one line
    naming the file and the problem, leaves no output, and the other runs still build."""
    import re

    ws = make_workspace(tmp_path / "bad")
    csv_runs = sorted(p for p in (ws / "data/raw").glob("*/run*") if next(p.glob("bm_power_*.csv"), None))
    json_runs = sorted(p for p in (ws / "data/raw").glob("*/run*") if next(p.glob("bm_power_*.json"), None))
    assert len(csv_runs) >= len(BAD_INPUTS) and json_runs, (csv_runs, json_runs)
    damaged = {}
    for (case, (side, damage, problem)), run in zip(BAD_INPUTS.items(), csv_runs):
        path = next(run.glob("vm_features_*.json" if side == "vm" else "bm_power_*.csv"))
        damage(path)
        damaged[case] = (run, path, problem)
    host_json = next(json_runs[0].glob("bm_power_*.json"))  # the host collector's JSON form
    _truncate(host_json)
    damaged["host-json-truncated"] = (json_runs[0], host_json, r"truncated JSON array")
    intact = [r for r in sorted((ws / "data/raw").glob("*/run*")) if r not in [d[0] for d in damaged.values()]]
    targets = [f"results/merged/{r.parent.name}/{r.name}.parquet" for r in sorted((ws / "data/raw").glob("*/run*"))]
    res = snakemake(ws, "--cores", "2", "--keep-going", *targets, check=False)
    assert res.returncode != 0
    wrong = []
    for case, (run, path, problem) in damaged.items():
        log = (ws / f"logs/merge/{run.parent.name}/{run.name}.log").read_text().strip().splitlines()
        # The line starts with the file at fault; a problem of the pair (no overlap) may name
        # the VM file first and the damaged file after it.
        m = re.fullmatch(r"vmpower merge: error: (\S+): (.*)", log[0]) if len(log) == 1 else None
        if not (m and (ws / m.group(1)).parent == run and path.name in log[0] and re.search(problem, m.group(2))):
            wrong.append(f"{case}: {log}")
        assert not list((ws / f"results/merged/{run.parent.name}").glob(f"{run.name}*")), case
    assert not wrong, "\n".join(wrong)
    for run in intact:  # the undamaged runs were merged (keep-going)
        assert (ws / f"results/merged/{run.parent.name}/{run.name}.parquet").is_file(), run
    # Snakemake shows the failed job's log (profiles/default show-failed-logs): the line is on the console.
    console = res.stdout + res.stderr
    first = damaged["vm-truncated"]
    assert f"{first[1].name}: truncated JSON array" in console
    # nothing half-written anywhere
    assert not [p for p in (ws / "results").rglob(".*") if p.is_file() and p.name != ".snakemake_timestamp"]


def test_predict_loads_a_model_the_workflow_exported(demo):
    from workflow import vmpower

    best = json.loads((demo / "results/best.json").read_text())["demo-epyc"]["AbsPower"]["Full"]
    model_dir = best["archive"].removesuffix(".zip")
    vm = next((demo / "data/raw/demo-epyc/run02-cycling").glob("vm_features_*.json"))
    vmpower(demo, "predict", "--model", model_dir, "--input", str(vm.relative_to(demo)), "--output", "pred.csv")
    pred = pd.read_csv(demo / "pred.csv")
    merged = pd.read_parquet(demo / "results/merged/demo-epyc/run02-cycling.parquet")
    assert pred["power_package"].notna().sum() >= len(merged) - 5
    assert pred["power_package"].mean() == pytest.approx(merged["power_package"].mean(), rel=0.2)
