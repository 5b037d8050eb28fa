"""Export trained models: one ONNX file per zone (scaler + model), checked against the native
model with onnxruntime, packed into a zip archive with Kepler v0.7's weight.json where Kepler
can read one (kepler_weights.py; kepler_db.py exports for kepler-model-server); then pick the best models.

ONNX inputs are float64, like the native pipelines (conversion: vmpower.pipeline.onnx_convert). A model
whose ONNX files do not reproduce it is exported with status onnx_mismatch (metadata and
manifest, no ONNX file): it is never selected, and its group's other models still export.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.ops import provenance
from vmpower.errors import InputError
from vmpower.io import MODEL_DIR_MODE, MODEL_MODE, atomic_path, dumps_json, sha256_file, write_json
from vmpower.pipeline.onnx_convert import onnx_predict, to_onnx  # noqa: F401 (export.to_onnx, export.onnx_predict)

MANIFEST = "manifest.sha256"


def model_name(trainer: str, node_type: str) -> str:
    return f"{trainer}Trainer_{node_type}"




def write_zip(src_dir: Path, zip_path: Path, date_time: tuple) -> None:
    """Deterministic zip: sorted entries, fixed dates and permissions."""
    with atomic_path(zip_path, mode=MODEL_MODE) as tmp:  # issue 17 hook: 0600
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(f.relative_to(src_dir).as_posix(), date_time=tuple(date_time))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.create_system = 3
                zf.writestr(info, f.read_bytes())


def write_manifest(model_dir: Path) -> None:
    lines = [
        f"{sha256_file(p)}  {p.relative_to(model_dir).as_posix()}"
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    (model_dir / MANIFEST).write_text("\n".join(lines) + "\n")


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


def shared_inputs(args) -> dict:
    """What every model of one export call shares, read once: the machine spec, the DynPower
    isolator, and the shared part of the provenance."""
    isolation = list(getattr(args, "isolation", None) or [])
    if args.output_type == "DynPower":
        if len(isolation) != 1:
            raise InputError(args.model[0], "a DynPower model needs --isolation with its node_type's isolation.json "
                                            "(which idle power was subtracted)")
        isolator = isolation_info(isolation[0])
    elif isolation:
        raise InputError(isolation[0], f"--isolation is for DynPower models, not {args.output_type}")
    else:
        isolator = {}
    dataset = getattr(args, "dataset", None)
    return {
        "machine_spec": json.loads(Path(sorted(args.machine_spec)[0]).read_text()) if args.machine_spec else {},
        "isolator": isolator,
        "dataset": dataset,
        "inputs": provenance.input_checksums([*(args.machine_spec or []), *([dataset] if dataset else []), *isolation]),
        "environment_lock": provenance.input_checksums([args.lock])[Path(args.lock).as_posix()] if args.lock else None,
        "packages": provenance.package_versions(),
    }


def onnx_files(bundle: dict, holdout: pd.DataFrame, trainer: str, name: str, settings: dict):
    """ONNX bytes per zone, each checked against the native model on the held-out rows.
    Returns (files, check per zone, failure): failure is None, or (status, reason) when a zone's
    ONNX differs by more than export.max_abs_diff_watts (onnx_mismatch: no file is kept) or
    cannot be converted or run (onnx_failed). Either fails this model only."""
    features, limit = bundle["features"], float(settings["max_abs_diff_watts"])
    X = holdout[features].to_numpy("float64")
    files, info = {}, {}
    for zone in bundle["zones"]:
        pipe = bundle["models"][zone]
        try:
            data = to_onnx(pipe, len(features), trainer, f"{name}_{zone}", int(settings["onnx_opset"])).SerializeToString()
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


def build_model(spec: dict, args, settings: dict, shared: dict) -> tuple[dict, dict[str, bytes]]:
    """metadata.json and every file of one model's archive, in memory (nothing is written):
    ``spec`` names its trainer and its train outputs (model, metrics, holdout); ``shared`` is
    shared_inputs(args)."""
    import joblib

    trainer = spec["trainer"]
    bundle = joblib.load(spec["model"])
    report = json.loads(Path(spec["metrics"]).read_text())
    holdout = pd.read_parquet(spec["holdout"])
    features, zones = bundle["features"], bundle["zones"]
    name = model_name(trainer, args.node_type)

    from vmpower.pipeline.train import TRAINERS

    metadata = {
        "model_name": name,
        "trainer": f"{trainer}Trainer",
        "model_class": "onnx",
        "node_type": args.node_type,
        "output_type": args.output_type,
        "feature_group": args.feature_group,
        "features": features,
        "fe_files": [],
        "zones": zones,
        "machine_spec": shared["machine_spec"],
        "status": report["status"],
        "input": {"name": "features", "type": "float64", "shape": [None, len(features)]},
    }
    metadata.update(shared["isolator"])
    files: dict[str, bytes] = {}
    dataset = shared["dataset"]
    if report["status"] == "trained":
        onnx, onnx_info, failure = onnx_files(bundle, holdout, trainer, name, settings)
        files.update(onnx)
        metrics = report["metrics"]
        metadata.update(
            {
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
                "training_data": training_data(features, report, holdout, dataset),
            }
        )
        if failure:
            metadata["status"], metadata["reason"] = failure
        elif TRAINERS[trainer][2]:
            # Kepler v0.7's weight.json, in Kepler's feature names, or the reason there is none.
            from vmpower.pipeline.kepler_weights import WEIGHT_FILE, kepler_weight_json

            ranges = metadata["training_data"].get("feature_ranges")
            weights, why = kepler_weight_json(bundle["models"], features, zones, name, ranges)
            metadata["kepler_weight_file"] = WEIGHT_FILE if weights else None
            metadata["kepler_weight_reason"] = why
            if weights:
                files[WEIGHT_FILE] = dumps_json(weights).encode()
        else:
            metadata["kepler_weight_file"] = None
            metadata["kepler_weight_reason"] = "not a linear model (Kepler v0.7 reads weights of linear models only)"
    else:
        metadata["reason"] = report.get("reason")
    metadata["feature_report"] = report["feature_report"]
    # Which inputs are windowed (and how), so an exporter can compute them from raw samples.
    metadata["feature_engineering"] = report.get("feature_engineering")
    # How raw collector fields become features (rates, absent perf): predict/serve need no config.
    if settings.get("ingest"):
        metadata["ingest"] = settings["ingest"]
    metadata["provenance"] = {
        "inputs": dict(sorted({**provenance.input_checksums([spec["model"], spec["metrics"], spec["holdout"]]),
                               **shared["inputs"]}.items())),
        "environment_lock": shared["environment_lock"],
        "packages": shared["packages"],
        "settings": settings,
    }
    files["metadata.json"] = dumps_json(metadata).encode()
    return metadata, files


def write_model(files: dict[str, bytes], out_dir: Path, archive: Path, zip_date: tuple) -> None:
    """The model directory (with its manifest) and its zip, each replaced whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for fname, data in files.items():
            (tmp_dir / fname).write_bytes(data)
        write_manifest(tmp_dir)
        for p in tmp_dir.iterdir():
            os.chmod(p, MODEL_MODE)  # issue 17 hook: 0600 files in a 0700 directory
        os.chmod(tmp_dir, MODEL_DIR_MODE)
        write_zip(tmp_dir, archive, zip_date)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def model_specs(args) -> list[dict]:
    """One entry per model: --trainer, --model, --metrics, --holdout, --out-dir and --archive
    are parallel lists (a job exports every trainer of one feature group)."""
    keys = ("trainer", "model", "metrics", "holdout", "out_dir", "archive")
    lists = {k: list(getattr(args, k)) for k in keys}
    n = len(lists["trainer"])
    if len(set(lists["trainer"])) != n:
        raise InputError("--trainer", "names a trainer twice")
    for k in keys[1:]:
        if len(lists[k]) != n:
            raise InputError(f"--{k.replace('_', '-')}", f"has {len(lists[k])} values for {n} trainers (one per --trainer)")
    return [{k: lists[k][i] for k in keys} for i in range(n)]


def cmd_export(args) -> int:
    settings = json.loads(args.settings)
    specs = model_specs(args)
    # Every model is converted and checked before any is written: bad input leaves no output. A
    # model failing its ONNX check is written with that status (metadata + manifest, no ONNX).
    shared = shared_inputs(args)
    built = [build_model(spec, args, settings, shared) for spec in specs]
    for spec, (meta, files) in zip(specs, built):
        write_model(files, Path(spec["out_dir"]), Path(spec["archive"]), tuple(settings["zip_date"]))
        if meta["status"] == "trained":
            worst = max(v["max_abs_diff_watts"] for v in meta["onnx"].values())
            print(f"exported {meta['model_name']} ({len(meta['zones'])} zones, max |onnx - native| {worst:.2g} W)")
        else:  # recorded, never selected (export.best_models, predict, gate read only trained models)
            print(f"exported {meta['model_name']} as {meta['status']}: {meta.get('reason')}")
    return 0


# ---------------------------------------------------------------- best models and summary


def summary_rows(model_dirs: list[str]) -> pd.DataFrame:
    """One row per model and zone (held-out metrics, ONNX check); a model that was not trained
    has one row with its status. ``reason`` says why a model is not usable (status != trained)."""
    rows = []
    for d in model_dirs:
        meta = json.loads((Path(d) / "metadata.json").read_text())
        base = {k: meta[k] for k in ("node_type", "output_type", "feature_group")}
        base["trainer"] = meta["trainer"].removesuffix("Trainer")
        base["archive"] = Path(d).as_posix() + ".zip"
        base["status"] = meta["status"]
        base["reason"] = meta.get("reason")
        if not meta.get("metrics"):
            rows.append({**base, "zone": None})
            continue
        for zone, m in meta["metrics"].items():
            rows.append(
                {
                    **base,
                    "zone": zone,
                    "mae": m["mae"],
                    "mape": m["mape"],
                    "rmse": m["rmse"],
                    "r2": m["r2"],
                    "heldout_rows": m["rows"],
                    "n_features": len(meta["features"]),
                    "onnx_max_abs_diff": meta["onnx"][zone]["max_abs_diff_watts"],
                }
            )
    cols = ["node_type", "output_type", "feature_group", "trainer", "zone", "status", "mae", "mape", "rmse", "r2",
            "heldout_rows", "n_features", "onnx_max_abs_diff", "reason", "archive"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    return df.sort_values(["node_type", "output_type", "feature_group", "trainer", "zone"], na_position="first").reset_index(drop=True)


def best_models(df: pd.DataFrame) -> pd.DataFrame:
    """Best trainer per node_type x output type x feature group: lowest mean held-out MAE over zones,
    among the models that exported fine (status trained: not skipped, not onnx_mismatch)."""
    trained = df[df["status"] == "trained"]
    keys = ["node_type", "output_type", "feature_group"]
    means = trained.groupby(keys + ["trainer"], as_index=False)["mae"].mean()
    means = means.sort_values(keys + ["mae", "trainer"])
    return means.groupby(keys, as_index=False).first().rename(columns={"mae": "mae_mean"})


def cmd_select(args) -> int:
    df = summary_rows(args.models)
    best = best_models(df)
    key = ["node_type", "output_type", "feature_group", "trainer"]
    archives = df.pop("archive")
    best = best.merge(df.assign(archive=archives)[key + ["archive"]].drop_duplicates(), on=key, how="left")
    df = df.merge(best[key].assign(best=True), on=key, how="left")
    df["best"] = df["best"].fillna(False).astype(bool)
    with atomic_path(args.summary) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    out = {}
    for row in best.itertuples(index=False):
        name = model_name(row.trainer, row.node_type)
        out.setdefault(row.node_type, {}).setdefault(row.output_type, {})[row.feature_group] = {
            "trainer": row.trainer,
            "model_name": name,
            "mae_mean": row.mae_mean,
            "archive": row.archive,
        }
    write_json(out, args.best)
    print(f"{len(best)} best models over {df['node_type'].nunique()} node types -> {args.best}")
    return 0


def cmd_summary(args) -> int:
    """The per-node_type selections (export_select) as one summary.csv and best.json."""
    parts = [pd.read_csv(p) for p in sorted(args.summaries)]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    best: dict = {}
    for p in sorted(args.best):
        for nt, models in json.loads(Path(p).read_text()).items():
            if nt in best:
                raise InputError(p, f"node_type {nt} is in more than one selection")
            best[nt] = models
    with atomic_path(args.summary_output) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    write_json(dict(sorted(best.items())), args.best_output)
    print(f"summary of {len(best)} node types -> {args.summary_output}, {args.best_output}")
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

    m = sub.add_parser("summary", help="join the per-node_type selections into summary.csv and best.json")
    m.add_argument("--summaries", nargs="+", required=True, help="<node_type>.summary.csv files")
    m.add_argument("--best", nargs="+", required=True, help="<node_type>.best.json files")
    m.add_argument("--summary-output", required=True)
    m.add_argument("--best-output", required=True)
    m.set_defaults(func=cmd_summary)

    s = sub.add_parser("select", help="pick the best model per node_type/output type/feature group; write the summary")
    s.add_argument("--models", nargs="+", required=True, help="exported model directories")
    s.add_argument("--summary", required=True, help="summary.csv of all metrics")
    s.add_argument("--best", required=True, help="best.json")
    s.set_defaults(func=cmd_select)
