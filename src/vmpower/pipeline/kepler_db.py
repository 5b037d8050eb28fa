"""`vmpower export-kepler-db`: exported models as a kepler-model-server 0.7.x model pipeline.

The contract, as read in kepler-model-server 0.7.11 (its server, util/loader.py and estimate/model;
restated in docs/deploy.md):

* ``<pipeline>/metadata.json`` marks a pipeline; ``<pipeline>/node_type_index.json`` maps an
  integer node type to ``{"attrs": {processor, cores, chips, memory, frequency}, "members": [...]}``;
* models live in ``<pipeline>/<energy_source>/<OutputType>/<FeatureGroup>/<Trainer>_<int>/``
  with ``<...>.zip`` beside each model directory; the server parses the node type as
  ``int(name.split("_")[-1])`` and the feature group must be one of its enum's names;
* the model directory's ``metadata.json`` is loaded with a JSON hook that turns every object into
  a model: it must be flat (no nested objects) and name ``model_class`` (scikit, xgboost or
  curvefit), ``model_file``, ``features``, ``fe_files``, ``output_type`` and ``mae`` (the server
  ranks by it);
* scikit and curvefit models, and every ``fe_files`` entry, are pickles (joblib.load). XGBoost
  models are read by ``XGBRegressor.load_model`` (JSON, no code executed), one per component when
  ``model_file`` is a ``.json`` map ``{component: {model_file, features, fe_files}}``;
* the weight endpoint (Kepler's local estimator) returns ``weight.json`` only for
  ``SGDRegressorTrainer``.

So this export writes only linear models that have a Kepler weight.json (every input maps to a
Kepler feature, non-negative over the training box; kepler_weights.py), each as a pickle-free
XGBoost ``gblinear`` model in the JSON format of the server's pinned xgboost 2.1, plus weight.json
for SGDRegressor. Tree and KNN models would need pickles (or a rewrite of their thresholds) and
are listed as excluded with the reason, as is every model whose inputs Kepler does not collect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vmpower.errors import InputError
from vmpower.io import dumps_json
from vmpower.names import MANIFEST
from vmpower.pipeline.kepler_weights import KEPLER_FEATURES, WEIGHT_FILE

ENERGY_SOURCE = "rapl-sysfs"
# kepler-model-server 0.7.11's FeatureGroup enum and each group's features (util/train_types.py).
KEPLER_GROUPS = {
    "CounterOnly": {"cache_miss", "cpu_cycles", "cpu_instructions"},
    "BPFOnly": {"bpf_cpu_time_ms", "bpf_page_cache_hit"},
    "IRQOnly": {"bpf_block_irq", "bpf_net_rx_irq", "bpf_net_tx_irq"},
    "Basic": {"cache_miss", "cpu_cycles", "cpu_instructions", "bpf_cpu_time_ms", "bpf_page_cache_hit"},
}
WEIGHT_TRAINERS = {"SGDRegressorTrainer"}  # the server's weight_support_trainers that vmpower trains
COMPONENTS_FILE = "components.json"
SPEC_KEYS = ("processor", "cores", "chips", "memory", "frequency")


def kepler_group(kepler_features: list[str]) -> str | None:
    """The smallest Kepler feature group holding every feature (a request qualifies for a group
    when it sends all of the group's features)."""
    fits = [g for g, fs in KEPLER_GROUPS.items() if set(kepler_features) <= fs]
    return min(fits, key=lambda g: (len(KEPLER_GROUPS[g]), g)) if fits else None


def processor_key(name: str) -> str:
    """A processor brand string in the server's node-spec style: no (R)/CPU/Processor/clock,
    lower case, words joined by '_' (e.g. 'intel_xeon_gold_6338')."""
    s = re.sub(r"\((?:R|r|TM|tm)\)|®|\bCPU\b|\b[Pp]rocessor\b|@|,", " ", str(name or ""))
    s = re.sub(r"\d+-Core|\d+(\.\d+)?\s?[GMgm][Hh]z", " ", s)
    s = re.sub(r"\(.*?\)|\[.*?\]", " ", s)
    return "_".join(s.split()).replace("-", "_").lower().replace("_v", "v")


def node_type_index(specs: dict[str, dict], previous: dict | None) -> dict[str, int]:
    """vmpower node_type -> integer index: indices of ``previous`` (a mapping file written
    before) are kept, new node types get the next free ones in name order."""
    index = {str(k): int(v["index"]) for k, v in (previous or {}).items()}
    nxt = max(index.values(), default=-1) + 1
    for nt in sorted(specs):
        if nt not in index:
            index[nt], nxt = nxt, nxt + 1
    return index


def gblinear_json(weight: np.ndarray, bias: float, kepler_features: list[str]) -> bytes:
    """An XGBoost gblinear model (prediction = bias + sum(weight * x)) in the JSON layout xgboost
    2.1 writes (scalar base_score), which the server's XGBRegressor.load_model reads."""
    doc = {
        "learner": {
            "attributes": {},
            # No names: the server predicts from a bare array (DataFrame.values).
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": {"model": {"boosted_rounds": 1, "weights": [*map(float, weight), float(bias)]},
                                 "name": "gblinear"},
            "learner_model_param": {"base_score": "0E0", "boost_from_average": "0", "num_class": "0",
                                    "num_feature": str(len(kepler_features)), "num_target": "1"},
            "objective": {"name": "reg:squarederror", "reg_loss_param": {"scale_pos_weight": "1"}},
        },
        "version": [2, 1, 1],
    }
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def xgb_predict(model_bytes: bytes, X: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.json"
        p.write_bytes(model_bytes)
        m = xgb.XGBRegressor()
        m.load_model(p)
    return np.asarray(m.predict(X), dtype="float64").ravel()


def check_points(meta: dict) -> np.ndarray:
    """Rows to compare the exported form with the ONNX model: 0 (Kepler's idle input), the
    corners of the training box and 64 seeded points inside it."""
    ranges = meta["training_data"]["feature_ranges"]
    lo = np.array([min(0.0, ranges[f]["min"]) for f in meta["features"]])
    hi = np.array([max(0.0, ranges[f]["max"]) for f in meta["features"]])
    k = len(lo)
    corners = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
    rng = np.random.default_rng(0)
    inner = lo + rng.random((64, k)) * (hi - lo)
    return np.vstack([np.zeros((1, k)), lo + corners * (hi - lo), inner])


def read_models(roots: list[str]) -> list[tuple[Path, dict, dict[str, bytes]]]:
    """Every exported model directory under ``roots`` (manifest-verified): (dir, metadata, files)."""
    from vmpower.pipeline.artifact import read_model_files, verify_manifest

    found = []
    for root in roots:
        dirs = [Path(root)] if (Path(root) / "metadata.json").is_file() else \
            sorted(p.parent for p in Path(root).rglob("metadata.json"))
        if not dirs:
            raise InputError(root, "no exported model (metadata.json) under it")
        for d in dirs:
            files = read_model_files(d)
            verify_manifest(d, files)
            found.append((d, json.loads(files["metadata.json"]), files))
    return found


def exclusion(meta: dict) -> str | None:
    """Why a vmpower model is not exported to the kepler-model-db (None: it is)."""
    if meta.get("status") != "trained":
        return f"not trained ({meta.get('status')})"
    if not meta.get("kepler_weight_file"):
        return meta.get("kepler_weight_reason") or "no Kepler weight.json (exported before it was written)"
    return None


def build_entry(meta: dict, files: dict[str, bytes], index: int, tolerance: float) -> tuple[str, str, dict[str, bytes]]:
    """(Kepler feature group, model name, files of the model directory) for one vmpower model."""
    from vmpower.pipeline.onnx_convert import onnx_predict

    weights = json.loads(files[WEIGHT_FILE])
    kfeat = [KEPLER_FEATURES[f] for f in meta["features"]]
    group = kepler_group(kfeat)
    name = f"{meta['trainer']}_{index}"
    X = check_points(meta)
    out: dict[str, bytes] = {}
    components = {}
    for zone in meta["zones"]:
        aw = weights[zone]["All_Weights"]
        var = aw["Numerical_Variables"]
        slope = np.array([var[k]["weight"] / var[k]["scale"] for k in kfeat])
        model = gblinear_json(slope, aw["Bias_Weight"], kfeat)
        diff = float(np.max(np.abs(xgb_predict(model, X) - onnx_predict(files[f"{zone}.onnx"], X))))
        if not diff <= tolerance:
            raise InputError(meta["model_name"], f"the XGBoost form of {zone} differs from its ONNX model by "
                                                 f"{diff:.3g} W (limit {tolerance} W)")
        out[f"{zone}.xgb.json"] = model
        components[zone] = {"model_file": f"{zone}.xgb.json", "features": kfeat, "fe_files": []}
    out[COMPONENTS_FILE] = dumps_json(components).encode()
    if meta["trainer"] in WEIGHT_TRAINERS:
        out[WEIGHT_FILE] = dumps_json({**weights, "model_name": name}).encode()
    flat = {
        "model_name": name, "model_class": "xgboost", "model_file": COMPONENTS_FILE, "features": kfeat,
        "fe_files": [], "output_type": meta["output_type"], "feature_group": group, "energy_source": ENERGY_SOURCE,
        "node_type": index, "mae": meta["mae"], "mape": meta.get("mape"),
        "vmpower_model_name": meta["model_name"], "vmpower_node_type": meta["node_type"],
        "vmpower_feature_group": meta["feature_group"], "vmpower_features": list(meta["features"]),
        "vmpower_manifest_sha256": hashlib.sha256(files[MANIFEST]).hexdigest(),
        **{f"{z}_mae": meta.get(f"{z}_mae") for z in meta["zones"]},
        **{f"idle_power_watts_{z}": w for z, w in (meta.get("idle_power_watts") or {}).items()},
    }
    out["metadata.json"] = dumps_json(flat).encode()
    return group, name, out


def plan(models, previous: dict | None, tolerance: float) -> tuple[dict, dict, list]:
    """(node_type mapping, {relative path: files}, excluded [{model, reason}])."""
    specs = {m["node_type"]: m.get("machine_spec") or {} for _, m, _ in models}
    index = node_type_index(specs, previous)
    entries: dict[str, tuple[float, dict]] = {}
    excluded = []
    for d, meta, files in models:
        why = exclusion(meta)
        if why:
            excluded.append({"model": f"{meta.get('output_type')}/{meta.get('feature_group')}/{meta.get('model_name')}",
                             "reason": why})
            continue
        group, name, out = build_entry(meta, files, index[meta["node_type"]], tolerance)
        rel = f"{ENERGY_SOURCE}/{meta['output_type']}/{group}/{name}"
        if rel in entries and entries[rel][0] <= meta["mae"]:
            excluded.append({"model": meta["model_name"], "reason": f"{rel} holds a model with a lower mae"})
            continue
        entries[rel] = (meta["mae"], out)
    mapping = {nt: {"index": i, "machine_spec": specs.get(nt, {})} for nt, i in sorted(index.items())}
    return mapping, {k: v[1] for k, v in sorted(entries.items())}, sorted(excluded, key=lambda e: e["model"])


def node_type_index_json(mapping: dict) -> dict:
    """node_type_index.json in the server's form; processor in its node-spec style."""
    out = {}
    for nt, m in mapping.items():
        spec = m["machine_spec"]
        attrs = {k: spec.get(k) for k in SPEC_KEYS}
        if attrs["processor"] is not None:
            attrs["processor"] = processor_key(attrs["processor"])
        out[str(m["index"])] = {"attrs": attrs, "members": [nt]}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def write_db(out: Path, pipeline: str, mapping: dict, entries: dict, excluded: list, zip_date: tuple) -> None:
    """The pipeline directory, replaced whole (built beside it, then renamed)."""
    from vmpower.pipeline.artifact import write_zip

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pipeline}.", dir=out))
    try:
        root = tmp / pipeline
        root.mkdir()
        meta = {"name": pipeline, "version": "0.7", "energy_sources": ENERGY_SOURCE, "exporter": "vmpower export-kepler-db",
                "models": len(entries), "excluded_models": len(excluded)}
        (root / "metadata.json").write_text(dumps_json(meta))
        (root / "node_type_index.json").write_text(dumps_json(node_type_index_json(mapping)))
        (root / "vmpower_node_types.json").write_text(dumps_json(mapping))
        (root / "vmpower_export.json").write_text(dumps_json({"exported": sorted(entries), "excluded": excluded}))
        for rel, files in entries.items():
            d = root / rel
            d.mkdir(parents=True)
            for fname, data in files.items():
                (d / fname).write_bytes(data)
            write_zip(d, d.with_suffix(".zip"), zip_date)
            if WEIGHT_FILE in files:  # kepler-model-db keeps the weights beside the zip too
                d.with_suffix(".json").write_bytes(files[WEIGHT_FILE])
        for p in root.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        final = out / pipeline
        if final.exists():
            shutil.rmtree(final)
        os.replace(root, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_export_kepler_db(args) -> int:
    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    export_cfg = (cfg or {}).get("export") or {}
    pipeline = args.pipeline_name or export_cfg.get("kepler_db_pipeline")
    if not pipeline or "/" in pipeline:
        raise InputError(args.config or "--pipeline-name", "needs a pipeline name (export.kepler_db_pipeline)")
    previous = None
    if args.node_types:
        try:
            previous = json.loads(Path(args.node_types).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(args.node_types, f"not a node_type mapping written by export-kepler-db ({exc})") from None
    models = read_models(args.models)
    mapping, entries, excluded = plan(models, previous, float(export_cfg.get("max_abs_diff_watts", 1e-3)))
    write_db(Path(args.out), pipeline, mapping, entries, excluded, tuple(export_cfg.get("zip_date", (1980, 1, 1, 0, 0, 0))))
    print(f"kepler-model-db pipeline {Path(args.out) / pipeline}: {len(entries)} models, {len(excluded)} excluded "
          f"(reasons in vmpower_export.json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-kepler-db", help="write exported linear models as a kepler-model-server 0.7 pipeline "
                                                "(pickle-free; see docs/deploy.md)")
    p.add_argument("--models", nargs="+", required=True, help="exported model directories, or directories holding them")
    p.add_argument("--out", required=True, help="model top path: the pipeline directory is written inside it")
    p.add_argument("--config", default="config.yaml", help="config.yaml (export.kepler_db_pipeline, export.zip_date)")
    p.add_argument("--pipeline-name", help="pipeline directory name (default: export.kepler_db_pipeline)")
    p.add_argument("--node-types", help="a vmpower_node_types.json written before: keep its integer node types")
    p.set_defaults(func=cmd_export_kepler_db)
