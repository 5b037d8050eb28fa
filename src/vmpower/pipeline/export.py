"""Export trained models: one ONNX file per zone (scaler + model), checked against the native
model with onnxruntime, packed into a zip archive with Kepler v0.7's weight.json where Kepler
can read one (kepler_weights.py; kepler_db.py exports for kepler-model-server). The archive
format (manifest, deterministic zip) is vmpower.pipeline.artifact's; the best models are picked
by vmpower.pipeline.selection.

ONNX inputs are float64, like the native pipelines (conversion: vmpower.pipeline.onnx_convert). A model
whose ONNX files do not reproduce it is exported with status onnx_mismatch (metadata and
manifest, no ONNX file): it is never selected, and its group's other models still export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from vmpower import settings as settings_mod
from vmpower.errors import InputError
from vmpower.fingerprint import input_checksums, package_versions
from vmpower.io import dumps_json
from vmpower.names import model_name
from vmpower.pipeline.artifact import write_model
from vmpower.pipeline.onnx_convert import onnx_predict, to_onnx


@dataclasses.dataclass(frozen=True)
class ExportSettings(settings_mod.Section):
    """config.yaml's export section (the keys an export job reads)."""

    max_abs_diff_watts: float
    onnx_opset: int
    zip_date: tuple


class Slot(NamedTuple):
    """What the models of one export job share: node_type, output type, feature group."""

    node_type: str
    output_type: str
    feature_group: str


def training_data(features: list[str], report: dict, holdout: pd.DataFrame, dataset: str | None) -> dict:
    """metadata.json's training_data (rows, newest time, per-feature [min, max]): what train
    recorded over its training rows. With ``dataset``, recomputed from that data set's rows
    having every feature train selected before it dropped the constant ones
    (train.select_features), which checks that the data set is the one trained on. Metrics from
    before train recorded it fall back to the held-out rows, which are the same rows whenever the
    model was evaluated leave-one-run-out (two runs or more)."""
    from vmpower.pipeline.train import training_data as summarise

    if dataset:
        dropped = (report.get("feature_report") or {}).get("dropped") or {}
        selected = features + [f for f, why in dropped.items() if str(why).startswith("constant")]
        import pyarrow.parquet as pq

        have = set(pq.read_schema(dataset).names)
        lacking = [c for c in ["time", *selected] if c not in have]
        if lacking:
            raise InputError(dataset, f"data set lacks column {lacking[0]} of the model")
        df = pd.read_parquet(dataset, columns=["time", *selected])
        rows = df.loc[df[selected].notna().all(axis=1), ["time", *features]]
        if len(rows) != report["rows_train"]:
            raise InputError(dataset, f"has {len(rows)} rows with the model's features, the training report says "
                                      f"{report['rows_train']}: not the data set the model was trained on")
        return summarise(rows, features, report["rows_train"], "dataset")
    if report.get("training_data"):
        return report["training_data"]
    return summarise(holdout, features, report["rows_train"], "holdout")


def isolation_info(path: str) -> dict:
    """The isolator of a DynPower model (isolate stage's isolation.json): method and idle watts."""
    try:
        info = json.loads(Path(path).read_text())
        return {"isolator": str(info["method"]), "idle_power_watts": {str(z): float(w) for z, w in info["idle_power_watts"].items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(path, f"not an isolation.json with method and idle_power_watts ({exc})") from None


def shared_inputs(output_type: str, first_model: str, machine_specs: list[str], isolation: list[str],
                  dataset: str | None, lock: str | None) -> dict:
    """What every model of one export call shares, read once: the machine spec, the DynPower
    isolator, and the shared part of the provenance. ``first_model`` names errors about
    isolation."""
    if output_type == "DynPower":
        if len(isolation) != 1:
            raise InputError(first_model, "a DynPower model needs --isolation with its node_type's isolation.json "
                                          "(which idle power was subtracted)")
        isolator = isolation_info(isolation[0])
    elif isolation:
        raise InputError(isolation[0], f"--isolation is for DynPower models, not {output_type}")
    else:
        isolator = {}
    return {
        "machine_spec": json.loads(Path(sorted(machine_specs)[0]).read_text()) if machine_specs else {},
        "isolator": isolator,
        "dataset": dataset,
        "inputs": input_checksums([*machine_specs, *([dataset] if dataset else []), *isolation]),
        "environment_lock": input_checksums([lock])[Path(lock).as_posix()] if lock else None,
        "packages": package_versions(),
    }


def onnx_files(bundle: dict, holdout: pd.DataFrame, trainer: str, name: str, settings: ExportSettings):
    """ONNX bytes per zone, each checked against the native model on the held-out rows.
    Returns (files, check per zone, failure): failure is None, or (status, reason) when a zone's
    ONNX differs by more than export.max_abs_diff_watts (onnx_mismatch: no file is kept) or
    cannot be converted or run (onnx_failed). Either fails this model only."""
    features, limit = bundle["features"], settings.max_abs_diff_watts
    X = holdout[features].to_numpy("float64")
    files, info = {}, {}
    for zone in bundle["zones"]:
        pipe = bundle["models"][zone]
        try:
            data = to_onnx(pipe, len(features), trainer, f"{name}_{zone}", settings.onnx_opset).SerializeToString()
            diff = float(np.max(np.abs(onnx_predict(data, X) - pipe.predict(X)))) if len(X) else 0.0
        except Exception as exc:  # noqa: BLE001 - a converter/runtime failure fails this model, not the job
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return {}, info, ("onnx_failed", f"ONNX {zone} model: {type(exc).__name__}: {why}"[:300])
        files[f"{zone}.onnx"] = data
        info[zone] = {"file": f"{zone}.onnx", "max_abs_diff_watts": diff, "checked_rows": int(len(X))}
    bad = [z for z, v in info.items() if not v["max_abs_diff_watts"] <= limit]  # NaN fails too
    if bad:
        worst = max(bad, key=lambda z: np.nan_to_num(info[z]["max_abs_diff_watts"], nan=np.inf))
        for zone in info:
            info[zone]["file"] = None
        return {}, info, ("onnx_mismatch", f"ONNX {worst} model differs from the native model by "
                                           f"{info[worst]['max_abs_diff_watts']:.3g} W on held-out rows (limit {limit:g} W)")
    return files, info, None


def _trained_metadata(report: dict, onnx_info: dict, training: dict) -> dict:
    """metadata.json's part of a trained model: held-out metrics, search, ONNX check, training data."""
    metrics = report["metrics"]
    return {
        "mae": report["mae_mean"],
        "mape": float(np.mean([m["mape"] for m in metrics.values() if m["mape"] is not None] or [np.nan])),
        **{f"{z}_mae": m["mae"] for z, m in metrics.items()},
        **{f"{z}_mape": m["mape"] for z, m in metrics.items()},
        "metrics": metrics,
        "evaluation": report["evaluation"],
        "params": report["params"],
        # Hyperparameters chosen per zone by the search inside the training split.
        "chosen_params": report.get("chosen_params"),
        # Parameters the data could not take, and what the fit did to its rows (KNN).
        "adapted_params": report.get("adapted_params") or None,
        "final_fit": report.get("final_fit") or None,
        "search": ({k: v for k, v in report["search"].items() if k != "per_zone"} if report.get("search") else None),
        "onnx": onnx_info,
        "training_data": training,
    }


def _kepler_weights(trainer: str, bundle: dict, metadata: dict, files: dict[str, bytes]) -> None:
    """Kepler v0.7's weight.json (in Kepler's feature names) into ``files``, or the reason there is none."""
    from vmpower.pipeline.trainers import TRAINERS

    if not TRAINERS[trainer].linear:
        metadata["kepler_weight_file"] = None
        metadata["kepler_weight_reason"] = "not a linear model (Kepler v0.7 reads weights of linear models only)"
        return
    from vmpower.pipeline.kepler_weights import WEIGHT_FILE, kepler_weight_json

    ranges = metadata["training_data"].get("feature_ranges")
    weights, why = kepler_weight_json(bundle["models"], metadata["features"], metadata["zones"],
                                      metadata["model_name"], ranges)
    metadata["kepler_weight_file"] = WEIGHT_FILE if weights else None
    metadata["kepler_weight_reason"] = why
    if weights:
        files[WEIGHT_FILE] = dumps_json(weights).encode()


def _native_trees(trainer: str, metadata: dict, files: dict[str, bytes]) -> None:
    """trees.json, the form native (Go) inference reads, for tree ensembles (pipeline/portable.py)."""
    from vmpower.names import TREE_TRAINERS

    metadata["trees_file"] = None
    if trainer not in TREE_TRAINERS:
        return
    from vmpower.pipeline import portable

    onnx = {z: files[f"{z}.onnx"] for z in metadata["zones"]}
    try:
        doc = portable.trees_json(metadata["model_name"], metadata["features"], onnx)
    except portable.NotPortable as exc:  # recorded: the model then runs with ONNX only
        metadata["trees_file_reason"] = str(exc)
        return
    files[portable.TREES_FILE] = dumps_json(doc).encode()
    metadata["trees_file"] = portable.TREES_FILE


def _base_metadata(name: str, trainer: str, slot: Slot, bundle: dict, report: dict, shared: dict) -> dict:
    features = bundle["features"]
    return {
        "model_name": name,
        "trainer": f"{trainer}Trainer",
        "model_class": "onnx",
        "node_type": slot.node_type,
        "output_type": slot.output_type,
        "feature_group": slot.feature_group,
        "features": features,
        "fe_files": [],
        "zones": bundle["zones"],
        "machine_spec": shared["machine_spec"],
        "status": report["status"],
        "input": {"name": "features", "type": "float64", "shape": [None, len(features)]},
        **shared["isolator"],
    }


def build_model(spec: dict, slot: Slot, settings: ExportSettings, recorded: dict,
                shared: dict) -> tuple[dict, dict[str, bytes]]:
    """metadata.json and every file of one model's archive, in memory (nothing is written):
    ``spec`` names its trainer and its train outputs (model, metrics, holdout); ``recorded`` is
    the settings mapping as the job got it (in the provenance; its ``ingest`` goes to metadata);
    ``shared`` is shared_inputs(...)."""
    import joblib

    trainer = spec["trainer"]
    bundle = joblib.load(spec["model"])
    report = json.loads(Path(spec["metrics"]).read_text())
    holdout = pd.read_parquet(spec["holdout"])
    name = model_name(trainer, slot.node_type)
    metadata = _base_metadata(name, trainer, slot, bundle, report, shared)
    files: dict[str, bytes] = {}
    if report["status"] == "trained":
        onnx, onnx_info, failure = onnx_files(bundle, holdout, trainer, name, settings)
        files.update(onnx)
        metadata.update(_trained_metadata(report, onnx_info,
                                          training_data(bundle["features"], report, holdout, shared["dataset"])))
        if failure:
            metadata["status"], metadata["reason"] = failure
        else:
            _kepler_weights(trainer, bundle, metadata, files)
            _native_trees(trainer, metadata, files)
    else:
        metadata["reason"] = report.get("reason")
    metadata["feature_report"] = report["feature_report"]
    # Which inputs are windowed (and how), so an exporter can compute them from raw samples.
    metadata["feature_engineering"] = report.get("feature_engineering")
    # How raw collector fields become features (rates, absent perf): predict/serve need no config.
    if recorded.get("ingest"):
        metadata["ingest"] = recorded["ingest"]
    metadata["provenance"] = {
        "inputs": dict(sorted({**input_checksums([spec["model"], spec["metrics"], spec["holdout"]]),
                               **shared["inputs"]}.items())),
        "environment_lock": shared["environment_lock"],
        "packages": shared["packages"],
        "settings": recorded,
    }
    files["metadata.json"] = dumps_json(metadata).encode()
    return metadata, files


SPEC_KEYS = ("trainer", "model", "metrics", "holdout", "out_dir", "archive")


def model_specs(lists: Mapping[str, Sequence[str]]) -> list[dict]:
    """One entry per model from the parallel lists of --trainer, --model, --metrics, --holdout,
    --out-dir and --archive (``lists``: SPEC_KEYS -> values; a job exports every trainer of one
    feature group)."""
    keys = SPEC_KEYS
    lists = {k: list(lists[k]) for k in keys}
    n = len(lists["trainer"])
    if len(set(lists["trainer"])) != n:
        raise InputError("--trainer", "names a trainer twice")
    for k in keys[1:]:
        if len(lists[k]) != n:
            raise InputError(f"--{k.replace('_', '-')}", f"has {len(lists[k])} values for {n} trainers (one per --trainer)")
    return [{k: lists[k][i] for k in keys} for i in range(n)]


def export(specs: list[dict], slot: Slot, settings: ExportSettings, recorded: dict, shared: dict) -> list[dict]:
    """Every model converted and checked before any is written (bad input leaves no output); a
    model failing its ONNX check is written with that status (metadata + manifest, no ONNX).
    Returns each model's metadata."""
    built = [build_model(spec, slot, settings, recorded, shared) for spec in specs]
    for spec, (_meta, files) in zip(specs, built):
        write_model(files, Path(spec["out_dir"]), Path(spec["archive"]), settings.zip_date)
    return [meta for meta, _files in built]


def cmd_export(args) -> int:
    recorded = json.loads(args.settings)
    settings = ExportSettings.build(recorded, "--settings")
    specs = model_specs({k: getattr(args, k) for k in SPEC_KEYS})
    slot = Slot(args.node_type, args.output_type, args.feature_group)
    shared = shared_inputs(args.output_type, args.model[0], list(args.machine_spec or []),
                           list(args.isolation or []), args.dataset, args.lock)
    for meta in export(specs, slot, settings, recorded, shared):
        if meta["status"] == "trained":
            worst = max(v["max_abs_diff_watts"] for v in meta["onnx"].values())
            print(f"exported {meta['model_name']} ({len(meta['zones'])} zones, max |onnx - native| {worst:.2g} W)")
        else:  # recorded, never selected (vmpower.pipeline.selection reads only trained models)
            print(f"exported {meta['model_name']} as {meta['status']}: {meta.get('reason')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export trained models to ONNX archives "
                                      "(one node_type, output type and feature group; one or more trainers)")
    p.add_argument("--trainer", nargs="+", required=True)
    p.add_argument("--model", nargs="+", required=True, help="model.joblib per trainer (same order)")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json per trainer (same order)")
    p.add_argument("--holdout", nargs="+", required=True, help="holdout.parquet per trainer (same order)")
    p.add_argument("--node-type", required=True)
    p.add_argument("--output-type", required=True)
    p.add_argument("--feature-group", required=True)
    p.add_argument("--machine-spec", nargs="*", default=[])
    p.add_argument("--dataset", help="the isolated data set the models were trained on: recompute the training "
                                     "ranges from it (default: those train recorded in metrics.json)")
    p.add_argument("--isolation", nargs="*", default=[],
                   help="DynPower only: the node_type's isolation.json (isolator and idle watts go to metadata.json)")
    p.add_argument("--lock", help="environment lock file whose sha256 goes into the provenance")
    p.add_argument("--out-dir", nargs="+", required=True, help="model directory per trainer (same order)")
    p.add_argument("--archive", nargs="+", required=True, help="<Trainer>Trainer_<node_type>.zip per trainer (same order)")
    p.add_argument("--settings", required=True)
    p.set_defaults(func=cmd_export)
