"""Run the demo build in a scratch copy of the repository under a given runtime.

Used by test_pipeline_docker.py (byte-identical outputs) and scripts/ci-docker.sh (phase
timings and the docker-vs-local overhead benchmark):

    python3 tests/containers/demo.py --runtimes local docker --out build/bench-runtime.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VMPOWER_VENV", ROOT / ".venv")) / "bin"
# Never copied into a scratch workdir (large, or build products of the original tree).
EXCLUDE = {".venv", "build", "results", "logs", "benchmarks", ".snakemake", ".git", ".pytest_cache",
           ".benchmarks", "__pycache__"}


def make_workdir(dest: Path) -> Path:
    """A copy of the repository (sources, config, workflow, lock) without build products."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in ROOT.iterdir():
        if item.name in EXCLUDE or (item.name == "data"):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "demo-*"))
        else:
            shutil.copy2(item, dest / item.name)
    return dest


def synth(workdir: Path) -> None:
    subprocess.run([str(VENV_BIN / "python"), "-m", "vmpower", "synth", "--config", "config.yaml",
                    "--out", "data/raw"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)


SMALL = ROOT / "tests" / "containers" / "demo-small.yaml"


def run_demo(workdir: Path, runtime: str, cores: int = 2, extra: list[str] | None = None,
             configfile: str | None = None) -> dict:
    """Run the whole demo build; returns wall time and job count."""
    if not (workdir / "data" / "raw").is_dir():
        synth(workdir)
    cmd = [str(VENV_BIN / "snakemake"), "--cores", str(cores)]
    if configfile:
        cmd += ["--configfile", "config.yaml", str(configfile)]
    cmd += ["--config", f"runtime={runtime}"] + (extra or [])
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake runtime={runtime} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    jobs = count_jobs(proc.stdout + proc.stderr) or len(list((workdir / "results" / "provenance").rglob("*.json")))
    return {"runtime": runtime, "seconds": round(seconds, 2), "jobs": jobs}


def count_jobs(log: str) -> int | None:
    """Jobs run, from Snakemake's progress lines ("12 of 34 steps (35%) done")."""
    import re

    found = re.findall(r"\b\d+ of (\d+) steps", log)
    return int(found[-1]) if found else None


def result_hashes(workdir: Path, results_dir: str = "results") -> dict[str, str]:
    """sha256 of every output except provenance sidecars, the report's provenance page (it lists
    the image each job ran in, so it differs by runtime by design) and logs."""
    base = workdir / results_dir
    out = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if not path.is_file() or rel.startswith("provenance/") or rel.startswith("logs/") or path.suffix == ".log":
            continue
        if rel.startswith("report/") and path.name.startswith("provenance."):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["local", "docker"])
    parser.add_argument("--scratch", default=str(ROOT / "build" / "demo-runs"))
    parser.add_argument("--out", default=str(ROOT / "build" / "bench-runtime.json"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the full demo (default: tests/containers/demo-small.yaml)")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    seed = make_workdir(scratch / "seed")
    t0 = time.monotonic()
    synth(seed)
    timings = {"synth_seconds": round(time.monotonic() - t0, 2), "runs": [], "cores": args.cores,
               "config": "full demo" if args.full else SMALL.relative_to(ROOT).as_posix()}
    hashes = {}
    for runtime in args.runtimes:
        wd = scratch / runtime
        shutil.copytree(seed, wd, symlinks=True)
        res = run_demo(wd, runtime, cores=args.cores, configfile=None if args.full else SMALL)
        hashes[runtime] = result_hashes(wd)
        res["outputs"] = len(hashes[runtime])
        timings["runs"].append(res)
        print(f"demo build runtime={runtime}: {res['seconds']:.1f}s, {res['jobs']} jobs, "
              f"{res['outputs']} outputs", file=sys.stderr)
    by = {r["runtime"]: r for r in timings["runs"]}
    if "local" in by:
        for runtime, res in by.items():
            if runtime == "local":
                continue
            extra = res["seconds"] - by["local"]["seconds"]
            res["overhead_percent"] = round(100 * extra / by["local"]["seconds"], 1)
            if res["jobs"]:
                res["overhead_seconds_per_job"] = round(extra * args.cores / res["jobs"], 3)
            res["identical_to_local"] = hashes[runtime] == hashes["local"]
            print(f"runtime={runtime} vs local: {res['overhead_percent']:+.1f}% wall time, "
                  f"{res.get('overhead_seconds_per_job', float('nan')):+.2f}s per job (x{args.cores} cores), "
                  f"outputs identical: {res['identical_to_local']}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r.get("identical_to_local", True) for r in timings["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
