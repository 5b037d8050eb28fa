"""The ``synth:`` section of one config file or of several overlaid ones: checked against
schemas/synth.schema.yaml and for what a schema cannot say (workload names, profile rules)."""

from __future__ import annotations

from pathlib import Path

from vmpower import workloads
from vmpower.errors import InputError
from vmpower.paths import SCHEMAS


def overlay(base: dict, over: dict) -> dict:
    """Overlay ``over`` on ``base``: dicts merge key by key, anything else is replaced
    (as snakemake --configfile a b does)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_schema(cfg: dict, where: str) -> None:
    schema_path = SCHEMAS / "synth.schema.yaml"
    if not schema_path.exists():  # absent in an installed wheel; the workflow's config schema covers it
        return
    import jsonschema
    import yaml

    schema = yaml.safe_load(schema_path.read_text(encoding="utf-8"))
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if err is not None:
        at = "synth." + ".".join(map(str, err.absolute_path)) if err.absolute_path else "synth"
        raise InputError(where, f"{at}: {err.message}")


def _check_runs(cfg: dict, where: str) -> None:
    """Workload names exist; legacy node_types have a legacy section and perf-less JSON runs."""
    if "idle" not in cfg["workloads"]:
        raise InputError(where, "synth.workloads needs an 'idle' entry (the background characteristics)")
    for nt_name, nt in cfg["node_types"].items():
        legacy = nt.get("profile") == "legacy"
        if legacy and "legacy" not in cfg:
            raise InputError(where, f"synth.node_types.{nt_name}: profile legacy needs a synth.legacy section")
        for run_spec in nt.get("runs", cfg["runs"]):
            if legacy and (run_spec.get("perf") or run_spec.get("killed")
                           or run_spec.get("vm_format", "json") != "json"):
                raise InputError(where, f"synth.node_types.{nt_name}: run {run_spec['id']}: the legacy profile "
                                        "writes perf-less JSON arrays only (no perf, killed or vm_format)")
            items = workloads.parse(run_spec["workload"], where)
            for name, _ in items:
                if name not in cfg["workloads"]:
                    raise InputError(where, f"synth.runs.{run_spec['id']}: unknown workload {name!r}")


def load_config(paths: str | Path | list) -> dict:
    """The synth: section of one config file or of several overlaid ones (later ones win)."""
    from vmpower.configcheck import check_file

    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    doc: dict = {}
    for path in paths:
        doc = overlay(doc, check_file(path))  # syntax (line, column) and unknown keys, per file
    where = str(paths[-1]) if len(paths) == 1 else ", ".join(map(str, paths))
    if not isinstance(doc.get("synth"), dict):
        raise InputError(where, "no 'synth:' section")
    cfg = doc["synth"]
    _check_schema(cfg, where)
    _check_runs(cfg, where)
    return cfg
