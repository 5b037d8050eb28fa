"""One typed settings model, built once from the validated config.

Defaults live only in config.yaml and schemas/config.schema.yaml. A command reads its settings
through :func:`load` (a whole config file: checked, schema defaults filled in) or receives the
workflow's ``--settings`` JSON (already validated and filled by Snakemake), and builds the typed
section it needs with ``Section.build``. A section class declares fields without defaults: a
missing key is a one-line error naming it, never a silent fallback to a second default.
Domain functions take these typed values; only ``cmd_*`` functions see argparse.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path

from vmpower.errors import InputError
from vmpower.paths import SCHEMAS


def _fill_defaults(doc: dict, schema: dict, defs: dict) -> dict:
    """``doc`` with the schema's ``default`` values filled in (recursively, like Snakemake's validate)."""
    if "$ref" in schema:
        schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], schema)
    out = dict(doc)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = sub["default"]
        if isinstance(out.get(key), dict) and isinstance(sub, dict):
            out[key] = _fill_defaults(out[key], sub, defs)
    return out


@functools.cache
def _schema() -> dict:
    import yaml

    return yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text(encoding="utf-8"))


def load(path: str | Path) -> dict:
    """A config file, checked against the schema, with the schema's defaults filled in."""
    from vmpower.configcheck import check_file

    schema = _schema()
    return _fill_defaults(check_file(path), schema, schema.get("$defs", {}))


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of the typed config sections: fields without defaults, built from a mapping."""

    @classmethod
    def build(cls, mapping: dict, source: str = "settings"):
        """The section from a flat mapping (extra keys ignored); a missing key is one line."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in mapping]
        if missing:
            raise InputError(source, f"missing setting(s) for {cls.__name__}: {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        return cls(**{n: _coerce(mapping[n], hints.get(n)) for n in names})


def _coerce(value, hint):
    """JSON numbers are ints or floats; a float field gets a float (1 -> 1.0), lists become tuples."""
    floats = hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType) and float in typing.get_args(hint))
    if floats and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value
