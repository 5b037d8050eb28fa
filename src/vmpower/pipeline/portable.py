"""A portable JSON form of an exported tree-ensemble model, for native (Go) inference.

Read from the exported ONNX graph itself (Sub mean -> Div scale -> Cast float -> TreeEnsembleRegressor),
so the JSON holds exactly the numbers onnxruntime evaluates: float64 scaling, float32 thresholds,
leaf weights and base value. deploy/go evaluates it with the same float32 arithmetic, in tree order, and matches
onnxruntime run on one thread as serve runs it (tests/test_go_inference.py); with a thread pool
onnxruntime sums batches of trees in another order, a float32 rounding apart. Linear models go to Go through weight.json; KNN stays
ONNX-only (its graph is a distance search, not a portable tree).
"""

from __future__ import annotations

TREES_FILE = "trees.json"
FORMAT = "vmpower-trees/1"
_CHAIN = ["Sub", "Div", "Cast", "TreeEnsembleRegressor"]
_MODES = {b"BRANCH_LEQ": "LEQ", b"BRANCH_LT": "LT", b"LEAF": "LEAF"}


class NotPortable(ValueError):
    """The graph is not the scaler + tree-ensemble chain this form covers."""


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _tree(attrs: dict, tree_id: int) -> dict:
    """One tree as parallel arrays indexed by node id; a leaf's weight is the sum of its targets."""
    ids = [i for i, t in enumerate(attrs["nodes_treeids"]) if t == tree_id]
    n = max(attrs["nodes_nodeids"][i] for i in ids) + 1
    out = {"feature": [0] * n, "threshold": [0.0] * n, "mode": ["LEAF"] * n, "true": [0] * n,
           "false": [0] * n, "missing_true": [0] * n, "leaf": [0.0] * n}
    missing = attrs.get("nodes_missing_value_tracks_true") or [0] * len(attrs["nodes_treeids"])
    for i in ids:
        k = attrs["nodes_nodeids"][i]
        mode = _MODES.get(attrs["nodes_modes"][i])
        if mode is None:
            raise NotPortable(f"tree {tree_id}: node mode {attrs['nodes_modes'][i]!r} is not covered")
        out["mode"][k], out["feature"][k] = mode, int(attrs["nodes_featureids"][i])
        out["threshold"][k] = float(attrs["nodes_values"][i])  # a float32 value, exact in JSON
        out["true"][k], out["false"][k] = int(attrs["nodes_truenodeids"][i]), int(attrs["nodes_falsenodeids"][i])
        out["missing_true"][k] = int(missing[i])
    for t, k, w in zip(attrs["target_treeids"], attrs["target_nodeids"], attrs["target_weights"]):
        if t == tree_id:
            out["leaf"][k] = float(w)  # one target: one weight per leaf (checked in zone_trees)
    return out


def zone_trees(onnx_bytes: bytes) -> dict:
    """The portable form of one zone's ONNX model (raises NotPortable for another graph)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    if [n.op_type for n in graph.node] != _CHAIN:
        raise NotPortable(f"graph {[n.op_type for n in graph.node]} is not {_CHAIN}")
    sub, div, cast, trees = graph.node
    const = _constants(graph)
    if _attributes(cast)["to"] != onnx.TensorProto.FLOAT:
        raise NotPortable("the trees do not take float32 input")
    attrs = _attributes(trees)
    if attrs.get("n_targets", 1) != 1 or attrs.get("post_transform", b"NONE") != b"NONE" \
            or attrs.get("aggregate_function", b"SUM") != b"SUM" or "nodes_values_as_tensor" in attrs:
        raise NotPortable("only single-target summed ensembles without a post transform are covered")
    leaves = list(zip(attrs["target_treeids"], attrs["target_nodeids"]))
    if len(set(leaves)) != len(leaves):
        raise NotPortable("a leaf has several weights")
    tree_ids = sorted(set(attrs["nodes_treeids"]))
    return {
        "mean": [float(v) for v in const[sub.input[1]]],
        "scale": [float(v) for v in const[div.input[1]]],
        "base_value": float((attrs.get("base_values") or [0.0])[0]),
        "trees": [_tree(attrs, t) for t in tree_ids],
    }


def trees_json(model_name: str, features: list[str], onnx_by_zone: dict[str, bytes]) -> dict:
    """The trees.json document of a model: its features (input order) and one ensemble per zone."""
    return {"format": FORMAT, "model_name": model_name, "features": list(features),
            "zones": {zone: zone_trees(data) for zone, data in sorted(onnx_by_zone.items())}}
