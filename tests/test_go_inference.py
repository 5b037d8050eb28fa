"""deploy/go (native Go inference, EP-003 FR3) against onnxruntime on held-out rows.

Python exports real models (linear: weight.json; gradient boosting and XGBoost: trees.json),
runs each in onnxruntime through serving's own loader, writes the rows and watts, and
`go test` in deploy/go must reproduce every watt within 1e-6 W.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_kepler_weights import KEPLER_COUNTERS, counters, train_export
from vmpower.io import write_parquet
from vmpower.pipeline.kepler_weights import KEPLER_FEATURES
from vmpower.serving.artifact import Model

pytestmark = pytest.mark.slow

GO_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "deploy", "go")
ACTIVITY = ["cpu_cycles", "instructions", "cache_misses", "cpu_utilization"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("go")
    data = root / "AbsPower.parquet"
    write_parquet(counters(), data)
    out = {t: train_export(root, t, KEPLER_COUNTERS, data) for t in ("LinearRegression", "SGDRegressor")}
    out |= {t: train_export(root, t, ACTIVITY, data, group="Activity") for t in ("GradientBoostingRegressor", "XGBRegressor")}
    return out


def _case(model_dir, held):
    model = Model.load(model_dir)
    watts = model.predict(held[model.features].to_numpy("float64"))
    names = model.features
    if (model_dir / "weight.json").is_file() and not (model_dir / "trees.json").is_file():
        names = [KEPLER_FEATURES[f] for f in model.features]  # weight.json speaks Kepler's names
    rows = [dict(zip(names, map(float, r))) for r in held[model.features].to_numpy("float64")]
    return {"model_dir": str(model_dir), "version": model.version, "zones": model.zones, "rows": rows,
            "watts": [dict(zip(model.zones, map(float, w))) for w in watts]}


def test_export_writes_the_native_form_go_needs(models):
    for trainer in ("GradientBoostingRegressor", "XGBRegressor"):
        doc = json.loads((models[trainer] / "trees.json").read_text())
        meta = json.loads((models[trainer] / "metadata.json").read_text())
        assert meta["trees_file"] == "trees.json" and doc["features"] == meta["features"]
        assert doc["format"] == "vmpower-trees/1" and set(doc["features"]) == set(ACTIVITY)
        assert set(doc["zones"]) == {"package", "core"} and all(doc["zones"][z]["trees"] for z in doc["zones"])
    for trainer in ("LinearRegression", "SGDRegressor"):
        assert (models[trainer] / "weight.json").is_file() and not (models[trainer] / "trees.json").exists()


def test_go_matches_onnxruntime_on_held_out_rows(models, tmp_path):
    go = shutil.which("go")
    assert go, "golang-go is not installed (make test installs it: envs/debian.txt)"
    held = counters(runs=3, seed=11)  # rows never trained on, some beyond the training range
    held.loc[held.index[:20], ACTIVITY] *= 1.5
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([_case(models[t], held) for t in sorted(models)]))
    env = {**os.environ, "VMPOWER_GO_CASES": str(cases), "GOCACHE": str(tmp_path / "gocache"),
           "GOPATH": str(tmp_path / "gopath"), "GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0"}
    proc = subprocess.run([go, "test", "-count=1", "-v", "./..."], cwd=GO_DIR, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "--- PASS: TestMatchesOnnxruntime" in proc.stdout and "--- SKIP" not in proc.stdout
    assert proc.stdout.count("max |Go - onnxruntime|") == len(models)
