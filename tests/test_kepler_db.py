"""`vmpower export-kepler-db` against kepler-model-server 0.7.11's loader contract, as read in its
code (server/model_server.py, util/loader.py, estimate/model/*.py) and re-stated here as checks."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from test_kepler_weights import CONFIG, KEPLER_COUNTERS, counters, train_export
from vmpower import cli
from vmpower.io import write_parquet

# The server's FeatureGroup enum, weight-serving trainers and model classes (0.7.11).
FEATURE_GROUPS = {"Full", "WorkloadOnly", "CounterOnly", "BPFOnly", "IRQOnly", "CounterIRQCombined", "Basic",
                  "BPFIRQ", "AcceleratorOnly", "ThirdParty", "Unknown"}
WEIGHT_TRAINERS = {"SGDRegressorTrainer", "LogarithmicRegressionTrainer", "LogisticRegressionTrainer",
                   "ExponentialRegressionTrainer"}
MODEL_CLASSES = {"scikit", "xgboost", "curvefit"}
REQUIRED = ("model_class", "model_name", "output_type", "model_file", "features")


def load_model_like_the_server(model_dir: Path):
    """The server's load_model: every JSON object of metadata.json goes through a hook that builds
    a model from it (so a nested object fails); then the xgboost estimator: a '.json' model_file is
    a component map, each component read by XGBRegressor.load_model; fe_files would be pickles."""
    import xgboost as xgb

    built = []

    def hook(d):
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise TypeError(f"Model() missing {missing}")
        built.append(d)
        return d

    meta = json.loads((model_dir / "metadata.json").read_text(), object_hook=hook)
    assert len(built) == 1
    assert meta["model_class"] in MODEL_CLASSES and meta["model_class"] == "xgboost"
    assert meta.get("fe_files", []) == []
    assert ".json" in meta["model_file"]
    comps = json.loads((model_dir / meta["model_file"]).read_text())
    models = {}
    for comp, info in comps.items():
        assert info["fe_files"] == []
        m = xgb.XGBRegressor(n_estimators=1000, learning_rate=0.1)
        m.load_model(str(model_dir / info["model_file"]))
        models[comp] = (m, info["features"])
    return meta, models


def predict_like_the_server(models, datapoint):
    out = {}
    for comp, (m, features) in models.items():
        y = m.predict(datapoint[features].values).squeeze()
        y[y < 0] = 0
        out[comp] = np.asarray(y, dtype="float64")
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("kdb")
    data = root / "AbsPower.parquet"
    write_parquet(counters(), data)
    models = {t: train_export(root, t, KEPLER_COUNTERS, data) for t in ("LinearRegression", "SGDRegressor", "XGBRegressor")}
    models["Activity"] = train_export(root, "LinearRegression", ["cpu_cycles", "cpu_utilization"], data, group="Activity")
    # Give the test node type a machine spec, as export --machine-spec records it.
    for d in models.values():
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["node_type"] == "nt"
    outs = []
    for copy in ("a", "b"):
        out = root / copy
        assert cli.main(["export-kepler-db", "--models", *map(str, models.values()), "--out", str(out)]) == 0
        outs.append(out / CONFIG["export"]["kepler_db_pipeline"])
    return models, outs


def test_layout_and_flat_metadata_follow_the_servers_contract(db):
    models, (pipe, _) = db
    # A pipeline is a directory with metadata.json; energy source rapl-sysfs ("rapl" requests).
    assert (pipe / "metadata.json").is_file() and (pipe / "rapl-sysfs").is_dir()
    index = json.loads((pipe / "node_type_index.json").read_text())
    mapping = json.loads((pipe / "vmpower_node_types.json").read_text())
    assert mapping == {"nt": {"index": 0, "machine_spec": {}}}
    assert {int(k) for k in index} == {0} and index["0"]["members"] == ["nt"]
    assert set(index["0"]["attrs"]) == {"processor", "cores", "chips", "memory", "frequency"}
    model_dirs = sorted(p for p in (pipe / "rapl-sysfs").glob("*/*/*") if p.is_dir())
    assert [p.relative_to(pipe).as_posix() for p in model_dirs] == [
        "rapl-sysfs/AbsPower/CounterOnly/LinearRegressionTrainer_0",
        "rapl-sysfs/AbsPower/CounterOnly/SGDRegressorTrainer_0",
    ]
    for d in model_dirs:
        output_type, group = d.parent.parent.name, d.parent.name
        assert output_type in ("AbsPower", "DynPower") and group in FEATURE_GROUPS
        node_type = int(d.name.split("_")[-1])  # the server's parse; must not raise
        assert str(node_type) in index
        assert d.with_suffix(".zip").is_file()
        meta = json.loads((d / "metadata.json").read_text())
        assert not any(isinstance(v, dict) for v in meta.values())
        assert isinstance(meta["mae"], float) and meta["model_name"] == d.name
        with zipfile.ZipFile(d.with_suffix(".zip")) as zf:
            assert sorted(zf.namelist()) == sorted(p.name for p in d.iterdir())
        # The weight endpoint lists trainers by name.split("_")[0]: only SGD gets weight.json.
        served = d.name.split("_")[0] in WEIGHT_TRAINERS
        assert (d / "weight.json").exists() == served == (d.name.startswith("SGD"))
        if served:
            w = json.loads((d / "weight.json").read_text())
            assert w["model_name"] == d.name and set(w) == {"model_name", "package", "core"}
            assert d.with_suffix(".json").read_bytes() == (d / "weight.json").read_bytes()


def test_no_pickle_anywhere_and_the_export_is_reproducible(db):
    _models, (a, b) = db
    files = sorted(p for p in a.rglob("*") if p.is_file())
    for p in files:
        data = p.read_bytes()
        assert p.suffix in (".json", ".zip")
        assert not data.startswith(b"\x80"), f"{p} looks like a pickle"
        if p.suffix == ".json":
            json.loads(data)
        assert data == (b / p.relative_to(a)).read_bytes()


def test_server_style_loading_predicts_what_the_onnx_model_does(db):
    import onnxruntime as ort

    models, (pipe, _) = db
    held = counters(runs=2, seed=11)
    kepler = held.rename(columns={"instructions": "cpu_instructions", "cache_misses": "cache_miss"})
    for trainer in ("LinearRegression", "SGDRegressor"):
        d = pipe / "rapl-sysfs" / "AbsPower" / "CounterOnly" / f"{trainer}Trainer_0"
        meta, loaded = load_model_like_the_server(d)
        assert meta["vmpower_model_name"] == f"{trainer}Trainer_nt"
        got = predict_like_the_server(loaded, kepler)
        ours = json.loads((models[trainer] / "metadata.json").read_text())
        X = held[ours["features"]].to_numpy("float64")
        for zone in ("package", "core"):
            sess = ort.InferenceSession(str(models[trainer] / f"{zone}.onnx"), providers=["CPUExecutionProvider"])
            onnx = sess.run(None, {"features": X})[0].ravel()
            assert np.max(np.abs(got[zone] - onnx)) < 1e-3  # XGBoost predicts in float32


def test_excluded_models_are_listed_with_their_reason(db):
    _models, (pipe, _) = db
    report = json.loads((pipe / "vmpower_export.json").read_text())
    reasons = {e["model"]: e["reason"] for e in report["excluded"]}
    assert reasons["AbsPower/CounterOnly/XGBRegressorTrainer_nt"].startswith("not a linear model")
    assert reasons["AbsPower/Activity/LinearRegressionTrainer_nt"].startswith("inputs without a Kepler v0.7 feature")
    assert report["exported"] == ["rapl-sysfs/AbsPower/CounterOnly/LinearRegressionTrainer_0",
                                  "rapl-sysfs/AbsPower/CounterOnly/SGDRegressorTrainer_0"]


def test_node_type_indices_are_kept_from_a_previous_mapping(db, tmp_path, capsys):
    models, (pipe, _) = db
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"other": {"index": 0, "machine_spec": {}}, "nt": {"index": 4, "machine_spec": {}}}))
    assert cli.main(["export-kepler-db", "--models", str(models["SGDRegressor"]), "--out", str(tmp_path / "o"),
                     "--node-types", str(prev)]) == 0
    assert (tmp_path / "o" / CONFIG["export"]["kepler_db_pipeline"] / "rapl-sysfs" / "AbsPower" / "CounterOnly"
            / "SGDRegressorTrainer_4").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["export-kepler-db", "--models", str(empty), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vmpower export-kepler-db: error: {empty}: no exported model (metadata.json) under it"]
    assert not (tmp_path / "x").exists()


def test_processor_names_in_the_servers_node_spec_style():
    from vmpower.pipeline.kepler_db import processor_key

    assert processor_key("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz") == "intel_xeon_gold_6338"
    assert processor_key("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz") == "intel_xeon_e5_2680v4"
    assert processor_key("AMD EPYC 7763 64-Core Processor") == "amd_epyc_7763"
