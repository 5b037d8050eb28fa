"""``vmpower merge`` and ``vmpower merge-dataset``: the command lines of merge.py.

Settings come from one of three places, all holding every key (defaults live only in
config.yaml and its schema): the workflow's flat ``--settings`` JSON (already validated and
filled by Snakemake; no YAML or schema library is imported then, so a job starts fast), a
``--config`` file read by vmpower.settings.load, or, without either, the bundled config.yaml
with seed_merge.yaml overlaid (the original merge_datasets.py's merge behaviour).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vmpower.names import ZONES, power_column

# Overlay on the bundled config.yaml for `vmpower merge` without --config or --settings.
SEED_OVERLAY = Path(__file__).with_name("seed_merge.yaml")


def _config(path) -> dict:
    from vmpower import settings

    return settings.load(path)


def _bundled_seed_config() -> dict:
    """The bundled config.yaml with seed_merge.yaml's ``merge`` keys overlaid."""
    import yaml

    from vmpower.paths import CONFIG

    cfg = _config(CONFIG)
    overlay = yaml.safe_load(SEED_OVERLAY.read_text(encoding="utf-8"))
    return {**cfg, "merge": {**cfg["merge"], **overlay["merge"]}}


# The settings `vmpower merge` also takes as flags (a flag wins).
MERGE_FLAGS = ("time_tolerance", "min_power_threshold", "power_zone", "alignment")


def merge_settings(settings_json: str | None, config: str | None, flags: dict):
    """merge.MergeSettings of a `vmpower merge` command line: --settings, else --config, else the
    bundled config with the seed overlay; the MERGE_FLAGS given (not None) override them."""
    import dataclasses

    from vmpower.pipeline.merge import MergeSettings

    if settings_json:
        s = MergeSettings.build(json.loads(settings_json), "--settings")
    elif config:
        s = MergeSettings.from_config(_config(config), config)
    else:
        s = MergeSettings.from_config(_bundled_seed_config(), str(SEED_OVERLAY))
    return dataclasses.replace(s, **{k: flags[k] for k in MERGE_FLAGS if flags.get(k) is not None})


def cmd_merge(args) -> int:
    from vmpower.io import write_json, write_parquet
    from vmpower.pipeline.merge import merge_run

    s = merge_settings(args.settings, args.config, {k: getattr(args, k) for k in MERGE_FLAGS})
    data, quality = merge_run(args.vm_features, args.bm_power, s)
    out = Path(args.output)
    if out.suffix == ".csv":
        # The original tool's CSV: features plus power_watts (the chosen zone) and time_diff.
        from vmpower.io import atomic_path

        csv = data.assign(power_watts=data[power_column(s.power_zone)])
        with atomic_path(out) as tmp:
            csv.to_csv(tmp, index=False)  # shortest round-trip floats: epoch times keep their precision
    else:
        write_parquet(data, out)
    if args.quality:
        write_json(quality, args.quality)
    print(
        f"merged {quality['rows_kept']}/{quality['vm_samples']} VM samples "
        f"(match rate {quality['match_rate']:.1%}, mean time diff {quality['time_diff_mean'] or 0:.3f} s) -> {out}"
    )
    return 0


def _dataset_settings(settings_json: str | None, config: str | None) -> tuple[dict, str]:
    """The merge-dataset keys (zones and the features section's), flat, and where they came from."""
    if settings_json:
        return json.loads(settings_json), "--settings"
    from vmpower.paths import CONFIG
    from vmpower.pipeline import engineer

    path = config or CONFIG
    cfg = _config(path)
    return {"zones": cfg["zones"], **engineer.settings_from(cfg)}, str(path)


def cmd_dataset(args) -> int:
    import pandas as pd

    from vmpower.errors import InputError
    from vmpower.io import write_json, write_parquet
    from vmpower.pipeline import counters, engineer
    from vmpower.pipeline.merge import stack_runs

    settings, source = _dataset_settings(args.settings, args.config)
    if "zones" not in settings:
        raise InputError(source, "missing setting zones")
    frames = {Path(p).name.removesuffix(".parquet"): pd.read_parquet(p) for p in args.inputs}
    data, summary = stack_runs(frames, settings["zones"])
    qualities = {}
    for q in args.quality_inputs or []:
        with open(q) as fh:
            qualities[Path(q).name.removesuffix(".quality.json")] = json.load(fh)
    summary["run_quality"] = qualities
    # What the runs' counters were (counters.py), for whoever computes these features live.
    summary["counter_semantics"] = counters.combine({r: q.get("vm_counter_semantics") or {} for r, q in qualities.items()})
    # Feature engineering (engineer.py): lag-corrected labels and causal windowed features.
    data, report = engineer.engineer_dataset(data, qualities, settings, source)
    if report is not None:
        summary["engineering"] = report
        summary["rows"] = int(len(data))
    write_parquet(data, args.output)
    write_json(summary, args.summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge one run's VM features with host power (align on absolute time)")
    p.add_argument("--vm-features", required=True, help="vm_features_*.json (array or JSON Lines)")
    p.add_argument("--bm-power", required=True, help="bm_power_*.csv or bm_power_*.json")
    p.add_argument("--output", required=True, help=".parquet (pipeline) or .csv (merge_datasets.py format)")
    p.add_argument("--quality", help="write the run's data-quality report (JSON) here")
    p.add_argument("--time-tolerance", type=float, help="nearest mode: max time difference in seconds")
    p.add_argument("--min-power-threshold", type=float, help="drop rows whose power_zone power is below this (W)")
    p.add_argument("--power-zone", choices=ZONES, help="zone for power_watts and the threshold")
    p.add_argument("--alignment", choices=["auto", "kepler_interval", "window", "nearest"])
    p.add_argument("--config", help="read merge/ingest settings from this config.yaml "
                                    "(default: the bundled config.yaml with the original tool's merge, seed_merge.yaml)")
    p.add_argument("--settings", help=argparse.SUPPRESS)  # JSON passed by the workflow
    # merge_datasets.py took --verbose after its options; SUPPRESS keeps a global -v intact.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.set_defaults(func=cmd_merge)

    d = sub.add_parser("merge-dataset", help="stack a node_type's merged runs into one dataset")
    d.add_argument("--inputs", nargs="+", required=True)
    d.add_argument("--quality-inputs", nargs="*")
    d.add_argument("--output", required=True)
    d.add_argument("--summary", required=True)
    d.add_argument("--config", help="read zones and feature engineering from this config.yaml (default: the bundled one)")
    d.add_argument("--settings", help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_dataset)
