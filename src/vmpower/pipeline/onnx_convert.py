"""Fitted scaler+model pipelines to ONNX (float64 input), byte-identical whatever the process.

Tree models compare float32 features (scikit-learn and XGBoost cast internally), so their graphs
scale in float64 and cast to float32 before the trees, exactly as the native code does:
predictions then agree to float32 rounding instead of flipping branches.

Byte identity: skl2onnx collects the (domain, version) pairs of a graph's operators in a Python
set and writes opset_import in that set's iteration order, which follows the string hashes of
the domain names, i.e. PYTHONHASHSEED ("" and "ai.onnx.ml" swap places between seeds). The
imports are written in sorted order here; their order means nothing to a runtime.
"""

from __future__ import annotations

import numpy as np


def _register_converters() -> None:
    """XGBoost's converter (onnxmltools) and vmpower's KNN (skl2onnx's KNN converter: the native
    predict follows that graph, see vmpower.pipeline.trainers)."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_regressor_output_shapes
    from skl2onnx.operator_converters.nearest_neighbours import convert_nearest_neighbors_regressor
    from skl2onnx.shape_calculators.nearest_neighbours import calculate_sklearn_nearest_neighbours_regressor
    from xgboost import XGBRegressor

    from vmpower.pipeline.trainers import TieStableKNeighborsRegressor

    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )
    update_registered_converter(
        TieStableKNeighborsRegressor, "VmpowerKNeighborsRegressor",
        calculate_sklearn_nearest_neighbours_regressor, convert_nearest_neighbors_regressor,
        options={"optim": [None]},  # the Scan graph the native predict follows (not CDist)
    )


def _reset_name_counters() -> None:
    """skl2onnx numbers some node names with process-wide counters (KNN's cdist subgraphs), so a
    second conversion in one process would get other names. Reset them: same model, same bytes."""
    from skl2onnx.common import _topology, utils

    _topology.Variable._UNIQUE_NUMBER_ = 0
    utils._unique_index["subgraph"] = 0


def sort_opset_imports(onx) -> None:
    """opset_import in (domain, version) order instead of skl2onnx's set order (hash seeded)."""
    imports = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in imports:
        onx.opset_import.add(domain=domain, version=version)


def to_onnx(pipeline, n_features: int, trainer: str, graph_name: str, opset: int):
    """Convert a fitted scaler+model pipeline to an ONNX ModelProto with a float64 input."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.pipeline import Pipeline

    from vmpower.names import TREE_TRAINERS

    steps = pipeline.steps
    if trainer in TREE_TRAINERS:
        from skl2onnx.sklapi import CastTransformer

        cast = CastTransformer(dtype=np.float32).fit(np.zeros((1, n_features)))
        steps = [steps[0], ("cast", cast), steps[1]]
    _register_converters()
    _reset_name_counters()
    onx = convert_sklearn(
        Pipeline(steps),
        initial_types=[("features", DoubleTensorType([None, n_features]))],
        target_opset={"": opset, "ai.onnx.ml": 3},
    )
    onx.graph.name = graph_name  # skl2onnx puts a random UUID here
    sort_opset_imports(onx)
    return onx


def onnx_predict(model_bytes: bytes, X: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: X})[0]
    return np.asarray(out, dtype="float64").ravel()
