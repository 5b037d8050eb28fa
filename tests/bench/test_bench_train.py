"""Training and export time per trainer on 1 M rows, and ONNX inference throughput vs the
native model (``make bench``), written to results/bench/train.json.

The data set is synthetic (10 runs x 100 k rows, 16 features, two zones) so the numbers
measure the code, not the demo. Training is the pipeline's ``train.train`` with the config's
settings (leave-one-run-out over 10 folds, ``max_train_rows`` subsample per fit, the
hyperparameter grids of ``train.search``); export is ``vmpower export`` (ONNX conversion, the
onnxruntime-vs-native check on a 20 k-row sample of the held-out rows — KNN's ONNX graph builds
a rows x training-rows distance matrix — and the archive).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import results
from vmpower import cli
from vmpower.pipeline import train
from vmpower.io import write_parquet

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "bench" / "train.json"

ROWS = int(os.environ.get("VMPOWER_BENCH_TRAIN_ROWS", "1000000"))
CFG = yaml.safe_load((ROOT / "config.yaml").read_text())
TRAINERS = CFG["train"]["trainers"]
FEATURES = [f"f{i:02d}" for i in range(16)]


def record(section: str, values: dict) -> None:
    results.record(OUT, section, values)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    runs = 10
    n = ROWS // runs
    X = rng.uniform(0, 1, (ROWS, len(FEATURES)))
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "run_id", np.repeat([f"run{r:02d}" for r in range(runs)], n))
    df.insert(1, "time", np.tile(np.arange(n, dtype=float), runs))
    df.insert(2, "t_rel", df["time"])
    df.insert(3, "time_delta_seconds", 1.0)
    df.insert(4, "stress_workload", "x")
    u = X[:, 0]
    df["power_package"] = 10 + 40 * u + 8 * u**2 + 5 * X[:, 1] * X[:, 2] + rng.normal(0, 0.8, ROWS)
    df["power_core"] = 8 + 30 * u + 4 * X[:, 3] + rng.normal(0, 0.6, ROWS)
    return df


@pytest.mark.parametrize("trainer", TRAINERS)
def test_train_and_export(benchmark, data, tmp_path, trainer):
    settings = {**CFG["train"], "patterns": FEATURES}
    models, report, holdout = benchmark.pedantic(
        train.train, args=(data, trainer, FEATURES, train.TrainSettings.build(settings), {}, "bench"), rounds=1, iterations=1)
    t_train = benchmark.stats.stats.min
    assert report["status"] == "trained"
    d = tmp_path / trainer
    d.mkdir()
    import joblib

    joblib.dump({"features": report["features"], "zones": report["zones"], "models": models}, d / "model.joblib")
    (d / "metrics.json").write_text(json.dumps({**report, "node_type": "bench"}, default=str))
    sample = holdout.iloc[train.even_subsample(len(holdout), 20_000)]
    write_parquet(sample.reset_index(drop=True), d / "holdout.parquet")
    t0 = time.perf_counter()
    assert cli.main(["export", "--model", str(d / "model.joblib"), "--metrics", str(d / "metrics.json"),
                     "--holdout", str(d / "holdout.parquet"), "--node-type", "bench", "--output-type", "AbsPower",
                     "--feature-group", "Bench", "--trainer", trainer, "--out-dir", str(d / "m"),
                     "--archive", str(d / "m.zip"), "--settings", json.dumps(CFG["export"])]) == 0
    t_export = time.perf_counter() - t0

    # Inference throughput, package zone, batches of 10 k rows.
    import onnxruntime as ort

    X = data[FEATURES].to_numpy("float64")[:10_000]
    pipe = models["package"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(d / "m" / "package.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])

    def rate(fn, reps=3):
        best = min(_timed(fn) for _ in range(reps))
        return len(X) / best

    native = rate(lambda: pipe.predict(X))
    onnx = rate(lambda: sess.run(None, {"features": X}))
    one = X[:1]
    lat_native = min(_timed(lambda: pipe.predict(one)) for _ in range(50))
    lat_onnx = min(_timed(lambda: sess.run(None, {"features": one})) for _ in range(50))
    record(trainer, {"rows": ROWS, "train_seconds": t_train, "export_seconds": t_export,
                     "heldout_mae_package": report["metrics"]["package"]["mae"],
                     "chosen_params_package": report["chosen_params"]["package"],
                     "native_rows_per_s": native, "onnx_rows_per_s": onnx,
                     "native_1row_ms": lat_native * 1e3, "onnx_1row_ms": lat_onnx * 1e3})


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
