"""Atomic, deterministic file writing shared by every stage.

Outputs are written to a temporary file next to the target and renamed into place, so a
failed job never leaves a half-written output behind, and a step whose build has ended never
publishes one (vmpower.lifeline). A step killed outright (kill -9) leaves its temporary file,
named ``.<target>.<random>.tmp[<suffix>]``: the next build removes them (vmpower.ops.buildstate).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vmpower import lifeline

# Exported model files and archives, signing keys (EP-003: models stored with restricted file
# permissions, 600); their directories 0700.
MODEL_MODE = 0o600
MODEL_DIR_MODE = 0o700


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.
    ``mode``: the file's permissions (0o600 for models and keys, EP-003's restricted storage)."""
    target = Path(path)
    # A device, FIFO or socket (e.g. --output /dev/null) is written to, never renamed over: as
    # root, a rename would replace /dev/null itself with a regular file.
    special = target.exists() and not (target.is_file() or target.is_dir())
    if not special:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix,
                               dir=None if special else target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        lifeline.check()
        if special:
            with open(tmp_path, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp_path.unlink()
            return
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    """Make values JSON-safe and stable: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(obj: Any, path: str | os.PathLike) -> None:
    text = dumps_json(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet(df, path: str | os.PathLike) -> None:
    """Write a DataFrame as parquet with settings that give the same bytes for the same data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3, use_dictionary=True)


def read_parquet(path: str | os.PathLike):
    import pandas as pd

    return pd.read_parquet(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_if_changed(data: bytes, path: str | os.PathLike) -> bool:
    """Write ``data`` unless the file already holds exactly these bytes (keeps mtimes stable
    so Snakemake does not rebuild). Returns True when the file was written."""
    target = Path(path)
    if target.exists() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return False
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return True
