"""Bounds on untrusted input (issue 19): JSON depth and width, model archive sizes, HTTP answer
sizes, and the exporter's connection handling.

The defaults are defined once, as the ``default`` of each key of the ``limits`` section of
schemas/config.schema.yaml, which documents them. ``predict``, ``serve`` and the collectors run
in a VM without config.yaml: they read those defaults, and ``--config`` (when the command has
it) overrides them with its ``limits`` section, validated against the same schema.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path

from vmpower.paths import SCHEMAS
from vmpower.errors import InputError

SCHEMA = SCHEMAS / "config.schema.yaml"


@dataclass(frozen=True)
class Limits:
    max_json_depth: int
    max_columns: int
    max_archive_member_bytes: int
    max_archive_total_bytes: int
    max_http_response_bytes: int
    exporter_backlog: int
    exporter_max_connections: int
    exporter_request_timeout_seconds: float

    def replace(self, **changes) -> "Limits":
        import dataclasses

        return dataclasses.replace(self, **changes)


@functools.lru_cache(maxsize=1)
def _section_schema() -> dict:
    import yaml

    try:
        schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
        return schema["properties"]["limits"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise InputError(SCHEMA, f"cannot read the limits' defaults ({' '.join(str(exc).split())[:120]}); "
                                 "vmpower runs from its checkout (PYTHONPATH=<checkout>/src)") from None


def defaults() -> Limits:
    props = _section_schema()["properties"]
    return Limits(**{f.name: props[f.name]["default"] for f in fields(Limits)})


def from_section(section: dict | None, source="config", validated: bool = False) -> Limits:
    """The defaults overridden by a config's ``limits`` section (validated: one line on error).
    ``validated``: the section was checked against the schema already (a config read by
    vmpower.settings.load, or the workflow's --settings, which Snakemake checked and filled):
    a complete one is taken as it is, without reading the schema (a job starts faster)."""
    names = [f.name for f in fields(Limits)]
    if validated and section and all(n in section for n in names):
        return Limits(**{n: section[n] for n in names})
    if not section:
        return defaults()
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_section_schema()).iter_errors(section))
    if err is not None:
        where = ".".join(str(p) for p in ("limits", *err.absolute_path))
        raise InputError(source, f"{where}: {err.message}")
    return defaults().replace(**section)


def load(config: str | Path | None) -> Limits:
    """Limits of a config file (its ``limits`` section over the defaults); defaults without one."""
    if not config:
        return defaults()
    import yaml

    path = Path(config)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"not a vmpower config ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(cfg, dict):
        raise InputError(path, "not a vmpower config (not a mapping)")
    return from_section(cfg.get("limits"), path)
