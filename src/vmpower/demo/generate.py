"""Write the demo data set: every node_type's runs and its noise-floor file.

A node_type's ``profile`` picks the writer (PROFILES): ``demo`` (this module: synth's own
format) or ``legacy`` (legacy.py: the seed collectors' files). A new scenario variant of the
demo data is a new entry there (with its schema enum value), not a branch in the driver.
Unchanged files are not rewritten (Snakemake sees no change); stale ones are removed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from vmpower.demo import formats
from vmpower.demo.session import simulate_run
from vmpower.demo.simulate import HOST_ZONE_ORDER

log = logging.getLogger("vmpower.demo.synth")


def _noise_floor(cfg: dict, nt_name: str, nt: dict, zones: list[str], sims: list[dict]) -> dict:
    """synth_noise_floor.json of a demo node_type (docs/demo-data.md)."""
    import numpy as np

    floor = {
        "node_type": nt_name,
        "seed": int(cfg["seed"]),
        "definition": "noise floor = MAE a perfect model (the true active power averaged exactly like "
                      "Kepler's ~5 s updates) gets against the labels = sigma * sqrt(2/pi); see docs/demo-data.md",
        "node_idle_watts": {z: float(nt["idle_watts"][z]) for z in zones},
        "zones": {},
    }
    for z in zones:
        sigma = float(nt["sigma"][z])
        lab = np.concatenate([r["labels"][z] for r in sims])
        floor["zones"][z] = {
            "sigma_watts": sigma,
            "noise_floor_mae_watts": round(sigma * math.sqrt(2.0 / math.pi), 6),
            "empirical_noise_mae_watts": round(float(np.concatenate([np.abs(r["noise"][z]) for r in sims]).mean()), 6),
            "window_truth_mae_watts": round(float(np.concatenate([r["window_err"][z] for r in sims]).mean()), 6),
            "label_mean_watts": round(float(lab.mean()), 6),
            "label_max_watts": round(float(lab.max()), 6),
        }
    return floor


def _run_stamp(cfg: dict, run: dict) -> str:
    """The collectors' file-name time stamp (local time of the host start, to the second)."""
    import numpy as np

    stamp = str(np.datetime_as_string(np.datetime64(run["host_start_us"] + formats.offset_us(cfg), "us"), unit="s"))
    return stamp.replace("-", "").replace(":", "").replace("T", "_")


def write_demo_node_type(cfg: dict, nt_name: str, nt: dict, runs: list[dict], nt_dir: Path, put) -> dict:
    """Write a demo node_type's runs, machine specs and noise floor; ``put(text, path)`` writes
    if changed. Returns counts and the run dirs."""
    from vmpower.io import dumps_json

    zones = [z for z in HOST_ZONE_ORDER if z in nt["sigma"]]
    stats = {"runs": 0, "vm_rows": 0, "host_rows": 0, "run_dirs": set()}
    spec_text = json.dumps(nt["machine_spec"], indent=2) + "\n"
    sims = []
    for run_index, spec in enumerate(runs):
        run = simulate_run(cfg, nt_name, nt, spec, run_index)
        run_dir = nt_dir / spec["id"]
        stats["run_dirs"].add(run_dir)
        stamp = _run_stamp(cfg, run)
        prefix = f"{cfg['output_prefix']}_{spec['id']}".replace("-", "_")
        put(formats.vm_file_text(cfg, run, spec, formats.offset_us(cfg)),
            run_dir / f"vm_features_{prefix}_{stamp}.json")
        if spec.get("host_format", "csv") == "json":
            put(formats.host_json_text(cfg, run, zones, nt_name), run_dir / f"bm_power_{prefix}_{stamp}.json")
        else:
            put(formats.host_csv_text(cfg, run, zones), run_dir / f"bm_power_{prefix}_{stamp}.csv")
        put(spec_text, run_dir / "machine_spec.json")
        stats["runs"] += 1
        stats["vm_rows"] += int(run["vm"]["abs_us"].size)
        stats["host_rows"] += int(run["host"]["rel_us"].size)
        sims.append({k: run[k] for k in ("labels", "noise", "window_err")})
    put(dumps_json(_noise_floor(cfg, nt_name, nt, zones, sims)), nt_dir / "synth_noise_floor.json")
    return stats


def _write_legacy_node_type(cfg: dict, nt_name: str, nt: dict, runs: list[dict], nt_dir: Path, put) -> dict:
    from vmpower.demo import legacy

    return legacy.write_node_type(cfg, nt_name, nt, runs, nt_dir, put)


# profile -> (writer(cfg, nt_name, nt, runs, nt_dir, put) -> stats, the prefix of its file names)
PROFILES = {
    "demo": (write_demo_node_type, lambda cfg: str(cfg["output_prefix"])),
    "legacy": (_write_legacy_node_type, lambda cfg: cfg["legacy"]["output_prefix"]),
}


def generate(cfg: dict, out: Path) -> dict:
    """Write every node_type's runs and noise-floor file under ``out``; returns a summary."""
    from vmpower.io import write_if_changed

    out = Path(out)
    summary = {"node_types": 0, "runs": 0, "vm_rows": 0, "host_rows": 0, "written": 0, "unchanged": 0,
               "removed": 0}
    for nt_name, nt in cfg["node_types"].items():
        expected: set[Path] = set()

        def put(text: str, path: Path):
            expected.add(path)
            summary["written" if write_if_changed(text.encode("utf-8"), path) else "unchanged"] += 1

        writer, prefix = PROFILES[nt.get("profile", "demo")]
        nt_dir = out / nt_name
        stats = writer(cfg, nt_name, nt, nt.get("runs", cfg["runs"]), nt_dir, put)
        summary["node_types"] += 1
        for k in ("runs", "vm_rows", "host_rows"):
            summary[k] += stats[k]
        summary["removed"] += remove_stale(nt_dir, stats["run_dirs"], expected, prefix(cfg))
    return summary


def remove_stale(nt_dir: Path, run_dirs: set, expected: set, prefix: str) -> int:
    """Remove collector files with synth's prefix that this config no longer produces (a run dir
    must hold exactly one of each). Other runs' dirs are removed only when they hold nothing but
    such files; anything else is someone's data and is left alone."""
    patterns = (f"vm_features_{prefix}_*.json", f"bm_power_{prefix}_*.csv", f"bm_power_{prefix}_*.json")
    removed = 0
    for d in sorted(p for p in nt_dir.iterdir() if p.is_dir()):
        ours = {f for pat in patterns for f in d.glob(pat)}
        if d in run_dirs:
            stale = sorted(ours - expected)
        else:
            others = {f for f in d.iterdir()} - ours - {d / "machine_spec.json"}
            stale = [] if others or not ours else sorted(f for f in d.iterdir())
        for f in stale:
            f.unlink()
            removed += 1
            log.info("synth: removed stale %s", f)
        if d not in run_dirs and stale and not any(d.iterdir()):
            d.rmdir()
    return removed
