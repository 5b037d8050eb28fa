"""The model quality gate, the accepted baseline and the per-build model changelog.

* ``vmpower gate``: compares the best models of a build (``results/summary.csv``, rows with
  ``best=True``) with the committed baseline (``models/baseline.json``): per node_type, output
  type, feature group and zone, held-out MAE and MAPE. It fails when a metric got worse by more
  than the configured tolerance (``gate.tolerance`` in config.yaml: new > old + max(relative *
  old, absolute)), or when a node_type, a model or a zone of the baseline disappeared. New
  node_types, models and zones pass and are reported. Prints a table of old vs new.
* ``vmpower accept-models``: writes the baseline from a build (``make accept-models``): the best
  models' metrics and the input runs with their checksums.
* ``vmpower changelog``: a markdown changelog of a build against the baseline: which node_types
  changed, metric deltas, input runs added, removed or modified.

Standard library only (no pandas; vmpower.pipeline.selection imports pandas only to write): it
runs right after the build, outside any image. Output is
deterministic (sorted, no timestamps, relative paths as given).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
from pathlib import Path

from vmpower.errors import InputError
from vmpower.io import dumps_json, write_text
from vmpower.pipeline.selection import best_zone_metrics

BASELINE_FORMAT = 1
METRICS = ("mae", "mape")
UNITS = {"mae": "W", "mape": "%"}
DEFAULT_INPUTS_GLOB = "results/report/*/provenance.json"


# ------------------------------------------------------------------------------ reading


def best_models(summary_path: str | Path) -> dict:
    """{node_type: {output_type: {feature_group: {"trainer", "zones": {zone: {"mae", "mape"}}}}}}
    from the summary's best rows (vmpower.pipeline.selection, the one reader of the selection)."""
    return best_zone_metrics(summary_path, METRICS)


def load_inputs(paths) -> dict:
    """{node_type: {run_id: {file: sha256}}} from the report's per-node_type provenance files."""
    inputs: dict = {}
    for p in sorted(map(str, paths)):
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(p, f"unreadable provenance file ({err.__class__.__name__})") from err
        if "node_type" not in data or "runs" not in data:
            raise InputError(p, "not a report provenance file (needs node_type and runs)")
        inputs[data["node_type"]] = {run: dict(sorted(files.items())) for run, files in sorted(data["runs"].items())}
    return inputs


def _input_paths(inputs: list[str] | None) -> list[str]:
    if inputs is not None:
        return list(inputs)
    return sorted(glob.glob(DEFAULT_INPUTS_GLOB))


def load_baseline(path: str | Path, missing_ok: bool = False) -> dict:
    p = Path(path)
    if not p.exists():
        if missing_ok:
            return {"format": BASELINE_FORMAT, "models": {}, "inputs": {}}
        raise InputError(p, "no baseline: accept a build first (make accept-models)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(p, f"not valid JSON ({err})") from err
    if data.get("format") != BASELINE_FORMAT or "models" not in data:
        raise InputError(p, f"not a vmpower baseline (format {BASELINE_FORMAT}); rewrite it with make accept-models")
    data.setdefault("inputs", {})
    return data


def _config(path: str | None) -> str | None:
    if path is None and Path("config.yaml").is_file():
        return "config.yaml"
    return path


def load_tolerance(config_path: str | None) -> dict:
    """gate.tolerance of the config (./config.yaml when there is one, else the bundled one), with
    the schema's defaults filled in (the only place they are defined)."""
    from vmpower import settings
    from vmpower.paths import CONFIG

    return settings.load(_config(config_path) or CONFIG)["gate"]["tolerance"]


# ------------------------------------------------------------------------------ comparing


def _allowed(old: float, tol: dict) -> float:
    return old + max(abs(old) * float(tol["relative"]), float(tol["absolute"]))


def compare(old_models: dict, new_models: dict, tolerance: dict) -> dict:
    """Rows of old vs new per node_type/output type/feature group/zone, the failures and notes."""
    rows, failures, notes = [], [], []
    for nt in sorted(set(old_models) | set(new_models)):
        old_nt, new_nt = old_models.get(nt), new_models.get(nt)
        if new_nt is None:
            failures.append(f"node_type {nt} disappeared (it has accepted models in the baseline)")
        elif old_nt is None:
            notes.append(f"new node_type {nt} (no baseline yet): passes; accept it with make accept-models")
        old_nt, new_nt = old_nt or {}, new_nt or {}
        for ot in sorted(set(old_nt) | set(new_nt)):
            for fg in sorted(set(old_nt.get(ot, {})) | set(new_nt.get(ot, {}))):
                old_m, new_m = old_nt.get(ot, {}).get(fg), new_nt.get(ot, {}).get(fg)
                key = f"{nt}/{ot}/{fg}"
                if new_m is None and nt in new_models:
                    failures.append(f"model {key} disappeared")
                elif old_m is None and nt in old_models:
                    notes.append(f"new model {key} ({new_m['trainer']}): passes")
                old_z = (old_m or {}).get("zones", {})
                new_z = (new_m or {}).get("zones", {})
                for zone in sorted(set(old_z) | set(new_z)):
                    row = {
                        "node_type": nt, "output_type": ot, "feature_group": fg, "zone": zone,
                        "trainer_old": (old_m or {}).get("trainer"), "trainer_new": (new_m or {}).get("trainer"),
                        "status": "ok",
                    }
                    if zone not in new_z:
                        row["status"] = "MISSING"
                        if new_m is not None:
                            failures.append(f"zone {zone} of {key} disappeared")
                    elif zone not in old_z:
                        row["status"] = "new"
                        if old_m is not None:
                            notes.append(f"new zone {zone} in {key}: passes")
                    for metric in METRICS:
                        old_v = old_z.get(zone, {}).get(metric)
                        new_v = new_z.get(zone, {}).get(metric)
                        row[f"{metric}_old"], row[f"{metric}_new"] = old_v, new_v
                        row[f"{metric}_delta"] = new_v - old_v if old_v is not None and new_v is not None else None
                        if zone in old_z and zone in new_z and old_v is not None:
                            limit = _allowed(old_v, tolerance[metric])
                            row[f"{metric}_limit"] = limit
                            if new_v is None:
                                notes.append(f"{key} {zone}: {metric.upper()} not computable in this build")
                            elif new_v > limit + 1e-12:
                                row["status"] = "WORSE"
                                failures.append(
                                    f"{key} {zone}: held-out {metric.upper()} {old_v:.4g} -> {new_v:.4g} "
                                    f"{UNITS[metric]} (allowed up to {limit:.4g})"
                                )
                    if row["status"] == "ok" and any(
                        (row[f"{m}_delta"] or 0.0) < 0 for m in METRICS
                    ) and all((row[f"{m}_delta"] or 0.0) <= 0 for m in METRICS):
                        row["status"] = "better"
                    rows.append(row)
    return {"rows": rows, "failures": failures, "notes": notes, "passed": not failures}


# ------------------------------------------------------------------------------ formatting


def _num(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _delta(v, fmt: str = "+.3f") -> str:
    return "-" if v is None else format(v, fmt)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _trainer(row) -> str:
    old, new = row["trainer_old"], row["trainer_new"]
    if old == new or old is None or new is None:
        return new or old or "-"
    return f"{old} -> {new}"


def gate_table(result: dict) -> list[str]:
    header = ["node_type", "output", "group", "zone", "best trainer", "MAE old (W)", "MAE new (W)", "ΔMAE",
              "MAPE old (%)", "MAPE new (%)", "ΔMAPE", "status"]
    rows = [
        [r["node_type"], r["output_type"], r["feature_group"], r["zone"], _trainer(r),
         _num(r["mae_old"]), _num(r["mae_new"]), _delta(r["mae_delta"]),
         _num(r["mape_old"], ".2f"), _num(r["mape_new"], ".2f"), _delta(r["mape_delta"], "+.2f"), r["status"]]
        for r in result["rows"]
    ]
    return _md_table(header, rows)


def gate_markdown(result: dict, baseline_path: str, tolerance: dict) -> str:
    verdict = "PASSED" if result["passed"] else "FAILED"
    tol = ", ".join(
        f"{m.upper()} +max({tolerance[m]['relative']:.0%}, {tolerance[m]['absolute']} {UNITS[m]})"
        for m in METRICS if m in tolerance
    )
    out = [f"# Model quality gate: {verdict}", "",
           f"Best models' held-out metrics vs the accepted baseline `{baseline_path}` (tolerance: {tol}).", ""]
    if result["failures"]:
        out += ["## Failures", ""] + [f"- {f}" for f in result["failures"]] + [""]
    if result["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    out += ["## Old vs new", ""] + gate_table(result) + [""]
    return "\n".join(out)


# ------------------------------------------------------------------------------ changelog


def _run_changes(old_runs: dict, new_runs: dict) -> dict:
    added = sorted(set(new_runs) - set(old_runs))
    removed = sorted(set(old_runs) - set(new_runs))
    modified = sorted(r for r in set(old_runs) & set(new_runs) if old_runs[r] != new_runs[r])
    return {"added": added, "removed": removed, "modified": modified}


def _node_type_change(nt: str, baseline: dict, new_models: dict, new_inputs: dict, rows: list[dict]):
    """One node_type's changelog: (its summary table row, its section's lines)."""
    old_inputs = baseline.get("inputs", {})
    in_old, in_new = nt in baseline.get("models", {}), nt in new_models
    runs = _run_changes(old_inputs.get(nt, {}), new_inputs.get(nt, {})) if nt in new_inputs or nt in old_inputs else None
    changed_rows = [
        r for r in rows
        if r["status"] != "ok" or r["trainer_old"] != r["trainer_new"]
        or any(r[f"{m}_delta"] not in (None, 0.0) for m in METRICS)
    ]
    input_changed = bool(runs and (runs["added"] or runs["removed"] or runs["modified"]))
    if not in_new:
        status = "removed"
    elif not in_old:
        status = "new"
    elif changed_rows or input_changed:
        status = "changed"
    else:
        status = "unchanged"
    best_changed = sorted({f"{r['output_type']}/{r['feature_group']}" for r in changed_rows})
    row = [
        nt, status, str(len(best_changed)),
        ", ".join(runs["added"]) if runs and runs["added"] else "-",
        ", ".join(runs["removed"]) if runs and runs["removed"] else "-",
        ", ".join(runs["modified"]) if runs and runs["modified"] else "-",
    ]
    sec = [f"## {nt}: {status}", ""]
    if runs is not None:
        n_new = len(new_inputs.get(nt, {}))
        sec.append(f"Input runs: {n_new} in this build, {len(old_inputs.get(nt, {}))} in the baseline.")
        for what in ("added", "removed", "modified"):
            if runs[what]:
                sec.append(f"- runs {what}: {', '.join(runs[what])}")
        sec.append("")
    if status == "unchanged":
        sec += ["Best models and held-out metrics identical to the baseline.", ""]
    elif rows:
        header = ["output", "group", "zone", "best trainer", "MAE old → new (W)", "ΔMAE", "MAPE old → new (%)",
                  "ΔMAPE", "status"]
        table = [
            [r["output_type"], r["feature_group"], r["zone"], _trainer(r),
             f"{_num(r['mae_old'])} → {_num(r['mae_new'])}", _delta(r["mae_delta"]),
             f"{_num(r['mape_old'], '.2f')} → {_num(r['mape_new'], '.2f')}", _delta(r["mape_delta"], "+.2f"),
             r["status"]]
            for r in (changed_rows if status == "changed" else rows)
        ]
        sec += _md_table(header, table) + [""]
    return row, sec


def changelog(baseline: dict, new_models: dict, new_inputs: dict, tolerance: dict, baseline_path: str) -> str:
    result = compare(baseline.get("models", {}), new_models, tolerance)
    old_inputs = baseline.get("inputs", {})
    by_nt: dict[str, list] = {}
    for r in result["rows"]:
        by_nt.setdefault(r["node_type"], []).append(r)
    node_types = sorted(set(baseline.get("models", {})) | set(new_models) | set(old_inputs) | set(new_inputs))
    out = ["# Model changelog", "",
           f"This build against the accepted baseline `{baseline_path}` "
           f"(quality gate: {'passed' if result['passed'] else 'FAILED'}).", ""]
    summary, sections = [], []
    for nt in node_types:
        row, sec = _node_type_change(nt, baseline, new_models, new_inputs, by_nt.get(nt, []))
        summary.append(row)
        sections += sec
    out += ["| node_type | status | best models changed | runs added | runs removed | runs modified |",
            "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in summary] + [""]
    if result["failures"]:
        out += ["Gate failures:", ""] + [f"- {f}" for f in result["failures"]] + [""]
    out += sections
    return "\n".join(out).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------ commands


def cmd_gate(args) -> int:
    tolerance = load_tolerance(args.config)
    baseline_path = args.baseline or _config_baseline(args.config)
    baseline = load_baseline(baseline_path)
    result = compare(baseline["models"], best_models(args.summary), tolerance)
    text = gate_markdown(result, baseline_path, tolerance)
    print(text)
    if args.output:
        write_text(text, args.output)
    if result["passed"]:
        print(f"vmpower gate: PASSED ({len(result['rows'])} zone metrics compared)", file=sys.stderr)
        return 0
    for line in result["failures"]:
        print(f"vmpower gate: {line}", file=sys.stderr)
    print(f"vmpower gate: FAILED ({len(result['failures'])} problem(s))", file=sys.stderr)
    return 1


def make_baseline(models: dict, inputs: dict) -> dict:
    return {
        "format": BASELINE_FORMAT,
        "description": "Held-out MAE (W) and MAPE (%) per zone of the accepted best models, and the input "
        "runs they were built from (sha256). Written by `make accept-models`; the CI quality gate "
        "(`vmpower gate`) compares every build with it.",
        "models": models,
        "inputs": inputs,
    }


def cmd_accept(args) -> int:
    models = best_models(args.summary)
    if not models:
        raise InputError(args.summary, "no trained best models to accept")
    inputs = load_inputs(_input_paths(args.inputs))
    output = args.output or _config_baseline(args.config)
    old = load_baseline(output, missing_ok=True)
    result = compare(old["models"], models, load_tolerance(args.config))
    write_text(dumps_json(make_baseline(models, inputs)), output)
    n = sum(len(fg) for ot in models.values() for fg in ot.values())
    print(f"vmpower accept-models: {n} best models of {len(models)} node types -> {output}", file=sys.stderr)
    for line in result["failures"]:
        print(f"vmpower accept-models: accepted although {line}", file=sys.stderr)
    return 0


def cmd_changelog(args) -> int:
    baseline_path = args.baseline or _config_baseline(args.config)
    baseline = load_baseline(baseline_path, missing_ok=True)
    text = changelog(baseline, best_models(args.summary), load_inputs(_input_paths(args.inputs)),
                     load_tolerance(args.config), baseline_path)
    if args.output:
        write_text(text, args.output)
    else:
        print(text, end="")
    return 0


def _config_baseline(config_path: str | None) -> str:
    config_path = _config(config_path)
    if config_path:
        from vmpower.configcheck import check_file

        cfg = check_file(config_path)
        value = (cfg.get("gate") or {}).get("baseline")
        if value:
            return str(value)
    return "models/baseline.json"


def register(sub: argparse._SubParsersAction) -> None:
    def common(p, inputs: bool = False):
        p.add_argument("--summary", default="results/summary.csv", help="the build's summary.csv")
        p.add_argument("--config", default=None,
                       help="config.yaml with gate.baseline and gate.tolerance (default: ./config.yaml if present)")
        if inputs:
            p.add_argument("--inputs", nargs="*", default=None,
                           help=f"per-node_type input provenance files (default: {DEFAULT_INPUTS_GLOB})")

    g = sub.add_parser("gate", help="fail when a best model got worse than the accepted baseline")
    common(g)
    g.add_argument("--baseline", default=None, help="accepted baseline (default: gate.baseline)")
    g.add_argument("--output", default=None, help="also write the old-vs-new table here (markdown)")
    g.set_defaults(func=cmd_gate)

    a = sub.add_parser("accept-models", help="write the baseline from this build (make accept-models)")
    common(a, inputs=True)
    a.add_argument("--output", default=None, help="baseline to write (default: gate.baseline)")
    a.set_defaults(func=cmd_accept)

    c = sub.add_parser("changelog", help="markdown changelog of this build against the baseline")
    common(c, inputs=True)
    c.add_argument("--baseline", default=None, help="accepted baseline (default: gate.baseline)")
    c.add_argument("--output", default=None, help="write here (default: stdout)")
    c.set_defaults(func=cmd_changelog)
