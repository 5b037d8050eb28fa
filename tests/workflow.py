"""Run the real workflow in a scratch copy of the repository (tests never touch ./results)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "schemas", "config.yaml", "src", "envs", "containers", "profiles")


def make_workspace(dest: Path, demo: bool = True) -> Path:
    """Copy the workflow (not results, not data) into dest and generate the demo data there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if demo:
        vmpower(dest, "synth", "--config", "config.yaml", "--out", "data/raw")
    return dest


def vmpower(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmpower", *args], cwd=ws, check=True, capture_output=True, text=True,
        env=_env(ws),
    )


def _env(ws: Path, hashseed: str | None = "0") -> dict:
    """The environment of a step in ws; hashseed None leaves PYTHONHASHSEED unset (random), as
    in a shell where `make` did not export it."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ws / "src")  # the copy's code, not the checkout's
    env.pop("PYTHONHASHSEED", None)
    if hashseed is not None:
        env["PYTHONHASHSEED"] = hashseed
    return env


def snakemake(ws: Path, *args: str, check: bool = True, timeout: int = 1800,
              worker: bool = False, hashseed: str | None = "0") -> subprocess.CompletedProcess:
    """snakemake in ws; with worker=True under `vmpower worker run` (as `make run` does)."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    if worker:
        cmd = [sys.executable, "-m", "vmpower", "worker", "run", "--", *cmd]
    res = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=timeout, env=_env(ws, hashseed))
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def tree_digest(root: Path, exclude_parts: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below root, keyed by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part in exclude_parts for part in rel.parts):
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def planned_jobs(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    counts, on = {}, False
    for line in (res.stdout + res.stderr).splitlines():
        if line.startswith("job ") and "count" in line:
            on = True
            continue
        if on:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                break
    return counts
