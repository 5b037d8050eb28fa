"""Accuracy ablation on the demo data (used by test_bench_accuracy.py and docs/performance.md).

For each node_type: merge its runs with the pipeline's code in each variant below, train every
trainer of the config on the AbsPower labels of one feature group (leave-one-run-out, the
pipeline's train.train, including its hyperparameter search) and compare held-out MAE with the
generator's noise floor (synth_noise_floor.json).

Variants, in the order the steps were added: per-sample ``window`` alignment; + lag-corrected
labels; + causal 5 s windowed features; ``kepler_interval`` alignment (one row per Kepler
update) without and with the per-run clock-offset search; + the per-sample hinge basis of
``features.hinges`` (also used by the offset fit, with ``merge.offset_features``): the default.
Per-sample variants are scored per VM sample, interval variants per Kepler interval (the unit
the noise floor is defined on)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from vmpower.pipeline import engineer, merge, train

ROOT = Path(__file__).resolve().parents[2]
# variant: (merge settings, feature-engineering settings) over the config's
# Steps before the hinge basis run without it (hinges off, offset fitted on lag_feature alone).
NO_HINGES = {"hinges": {}, "offset_features": []}
VARIANTS = {
    "window": ({"alignment": "window", **NO_HINGES}, {"lag_correction": False, "windows": []}),
    "window+lag": ({"alignment": "window", **NO_HINGES}, {"lag_correction": True, "windows": []}),
    "window+lag+windows": ({"alignment": "window", **NO_HINGES}, {"lag_correction": True, "windows": [5]}),
    "interval": ({"alignment": "kepler_interval", "offset_search_seconds": 0.0, **NO_HINGES},
                 {"lag_correction": False, "windows": []}),
    "interval+offset": ({"alignment": "kepler_interval", **NO_HINGES}, {"lag_correction": False, "windows": []}),
    "interval+offset+hinges": ({"alignment": "kepler_interval"}, {"lag_correction": False, "windows": []}),
}


def merged_runs(raw: Path, nt: str, cfg: dict, merge_over: dict) -> tuple[dict, dict]:
    s = merge.MergeSettings.from_config(cfg)
    for k, v in merge_over.items():
        setattr(s, k, v)
    frames, quality = {}, {}
    for run_dir in sorted(p for p in (raw / nt).iterdir() if p.is_dir()):
        vm = sorted(run_dir.glob("vm_features_*"))[0]
        bm = sorted(run_dir.glob("bm_power_*"))[0]
        frames[run_dir.name], quality[run_dir.name] = merge.merge_run(vm, bm, s)
    return frames, quality


def variant_dataset(frames, quality, cfg, variant: str) -> pd.DataFrame:
    data, _ = merge.stack_runs(frames, cfg["zones"])
    eng = {**engineer.settings_from(cfg), **VARIANTS[variant][1]}
    feats = train.candidate_features(data)
    data, _ = engineer.engineer(data, feats, eng, {r: q["lag"] for r, q in quality.items()})
    return data


def ablation(raw: Path, cfg: dict, node_types: list[str], group: str = "Full", trainers=None, variants=None) -> pd.DataFrame:
    rows = []
    trainers = trainers or cfg["train"]["trainers"]
    for nt in node_types:
        floor = json.loads((raw / nt / "synth_noise_floor.json").read_text())["zones"]
        for variant in variants or VARIANTS:
            frames, quality = merged_runs(raw, nt, cfg, VARIANTS[variant][0])
            data = variant_dataset(frames, quality, cfg, variant)
            settings = train.TrainSettings.build(cfg["train"])
            engineering = {**engineer.settings_from(cfg), **VARIANTS[variant][1]}
            for tr in trainers:
                _, report, _ = train.train(data, tr, cfg["features"]["groups"][group], settings, engineering, nt)
                for zone, m in report["metrics"].items():
                    rows.append({"node_type": nt, "variant": variant, "feature_group": group, "trainer": tr,
                                 "zone": zone, "mae": m["mae"], "r2": m["r2"],
                                 "noise_floor": floor[zone]["noise_floor_mae_watts"],
                                 "window_truth": floor[zone]["window_truth_mae_watts"],
                                 "n_features": len(report["features"]),
                                 "chosen": json.dumps(report["chosen_params"][zone], sort_keys=True)})
    df = pd.DataFrame(rows)
    df["x_floor"] = df["mae"] / df["noise_floor"]
    return df


def best_table(df: pd.DataFrame) -> pd.DataFrame:
    """Best trainer per node_type x variant (lowest mean MAE over zones), its MAE per zone."""
    mean = df.groupby(["node_type", "variant", "trainer"], as_index=False)["mae"].mean()
    best = mean.sort_values(["node_type", "variant", "mae", "trainer"]).groupby(["node_type", "variant"]).first()
    keep = df.merge(best.reset_index()[["node_type", "variant", "trainer"]], on=["node_type", "variant", "trainer"])
    return keep


if __name__ == "__main__":
    import sys

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    nts = sys.argv[1].split(",")
    trainers = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    group = sys.argv[3] if len(sys.argv) > 3 else "Full"
    df = ablation(ROOT / "data" / "raw", cfg, nts, group=group, trainers=trainers)
    table = df.pivot_table(index=["node_type", "trainer", "zone"], columns="variant", values="x_floor")
    print(table[[v for v in VARIANTS if v in table.columns]].round(2).to_string())
