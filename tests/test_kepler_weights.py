"""weight.json as Kepler v0.7.12's linear estimator reads it (src/vmpower/pipeline/kepler_weights.py)."""

import json

import numpy as np
import pytest
import yaml

from vmpower import cli
from vmpower.io import write_parquet
from vmpower.pipeline.kepler_weights import KEPLER_FEATURES

CONFIG = yaml.safe_load(open("config.yaml"))
# The feature names Kepler v0.7.12 configures its estimator with, in an order of ours (Kepler
# iterates its own names; the file's order must not matter).
# Kepler's CounterOnly in vmpower's names (config.yaml's CounterOnly holds more counters).
KEPLER_COUNTERS = ["cpu_cycles", "instructions", "cache_misses"]
KEPLER_NAMES = ["bpf_cpu_time_ms", "cache_miss", "cpu_instructions", "cpu_cycles", "bpf_page_cache_hit"]


def kepler_v07_power(weight_json: dict, zone: str, names: list[str], X: np.ndarray) -> np.ndarray:
    """Kepler v0.7.12's LinearPredictor, re-implemented from reading its Go code: a feature looked
    up by Kepler's name; missing = zero struct; x / scale only when scale != 0 (else 0); a term
    only when weight != 0; plus Bias_Weight. Then W -> mJ as uint64."""
    aw = weight_json[zone]["All_Weights"]
    out = np.full(len(X), float(aw.get("Bias_Weight", 0.0)))
    for j, name in enumerate(names):
        c = aw["Numerical_Variables"].get(name, {})
        scale, weight = float(c.get("scale", 0.0)), float(c.get("weight", 0.0))
        x = X[:, j] / scale if scale != 0 else np.zeros(len(X))
        if weight != 0:
            out = out + weight * x
    return out


def kepler_v07_millijoules(watts: np.ndarray) -> np.ndarray:
    # Go's uint64(float) conversion; a negative value has no defined result, so refuse it here.
    assert (watts >= 0).all(), "Kepler would convert a negative power to uint64"
    return (watts * 1000).astype(np.uint64)


def counters(runs=4, n=120, seed=0):
    """Guest perf counters per 1 s window, power linear in them plus noise."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = []
    for r in range(runs):
        load = rng.uniform(0.05, 1.0, n) if r else rng.uniform(0.0, 0.05, n)
        cyc = load * 2.0e10 + rng.normal(0, 1e8, n)
        ins = cyc * rng.uniform(0.8, 1.6, n)
        miss = load * 3e7 * rng.uniform(0.5, 1.5, n)
        df = pd.DataFrame({"run_id": f"run{r}", "time": 1e9 + r * 1000 + np.arange(n, dtype=float),
                           "t_rel": np.arange(n, dtype=float), "time_delta_seconds": 1.0,
                           "stress_workload": "idle" if r == 0 else "cpu", "cpu_cycles": cyc, "instructions": ins,
                           "cache_misses": miss, "cpu_utilization": load * 100})
        df["power_package"] = 12 + 1.0e-9 * cyc + 2e-10 * ins + 8e-8 * miss + rng.normal(0, 0.3, n)
        df["power_core"] = 4 + 0.9e-9 * cyc + rng.normal(0, 0.2, n)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def train_export(root, trainer, patterns, data, group="CounterOnly", seed=0):
    d = root / f"{trainer}-{group}"
    tset = json.dumps({**CONFIG["train"], "patterns": patterns, "seed": seed})
    assert cli.main(["train", "--dataset", str(data), "--node-type", "nt", "--output-type", "AbsPower",
                     "--feature-group", group, "--trainer", trainer, "--model", str(d / "model.joblib"),
                     "--metrics", str(d / "metrics.json"), "--holdout", str(d / "holdout.parquet"),
                     "--settings", tset]) == 0
    out = d / "out" / f"{trainer}Trainer_nt"
    assert cli.main(["export", "--trainer", trainer, "--model", str(d / "model.joblib"), "--metrics",
                     str(d / "metrics.json"), "--holdout", str(d / "holdout.parquet"), "--node-type", "nt",
                     "--output-type", "AbsPower", "--feature-group", group, "--out-dir", str(out),
                     "--archive", str(out) + ".zip", "--settings", json.dumps(CONFIG["export"])]) == 0
    return out


@pytest.fixture(scope="module")
def counter_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kw")
    data = root / "AbsPower.parquet"
    write_parquet(counters(), data)
    return {t: train_export(root, t, KEPLER_COUNTERS, data) for t in ("LinearRegression", "SGDRegressor")}, root, data


def test_the_mapping_covers_keplers_counter_group():
    # Kepler's CounterOnly is cache_miss, cpu_cycles, cpu_instructions: a group of our three
    # mapped counters is exactly it.
    assert sorted(KEPLER_FEATURES[f] for f in KEPLER_COUNTERS) == ["cache_miss", "cpu_cycles", "cpu_instructions"]


@pytest.mark.parametrize("trainer", ["LinearRegression", "SGDRegressor"])
def test_kepler_formula_on_weight_json_equals_onnx_on_held_out_rows(counter_models, trainer):
    import onnxruntime as ort

    models, _root, _data = counter_models
    d = models[trainer]
    meta = json.loads((d / "metadata.json").read_text())
    w = json.loads((d / "weight.json").read_text())
    assert meta["kepler_weight_file"] == "weight.json" and meta["kepler_weight_reason"] is None
    assert w["model_name"] == f"{trainer}Trainer_nt" and set(w) == {"model_name", "package", "core"}
    # Only Kepler's names in the file: none Kepler would skip.
    assert set(w["package"]["All_Weights"]["Numerical_Variables"]) == {"cpu_cycles", "cpu_instructions", "cache_miss"}
    held = counters(runs=2, seed=7)  # fresh rows, never trained on
    X_ours = held[meta["features"]].to_numpy("float64")
    X_kepler = np.column_stack([held[{v: k for k, v in KEPLER_FEATURES.items()}[n]] if n in KEPLER_FEATURES.values()
                                else np.full(len(held), 123.0) for n in KEPLER_NAMES])
    for zone in ("package", "core"):
        sess = ort.InferenceSession(str(d / f"{zone}.onnx"), providers=["CPUExecutionProvider"])
        onnx = sess.run(None, {"features": X_ours})[0].ravel()
        kepler = kepler_v07_power(w, zone, KEPLER_NAMES, X_kepler)
        assert np.max(np.abs(kepler - onnx)) < 1e-9 * max(1.0, np.abs(onnx).max())
        # Idle (every feature 0) is the bias, non-negative, and survives the uint64 conversion.
        idle = kepler_v07_power(w, zone, KEPLER_NAMES, np.zeros((1, len(KEPLER_NAMES))))
        assert idle[0] == w[zone]["All_Weights"]["Bias_Weight"] >= 0
        assert kepler_v07_millijoules(idle)[0] == np.uint64(idle[0] * 1000)


def test_unmapped_inputs_get_no_weight_json_and_a_reason(counter_models):
    _models, root, data = counter_models
    d = train_export(root, "LinearRegression", ["cpu_cycles", "cpu_utilization"], data, group="Activity")
    meta = json.loads((d / "metadata.json").read_text())
    assert not (d / "weight.json").exists() and meta["kepler_weight_file"] is None
    assert meta["kepler_weight_reason"].startswith("inputs without a Kepler v0.7 feature: cpu_utilization")
    tree = train_export(root, "XGBRegressor", KEPLER_COUNTERS, data)
    tmeta = json.loads((tree / "metadata.json").read_text())
    assert not (tree / "weight.json").exists() and "not a linear model" in tmeta["kepler_weight_reason"]


def test_negative_bias_is_refused(tmp_path):
    """Kepler converts W*1000 to uint64: a model whose idle (bias) is negative gets no weight.json."""
    df = counters()
    df["power_package"] = -5 + 1.5e-9 * df["cpu_cycles"]  # negative at zero activity
    data = tmp_path / "neg.parquet"
    write_parquet(df, data)
    d = train_export(tmp_path, "LinearRegression", ["cpu_cycles"], data)
    meta = json.loads((d / "metadata.json").read_text())
    assert not (d / "weight.json").exists()
    assert meta["kepler_weight_reason"].startswith("package Bias_Weight -5 W < 0")
