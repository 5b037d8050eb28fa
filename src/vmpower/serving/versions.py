"""The versioned model store of ``serve``/``predict --model-versions`` (vm-energy-config model_path).

Layout: ``model_path/<version>/`` or ``model_path/<version>.zip``, each anything ``--model``
takes (an exported model directory or archive, or a results directory to select from).
Versions are ordered by name, digit runs compared as numbers (v2 < v10, 2026-01-02 < 2026-01-10).
Names starting with "." are ignored: write a version under a hidden name and rename it into
place, so serve never sees half of one. A version's stamp (mtimes of the entry and its files)
tells a changed version from a known one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vmpower.errors import InputError

log = logging.getLogger("vmpower.serving.versions")


@dataclass(frozen=True)
class Version:
    name: str
    path: Path
    stamp: tuple


def order_key(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _stamp(path: Path) -> tuple:
    st = path.stat()
    parts = [(path.name, st.st_mtime_ns, st.st_size, st.st_ino)]
    if path.is_dir():  # a file rewritten in place changes its own mtime, not its directory's
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                s = os.stat(os.path.join(root, f))
                parts.append((f, s.st_mtime_ns, s.st_size))
    return tuple(parts)


def scan(root: str | Path) -> list[Version]:
    """The versions in ``root``, oldest first."""
    root = Path(root)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        raise InputError(root, "model versions directory not found") from None
    except NotADirectoryError:
        raise InputError(root, "model versions path is not a directory") from None
    out = []
    for e in entries:
        if e.name.startswith(".") or not (e.is_dir() or e.name.endswith(".zip")):
            continue
        try:
            out.append(Version(e.name.removesuffix(".zip") if not e.is_dir() else e.name, Path(e.path),
                               _stamp(Path(e.path))))
        except OSError:  # removed while scanning: gone
            continue
    return sorted(out, key=lambda v: order_key(v.name))


def prune(root: str | Path, keep: int, protect=()) -> list[str]:
    """Delete all but the newest ``keep`` versions (never one named in ``protect``); the names
    deleted. A read-only store (a ConfigMap) is left as it is, with a warning."""
    versions = scan(root)
    doomed = [v for v in versions[:-keep] if v.name not in set(protect)] if keep > 0 else []
    gone = []
    for v in doomed:
        try:
            shutil.rmtree(v.path) if v.path.is_dir() else v.path.unlink()
            gone.append(v.name)
        except OSError as exc:
            log.warning("cannot prune old model version %s: %s", v.path, exc.strerror or exc)
    if gone:
        log.info("pruned model version(s) %s (keeping the newest %d)", ", ".join(gone), keep)
    return gone


def newest_loadable(root, load) -> Version:
    """predict: the newest version ``load(path)`` accepts (older ones are tried in turn)."""
    versions = scan(root)
    for v in reversed(versions):
        try:
            load(v.path)
            return v
        except InputError as exc:
            log.warning("model version %s refused: %s", v.name, exc.problem)
    raise InputError(root, "no usable model version" + ("" if versions else " (empty)"))
