"""What a build does when Snakemake reads the Snakefile, so that the same command resumes after
any crash (a `kill -9` of snakemake, of the worker, a reboot):

* it names itself in $VMPOWER_BUILD, so its steps die with it (vmpower.lifeline);
* every Snakemake process of this working directory holds a shared flock on
  .snakemake/vmpower-build.lock for its whole life (the kernel drops it when the process dies,
  however it dies). A build that can take the lock exclusively knows that no other Snakemake
  runs here, so what a crashed one left is stale: it removes Snakemake's locks (what
  `snakemake --unlock` does) and the temporary files of io.atomic_path under results/.
  Outputs of jobs the crashed build did not see finish stay marked incomplete and are rerun
  (`rerun-incomplete: true` in profiles/default/config.yaml).

Jobs that Snakemake runs in a Snakemake of their own (SLURM) only name themselves: the build
on the submit host owns the directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

from vmpower import lifeline

LOCK_FILE = "vmpower-build.lock"
# io.atomic_path's names: ".<target name>.<8 random characters>.tmp[.<suffix>]"
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?")
_held: list[int] = []  # the lock's file descriptor, open for the life of this process


def _say(message: str) -> None:
    print(f"vmpower: {message}", file=sys.stderr, flush=True)


def stale_temps(results_dir: str | os.PathLike) -> list[Path]:
    """io.atomic_path's temporary files below results_dir, and the temporary model directories
    an export assembles before renaming (pipeline.artifact.write_model: same naming)."""
    out = []
    for parent, dirs, files in os.walk(results_dir):
        out += [Path(parent, f) for f in files + dirs if TEMP_NAME.fullmatch(f)]
        dirs[:] = [d for d in dirs if not TEMP_NAME.fullmatch(d)]  # removed whole, not walked
    return sorted(out)


def clear_stale(state_dir: Path, results_dir: str | os.PathLike, file_locks: bool = True) -> None:
    """Remove what a build that is no longer running left (call only with the lock held exclusively)."""
    locks = state_dir / "locks"
    if file_locks and locks.is_dir() and any(locks.iterdir()):
        shutil.rmtree(locks)
        _say(f"removed the locks of a build that ended without releasing them ({locks})")
    temps = stale_temps(results_dir)
    for path in temps:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if temps:
        _say(f"removed {len(temps)} temporary file(s) of interrupted steps under {results_dir}")


def hold(state_dir: Path) -> bool:
    """Hold the shared build lock for the life of this process; True when no other process
    held it (this process had it exclusively first)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by jobs
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
    _held.append(fd)
    return alone


def claim(workflow, results_dir: str) -> None:
    """Called by rules/common.smk when Snakemake reads the workflow."""
    mode = workflow.exec_mode.name
    if mode == "SUBPROCESS":
        return  # a job's own Snakemake under the build's: the build's name stays
    os.environ[lifeline.ENV] = lifeline.token()
    if mode != "DEFAULT" or _held:
        return
    state_dir = Path(".snakemake").absolute()
    try:
        alone = hold(state_dir)
        if alone:
            file_locks = workflow.workflow_settings.persistence_backend.name == "FILE"
            clear_stale(state_dir, results_dir, file_locks)
        fcntl.flock(_held[0], fcntl.LOCK_SH)  # now shared: other Snakemakes (-n, --lint) may run
    except OSError as exc:  # a file system without flock: Snakemake's own lock check stays
        _say(f"cannot lock {state_dir / LOCK_FILE} ({exc}); stale locks are not cleared")
