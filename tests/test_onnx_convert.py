"""pipeline/onnx_convert.py: fitted pipelines to ONNX, deterministic bytes, predictions equal to the native model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from vmpower.pipeline import onnx_convert, trainers

SMALL = {
    "LinearRegression": {},
    "SGDRegressor": {"max_iter": 200, "tol": 1e-6},
    "GradientBoostingRegressor": {"n_estimators": 8, "max_depth": 2},
    "XGBRegressor": {"n_estimators": 8, "max_depth": 2},
    "KNeighborsRegressor": {"n_neighbors": 3},
}


def data(n=120, seed=0):
    r = np.random.default_rng(seed)
    X = np.column_stack([r.uniform(0, 100, n), r.integers(0, 4, n) * 0.25, r.normal(size=n)])
    y = 0.3 * X[:, 0] + 5 * X[:, 1] + r.normal(scale=0.5, size=n)
    return X, y


def fitted(trainer):
    X, y = data()
    return trainers.make_pipeline(trainer, SMALL[trainer], seed=3).fit(X, y)


@pytest.mark.parametrize("trainer", list(SMALL))
def test_onnx_predict_equals_the_sklearn_pipeline(trainer):
    pipe = fitted(trainer)
    onx = onnx_convert.to_onnx(pipe, 3, trainer, "g", opset=15)
    Q, _ = data(50, seed=9)
    got = onnx_convert.onnx_predict(onx.SerializeToString(), Q)
    assert got.dtype == np.float64 and got.shape == (50,)
    np.testing.assert_allclose(got, pipe.predict(Q), rtol=1e-4, atol=1e-3)
    assert onx.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert onx.graph.name == "g"


@pytest.mark.parametrize("trainer", ["LinearRegression", "XGBRegressor", "KNeighborsRegressor"])
def test_conversion_is_byte_identical_within_a_process(trainer):
    pipe = fitted(trainer)
    a = onnx_convert.to_onnx(pipe, 3, trainer, "g", opset=15).SerializeToString()
    b = onnx_convert.to_onnx(pipe, 3, trainer, "g", opset=15).SerializeToString()
    assert a == b


def test_tree_graphs_cast_to_float32_before_the_trees():
    onx = onnx_convert.to_onnx(fitted("GradientBoostingRegressor"), 3, "GradientBoostingRegressor", "g", 15)
    ops = [n.op_type for n in onx.graph.node]
    assert "Cast" in ops and ops.index("Cast") < ops.index("TreeEnsembleRegressor")
    lin = onnx_convert.to_onnx(fitted("LinearRegression"), 3, "LinearRegression", "g", 15)
    assert "Cast" not in [n.op_type for n in lin.graph.node]


def test_sort_opset_imports_orders_by_domain_then_version():
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []),
                               opset_imports=[onnx.helper.make_opsetid("ai.onnx.ml", 3),
                                              onnx.helper.make_opsetid("", 15),
                                              onnx.helper.make_opsetid("com.x", 1)])
    onnx_convert.sort_opset_imports(m)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 15), ("ai.onnx.ml", 3), ("com.x", 1)]
    onx = onnx_convert.to_onnx(fitted("XGBRegressor"), 3, "XGBRegressor", "g", 15)
    assert [(o.domain, o.version) for o in onx.opset_import] == sorted((o.domain, o.version) for o in onx.opset_import)


_CHILD = """
import hashlib, sys
import numpy as np
sys.path.insert(0, "tests")
from test_onnx_convert import fitted
from vmpower.pipeline import onnx_convert
print(hashlib.sha256(onnx_convert.to_onnx(fitted("XGBRegressor"), 3, "XGBRegressor", "g", 15).SerializeToString()).hexdigest())
"""


def test_bytes_do_not_depend_on_the_hash_seed():
    """skl2onnx's opset_import order follows PYTHONHASHSEED; the sorted imports do not."""
    digests = set()
    for seed in ("0", "1", "7"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
