"""Where benchmarks write their numbers: one JSON file per suite, one section per measurement."""

from __future__ import annotations

import json
import threading
from pathlib import Path

_lock = threading.Lock()


def record(out: Path, section: str, values: dict) -> None:
    """Set ``section`` of the JSON file ``out`` to ``values`` (other sections are kept)."""
    with _lock:
        data = json.loads(out.read_text()) if out.exists() else {}
        data[section] = values
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n{section}: {json.dumps(values)}")
