"""Where the repository's own files are (a source checkout: src/vmpower/ -> repository root)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
CONFIG = REPO / "config.yaml"
