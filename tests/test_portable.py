"""pipeline/portable.py: the tree form read off the exported ONNX graph reproduces onnxruntime."""

import json

import numpy as np
import pytest

from test_kepler_weights import counters, train_export
from vmpower.io import write_parquet
from vmpower.pipeline import portable

FEATURES = ["cpu_cycles", "instructions", "cache_misses", "cpu_utilization"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    data = root / "AbsPower.parquet"
    write_parquet(counters(), data)
    return {t: train_export(root, t, FEATURES, data, group="Activity")
            for t in ("GradientBoostingRegressor", "XGBRegressor", "LinearRegression")}


def _walk(zone: dict, X: np.ndarray) -> np.ndarray:
    """The documented semantics, row by row: float64 scaling, float32 compare and sum."""
    xs = ((X - np.array(zone["mean"])) / np.array(zone["scale"])).astype(np.float32)
    out = np.empty(len(X), np.float32)
    for i, row in enumerate(xs):
        acc = np.float32(0)
        for tree in zone["trees"]:
            k = 0
            while tree["mode"][k] != "LEAF":
                t = np.float32(tree["threshold"][k])
                v = row[tree["feature"][k]]
                k = tree["true"][k] if (v <= t if tree["mode"][k] == "LEQ" else v < t) else tree["false"][k]
            acc = np.float32(acc + np.float32(tree["leaf"][k]))
        out[i] = np.float32(acc + np.float32(zone["base_value"]))
    return out


@pytest.mark.parametrize("trainer", ["GradientBoostingRegressor", "XGBRegressor"])
def test_tree_form_equals_onnxruntime_exactly(exported, trainer):
    import onnxruntime as ort

    d = exported[trainer]
    meta = json.loads((d / "metadata.json").read_text())
    doc = portable.trees_json(meta["model_name"], meta["features"],
                              {z: (d / f"{z}.onnx").read_bytes() for z in meta["zones"]})
    assert doc["format"] == portable.FORMAT and doc["features"] == meta["features"]
    held = counters(runs=2, seed=5)[meta["features"]].to_numpy("float64")
    for zone in meta["zones"]:
        # One thread, as serve runs it: with a pool onnxruntime sums tree batches in another order.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(d / f"{zone}.onnx"), opts, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {"features": held})[0].ravel()
        assert np.array_equal(_walk(doc["zones"][zone], held), ref)  # bit for bit
        trees = doc["zones"][zone]["trees"]
        assert all(c > k for t in trees for k, m in enumerate(t["mode"]) if m != "LEAF" for c in (t["true"][k], t["false"][k]))


def test_other_graphs_are_not_portable(exported):
    d = exported["LinearRegression"]
    with pytest.raises(portable.NotPortable, match="is not"):
        portable.zone_trees((d / "package.onnx").read_bytes())
