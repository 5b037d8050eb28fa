"""Real exported models for the predict/serve tests and benchmarks, built by the pipeline's own
CLI steps (synth -> merge -> merge-dataset -> isolate -> train -> export -> select) on a small
one-node_type demo. Nothing here hand-crafts a model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vmpower import cli

ROOT = Path(__file__).resolve().parents[2]
NODE_TYPE = "demo-xeon-gold"
# (output type, feature group, trainers): SystemOnly is fully available live without perf;
# CounterOnly and Activity need perf, so serving them with --no-perf exercises graceful
# degradation and the fallback to SystemOnly. DynPower records its isolator.
MODELS = [
    ("AbsPower", "SystemOnly", ["LinearRegression", "GradientBoostingRegressor", "XGBRegressor"]),
    ("AbsPower", "CounterOnly", ["LinearRegression"]),
    ("AbsPower", "Activity", ["LinearRegression"]),
    ("DynPower", "SystemOnly", ["LinearRegression"]),
]
RUNS = [
    {"id": "run01-idle", "workload": "idle", "duration": 60},
    {"id": "run02-mix", "workload": "cpu_cycling:60,memory_intensive:30,matrix_computation:30", "duration": 120},
    {"id": "run03-mix", "workload": "cache_thrashing:30,bursty_workload:40,mixed_workload:50", "duration": 120,
     "vm_format": "jsonl"},
]


def _run(*argv: str) -> None:
    code = cli.main([str(a) for a in argv])
    assert code == 0, f"vmpower {' '.join(map(str, argv))} exited {code}"


def build(root: Path) -> dict:
    """Build into root; returns paths: config, raw, results, models {(ot, fg, trainer): dir}, train dirs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["synth"]["node_types"] = {NODE_TYPE: cfg["synth"]["node_types"][NODE_TYPE]}
    cfg["synth"]["runs"] = RUNS
    # Per-sample rows (not one per Kepler interval), so predict's per-sample features can be
    # compared row by row with the merged training data.
    cfg["merge"]["alignment"] = "window"
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    raw, res = root / "data" / "raw", root / "results"
    _run("synth", "--config", config, "--out", raw)

    hinges = cfg["features"].get("hinges", {})
    # What rules/merge.smk passes: the merge and ingest sections, the zones, the limits and the
    # feature keys the merge reads.
    feature_keys = {k: cfg["features"][k] for k in ("lag_feature", "lag_zone", "max_lag_seconds", "hinges")}
    merge_settings = json.dumps({**cfg["merge"], **cfg["ingest"], "zones": cfg["zones"],
                                 "required_zones": cfg["required_zones"], "limits": cfg.get("limits", {}),
                                 **feature_keys})
    merged = []
    for run_dir in sorted((raw / NODE_TYPE).iterdir()):
        if not run_dir.is_dir():
            continue
        out = res / "merged" / NODE_TYPE / f"{run_dir.name}.parquet"
        _run("merge", "--vm-features", next(run_dir.glob("vm_features_*")), "--bm-power", next(run_dir.glob("bm_power_*")),
             "--output", out, "--quality", out.with_suffix(".quality.json"), "--settings", merge_settings)
        merged.append(out)
    dataset = res / "dataset" / f"{NODE_TYPE}.parquet"
    _run("merge-dataset", "--inputs", *merged, "--output", dataset, "--summary", dataset.with_suffix(".json"),
         "--settings", json.dumps({"zones": cfg["zones"], **{k: v for k, v in cfg["features"].items() if k != "groups"}}))
    iso = res / "isolated" / NODE_TYPE
    _run("isolate", "--dataset", dataset, "--node-type", NODE_TYPE, "--abs-output", iso / "AbsPower.parquet",
         "--dyn-output", iso / "DynPower.parquet", "--info", iso / "info.json", "--settings", json.dumps(cfg["isolate"]))

    spec = sorted((raw / NODE_TYPE).glob("*/machine_spec.json"))[0]
    models, trained, exported = {}, {}, []
    for ot, fg, trainers in MODELS:
        for tr in trainers:
            t = res / "train" / NODE_TYPE / ot / fg / tr
            tset = json.dumps({**cfg["train"], "patterns": cfg["features"]["groups"][fg],
                               "engineering": {"hinges": hinges}})
            _run("train", "--dataset", iso / f"{ot}.parquet", "--node-type", NODE_TYPE, "--output-type", ot,
                 "--feature-group", fg, "--trainer", tr, "--model", t / "model.joblib", "--metrics", t / "metrics.json",
                 "--holdout", t / "holdout.parquet", "--settings", tset)
            out = res / "models" / ot / fg / f"{tr}Trainer_{NODE_TYPE}"
            _run("export", "--model", t / "model.joblib", "--metrics", t / "metrics.json", "--holdout",
                 t / "holdout.parquet", "--node-type", NODE_TYPE, "--output-type", ot, "--feature-group", fg,
                 "--trainer", tr,
                 *(["--isolation", iso / "info.json"] if ot == "DynPower" else []), "--machine-spec", spec, "--lock", ROOT / "envs" / "pipeline.lock", "--out-dir", out,
                 "--archive", out.with_name(out.name + ".zip"),
                 "--settings", json.dumps({**cfg["export"], "ingest": cfg["ingest"]}))
            models[(ot, fg, tr)] = out
            trained[(ot, fg, tr)] = t
            exported.append(out)
    _run("select", "--models", *exported, "--summary", res / "summary.csv",
         "--best", res / "best.json")
    vm_files = {d.name: next(d.glob("vm_features_*")) for d in sorted((raw / NODE_TYPE).iterdir()) if d.is_dir()}
    return {"root": root, "config": config, "cfg": cfg, "raw": raw, "results": res, "models": models,
            "trained": trained, "vm_files": vm_files, "spec": spec, "isolation": iso / "info.json",
            "datasets": {ot: iso / f"{ot}.parquet" for ot in ("AbsPower", "DynPower")}}
