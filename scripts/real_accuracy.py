#!/usr/bin/env python3
"""Measure vmpower on real collector runs (README "Accuracy on real runs").

Lays the runs of DATA out as one node_type in a scratch copy of the workflow, builds it, and
prints what the README reports: samples kept per run, the leave-one-run-out package error of
every model, per run for the best, and how many samples `vmpower predict` answers for the last
run with models trained on the others.

DATA holds the seed collectors' files, as in the seed repository's data/ folder:
vm_features_<tag>.json with bm_power_<tag>.csv (or .json), paired by <tag>. The files are read
where they are and never copied into this repository.

  .venv/bin/python scripts/real_accuracy.py --data ~/cpu-power-model-training/data
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ("Snakefile", "rules", "schemas", "config.yaml", "src", "envs", "containers", "profiles", "report")
PAIR = re.compile(r"^vm_features_(?:training_)?(?P<tag>.+)\.json$")


def find_pairs(data: Path) -> dict[str, tuple[Path, Path]]:
    pairs = {}
    for vm in sorted(data.glob("vm_features_*.json")):
        tag = PAIR.match(vm.name)["tag"]
        hosts = sorted(data.glob(f"bm_power_*{tag}.csv")) or sorted(data.glob(f"bm_power_*{tag}.json"))
        if hosts:
            pairs[f"run-{tag}"] = (vm, hosts[0])
    if len(pairs) < 2:
        sys.exit(f"{data}: needs at least two vm_features_*/bm_power_* pairs (found {len(pairs)})")
    return pairs


def workspace(dest: Path, node_type: str, pairs: dict, runs: list[str]) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in WORKFLOW:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    for run in runs:
        run_dir = dest / "data" / "raw" / node_type / run
        run_dir.mkdir(parents=True)
        for f in pairs[run]:
            (run_dir / f.name).symlink_to(f.resolve())
    return dest


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd / "src"), "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed in {cwd}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def build(ws: Path, cores: int, overlay: Path | None = None) -> None:
    extra = ["--configfile", "config.yaml", str(overlay.resolve())] if overlay else []
    run([sys.executable, "-m", "snakemake", "results/summary.csv", "results/best.json", "--cores", str(cores),
         *extra], ws)


def kept_table(ws: Path, node_type: str) -> list[str]:
    lines = ["| run | VM samples | kept | kept share | match rate | warnings |", "|---|---|---|---|---|---|"]
    for q in sorted((ws / "results" / "merged" / node_type).glob("*.quality.json")):
        d = json.loads(q.read_text())
        kept, total = d.get("rows_kept", 0), d.get("vm_samples", 0)
        warn = ", ".join(sorted(d.get("warnings", {}))) or "-"
        lines.append(f"| {q.name.split('.')[0]} | {total} | {kept} | {kept / max(total, 1):.1%} "
                     f"| {d.get('match_rate', 0):.1%} | {warn} |")
    return lines


def model_table(ws: Path, top: int) -> tuple[list[str], pd.Series]:
    s = pd.read_csv(ws / "results" / "summary.csv")
    s = s[(s["zone"] == "package") & s["mape"].notna()].sort_values(["mape", "mae"])
    lines = ["| output type | feature group | trainer | MAE (W) | MAPE |", "|---|---|---|---|---|"]
    for _, r in s.head(top).iterrows():
        lines.append(f"| {r.output_type} | {r.feature_group} | {r.trainer} | {r.mae:.3f} | {r.mape:.1f} % |")
    return lines, s.iloc[0]


def per_run(ws: Path, node_type: str, best: pd.Series, floor: float) -> list[str]:
    h = pd.read_parquet(ws / "results" / "train" / node_type / best.output_type / best.feature_group
                        / best.trainer / "holdout.parquet")
    h = h[h["power_package"] > floor]
    ape = (h["pred_package"] - h["power_package"]).abs() / h["power_package"] * 100
    by_run = ape.groupby(h["run_id"]).mean()
    return [f"- {run}: {v:.1f} % over {int((h['run_id'] == run).sum())} rows" for run, v in by_run.items()]


def predict_last(ws_dir: Path, node_type: str, pairs: dict, cores: int, overlay: Path | None) -> str:
    runs = sorted(pairs)
    ws = workspace(ws_dir, node_type, pairs, runs[:-1])
    build(ws, cores, overlay)
    vm = pairs[runs[-1]][0]
    res = run([sys.executable, "-m", "vmpower", "predict", "--model", "results", "--node-type", node_type,
               "--input", str(vm.resolve())], ws)
    tail = (res.stderr.strip().splitlines() or [""])[-1]
    return f"predict {vm.name} with models of {', '.join(runs[:-1])}: {tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with the seed collectors' files")
    ap.add_argument("--node-type", default="real-kvm")
    ap.add_argument("--workdir", type=Path, default=Path("build/real-accuracy"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--overlay", type=Path, help="a config overlay (snakemake --configfile config.yaml OVERLAY)")
    args = ap.parse_args()
    pairs = find_pairs(args.data)
    ws = workspace(args.workdir.resolve() / "all", args.node_type, pairs, sorted(pairs))
    build(ws, args.cores, args.overlay)
    import yaml

    floor = yaml.safe_load((ws / "config.yaml").read_text())["train"]["mape_floor_watts"]
    models, best = model_table(ws, args.top)
    print("\n".join(["## Samples kept", *kept_table(ws, args.node_type), "",
                     "## Leave-one-run-out package error (best first)", *models, "",
                     f"## Best ({best.output_type}/{best.feature_group}/{best.trainer}) per held-out run",
                     *per_run(ws, args.node_type, best, floor), "",
                     "## " + predict_last(args.workdir.resolve() / "predict", args.node_type, pairs, args.cores, args.overlay)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
