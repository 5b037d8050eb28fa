"""The raw-data layout: <raw_dir>/<node_type>/<run_id>/ with one VM file and one host file.

Snakemake imports this module while planning (rules/common.smk), so it uses the standard library
only. A layout problem never stops planning: it is recorded, and the run gets a
``check_layout`` job that fails with one line (``vmpower check-layout``), so only that run's
node_type fails and every other node_type still builds (``--keep-going``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vmpower.errors import InputError

# The names a node_type or run directory may have: the workflow's wildcard constraint. Such a
# name is safe in a shell word, a file name, a Kepler model name and an archive member.
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME_RE = re.compile(NAME)
VM_PATTERNS = ("vm_features_*.json", "vm_features_*.jsonl")
BM_PATTERNS = ("bm_power_*.csv", "bm_power_*.json")
# Ids of invalid names start with INVALID; the run id of the problem "run files directly in
# <node_type>/" too.
INVALID = "invalid-"
LOOSE_FILES = f"{INVALID}files-outside-a-run"


@dataclass
class Layout:
    """Healthy runs ({node_type: {run_id: {"vm": file, "bm": file, "dir": dir}}}) and problems
    ({(node_type_id, run_id): InputError naming the directory}, ids made safe for file names)."""

    runs: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)

    def broken_node_types(self) -> list[str]:
        """The node_types (valid names only) that have a layout problem."""
        return sorted({nt for nt, _ in self.problems if not nt.startswith(INVALID)})


def _cleaned(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-")


def safe_id(name: str) -> str:
    """A name as it may appear in a wildcard: itself when valid, else a readable stand-in that
    keeps distinct names apart (a hash of the original)."""
    if _NAME_RE.fullmatch(name):
        return name
    return f"{INVALID}{_cleaned(name) or 'name'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _name_problem(kind: str, name: str) -> str | None:
    if _NAME_RE.fullmatch(name):
        return None
    hint = f", e.g. to {_cleaned(name)!r}" if _cleaned(name) else ""
    what = "file name" if kind == "file" else f"{kind} directory name"
    return (f"{what} {name!r} is not allowed (only letters, digits, '_', '.', '-', starting "
            f"with a letter or digit): rename it{hint}")


def _shown(path: Path) -> str:
    """The path as the one-line message names it (repr when it holds a newline or the like)."""
    return str(path) if str(path).isprintable() else repr(str(path))


def _run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """The VM and host files of a directory (one listing; its name is never read as a pattern)."""
    with os.scandir(run_dir) as entries:
        names = sorted(e.name for e in entries if e.is_file())
    return tuple([run_dir / n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
                 for patterns in (VM_PATTERNS, BM_PATTERNS))


def run_problems(run_dir: Path, vm: list[Path], bm: list[Path]) -> list[str]:
    """Everything wrong with one run directory's layout (empty: a valid run)."""
    problems = [p for p in (_name_problem("node_type", run_dir.parent.name), _name_problem("run", run_dir.name)) if p]
    problems += [p for p in (_name_problem("file", f.name) for f in vm + bm) if p]
    for files, kind, partner, want in ((vm, "VM", bm, "vm_features_*.json"), (bm, "host", vm, "bm_power_*.csv|json")):
        if not files:
            problems.append(f"no {kind} file {want} next to {partner[0].name}" if partner else f"no {kind} file {want}")
        elif len(files) > 1:
            problems.append(f"{len(files)} {kind} files ({', '.join(f.name for f in files)}), a run has exactly one")
    return problems


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def discover(raw_dir: str | Path) -> Layout:
    """Every run below raw_dir, sorted; a run with a layout problem is reported, not raised.
    A directory holding a VM or host file is a run; anything else there is left alone."""
    layout = Layout()
    for nt_dir in _subdirs(Path(raw_dir)):
        loose = sum(_run_files(nt_dir), [])
        if loose:  # a run's files put directly into <node_type>/ would otherwise be ignored silently
            layout.problems[(safe_id(nt_dir.name), LOOSE_FILES)] = InputError(
                _shown(nt_dir), f"{', '.join(f.name for f in loose)} directly in a node_type directory: "
                "put each run into its own <node_type>/<run_id>/ directory")
        for run_dir in _subdirs(nt_dir):
            vm, bm = _run_files(run_dir)
            if not vm and not bm:
                continue
            problems = run_problems(run_dir, vm, bm)
            if problems:
                layout.problems[(safe_id(nt_dir.name), safe_id(run_dir.name))] = InputError(_shown(run_dir), "; ".join(problems))
            else:
                layout.runs.setdefault(nt_dir.name, {})[run_dir.name] = {"vm": str(vm[0]), "bm": str(bm[0]), "dir": str(run_dir)}
    return layout


def _cmd_check_layout(args) -> int:
    problems = discover(args.raw_dir).problems
    if args.only:  # a check_layout job: its run had a problem when the build was planned
        key = tuple(args.only.split("/", 1))
        # gone since then: the build was planned without the run, so it must not go on
        raise problems.get(key, InputError(Path(args.raw_dir, args.only), "the layout problem found when the build "
                                           "was planned is gone: start the build again"))
    if problems:
        for err in problems.values():
            print(f"vmpower check-layout: error: {err}", file=sys.stderr)
        return 2
    if args.ok_file:
        from vmpower.io import write_text

        write_text("layout ok\n", args.ok_file)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-layout",
        help="check the raw-data layout (one VM file and one host file per run, valid names)",
        description="Print one line per layout problem below RAW_DIR (a missing or second VM/host file, a "
        "node_type/run directory name outside [A-Za-z0-9_.-], run files outside a run directory) and exit 2 "
        "when there is one (docs/data-format.md).",
    )
    p.add_argument("raw_dir", metavar="RAW_DIR", help="<raw_dir> of <raw_dir>/<node_type>/<run_id>/")
    p.add_argument("--only", metavar="NODE_TYPE/RUN_ID",
                   help="report this run's problem (ids as the workflow names them); always fails")
    p.add_argument("--ok-file", default=None, help="write 'layout ok' here when there is no problem (a rule output)")
    p.set_defaults(func=_cmd_check_layout)
