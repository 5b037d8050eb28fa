"""Which exported model(s) to use: the node_type for this machine (processor match, else the
nearest machine spec), then that node_type's best model per feature group by held-out MAE
(results/best.json, or the models' own metadata). Shared by ``vmpower predict`` and
``vmpower serve`` (vmpower.serving.fallback builds their chain from it); docs/deploy.md describes it.

Models whose metadata records a status other than trained/ok (not trained, skipped, or failed
the export's checks, e.g. onnx_mismatch) are never selected."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmpower.errors import InputError
from vmpower.serving.artifact import USABLE_STATUSES, read_metadata, usable_status  # noqa: F401

log = logging.getLogger("vmpower.serving.selection")

DEFAULT_OUTPUT_TYPE = "AbsPower"


_VENDORS = (("intel", "intel"), ("amd", "amd"), ("epyc", "amd"), ("ryzen", "amd"), ("arm", "arm"),
            ("neoverse", "arm"), ("ampere", "arm"), ("graviton", "arm"))
_NOISE = re.compile(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\d+-core", re.I)


def processor_family(processor: str | None) -> tuple[str, str]:
    """(vendor, family) of a CPU model string, e.g. ("intel", "xeon gold"), ("amd", "epyc")."""
    words = _NOISE.sub(" ", (processor or "").lower()).split()
    vendor = next((v for w in words for k, v in _VENDORS if w.startswith(k)), words[0] if words else "")
    words = [w for w in words if w not in ("intel", "amd", "arm")]
    family = words[:1] + [m.group(0) for m in [re.match(r"[a-z]+", w) for w in words[1:2]] if m]
    return vendor, " ".join(family)


def _log_ratio(a, b) -> float:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return 1.0  # unknown counts as a factor of two
    if not (a > 0 and b > 0):
        return 1.0
    return abs(math.log2(a / b))


def spec_distance(a: dict, b: dict) -> float:
    """Distance between machine specs (docs/deploy.md): 0 for the same hardware.

    4·[vendor differs] + 2·[family differs] + |log2 cores ratio| + |log2 chips ratio|
    + 0.5·|log2 memory ratio| + 2·|log2 frequency ratio|; an unknown field counts 1."""
    va, fa = processor_family(a.get("processor"))
    vb, fb = processor_family(b.get("processor"))
    return (4.0 * (va != vb) + 2.0 * (fa != fb) + _log_ratio(a.get("cores"), b.get("cores"))
            + _log_ratio(a.get("chips"), b.get("chips")) + 0.5 * _log_ratio(a.get("memory"), b.get("memory"))
            + 2.0 * _log_ratio(a.get("frequency"), b.get("frequency")))


def _norm_processor(p) -> str:
    return " ".join(_NOISE.sub(" ", str(p or "").lower()).split())


def is_model_collection(path: Path) -> bool:
    """A directory to select from (results/ with best.json, or holding model archives), not a model."""
    return path.is_dir() and not (path / "metadata.json").exists()


@dataclass(frozen=True)
class ModelRequest:
    """What ``--model`` and its selection options ask for: a model (directory or .zip), or a
    results directory to select from by node_type or machine spec, output type and group."""

    model: Path
    node_type: str | None
    machine_spec: Path | None
    output_type: str
    feature_group: str | None


def best_table(results: Path, limits=None) -> tuple[dict, Path]:
    """{node_type: {output_type: {group: entry}}} with each entry's mae_mean, and the file named
    in errors: results/best.json, or else the best (lowest MAE) trained model per node_type,
    output type and feature group among the model directories and archives under the directory
    (the pipeline's one rule, vmpower.pipeline.selection)."""
    from vmpower.pipeline.selection import pick_best, read_best

    best_path = results / "best.json"
    if best_path.exists():
        return read_best(best_path, limits), best_path
    dirs = [p.parent for p in sorted(results.rglob("metadata.json"))]
    zips = [p for p in sorted(results.rglob("*.zip")) if p.with_suffix("") not in dirs]
    best = pick_best((p, read_metadata(p, limits)) for p in dirs + zips)
    if not best:
        raise InputError(results, "no best.json, metadata.json or trained model archive found here")
    return best, results


@dataclass
class Selection:
    path: Path
    node_type: str
    output_type: str
    feature_group: str
    exact: bool
    distance: float | None = None
    fallbacks: list[Path] = field(default_factory=list)  # other groups of the node_type, by MAE


def _model_path(results: Path, output_type: str, group: str, entry: dict) -> Path:
    if "path" in entry:
        return Path(entry["path"])
    base = results / "models" / output_type / group / entry["model_name"]
    for p in (base, base.with_name(base.name + ".zip"), Path(entry.get("archive", "")), results.parent / entry.get("archive", "")):
        if p.name and p.exists():
            return p
    raise InputError(results / "best.json", f"model {entry['model_name']} not found under {results / 'models'}")


@dataclass
class _Table:
    """best_table's answer and how to pick within one node_type."""

    results: Path
    best: dict
    where: Path
    output_type: str
    feature_group: str | None
    usable: object
    limits: object

    def ranked(self, nt: str) -> list[tuple[str, Path]]:
        """(group, model path) of the node_type that can serve, chosen group first, then by MAE."""
        output_type = self.output_type
        groups = self.best[nt].get(output_type) or {}
        if not groups:
            raise InputError(self.where, f"node_type {nt} has no {output_type} model (has {', '.join(self.best[nt])})")
        order = sorted(groups, key=lambda k: (groups[k]["mae_mean"], k))  # lowest held-out MAE first
        paths, ok, failed = [], [], {}
        for g in order:
            p = _model_path(self.results, output_type, g, groups[g])
            meta = read_metadata(p, self.limits)
            if not (usable_status(groups[g]) and usable_status(meta)):  # e.g. onnx_mismatch: never served
                failed[g] = groups[g].get("status") if not usable_status(groups[g]) else meta.get("status")
                continue
            paths.append((g, p))
            if self.usable is None or self.usable(meta):
                ok.append((g, p))
        if failed:
            log.warning("%s: skipping %s", nt, ", ".join(f"{output_type}/{g} (status {s})" for g, s in failed.items()))
        if not paths:
            raise InputError(self.where, f"no {output_type} model of node_type {nt} can serve (statuses: "
                                         f"{', '.join(f'{g} {s}' for g, s in failed.items())})")
        if self.feature_group:
            return self._chosen_first(nt, groups, paths, ok, failed)
        if not ok:
            raise InputError(self.where, f"no {output_type} model of node_type {nt} can be computed from the features "
                                         f"collected here (groups: {', '.join(order)}; perf counters needed?)")
        return ok

    def _chosen_first(self, nt, groups, paths, ok, failed) -> list[tuple[str, Path]]:
        output_type, feature_group = self.output_type, self.feature_group
        if feature_group in failed:
            raise InputError(self.where, f"{output_type}/{feature_group} of node_type {nt} cannot serve "
                                         f"(status {failed[feature_group]})")
        if feature_group not in groups:
            raise InputError(self.where, f"node_type {nt} has no {output_type}/{feature_group} model "
                                         f"(groups: {', '.join(sorted(groups))})")
        chosen = next(gp for gp in paths if gp[0] == feature_group)
        if chosen not in ok:
            log.warning("%s/%s of %s needs features that cannot be collected here: its zones will be absent "
                        "unless a fallback model serves them", output_type, feature_group, nt)
        return [chosen] + [gp for gp in ok if gp != chosen]

    def selection(self, nt, chain, exact, dist) -> Selection:
        (g, path), rest = chain[0], chain[1:]
        return Selection(path, nt, self.output_type, g, exact, dist, [p for _g, p in rest])


def select_model(results: str | Path, *, node_type: str | None = None, machine_spec: dict | None = None,
                 output_type: str = DEFAULT_OUTPUT_TYPE, feature_group: str | None = None,
                 usable=None, limits=None) -> Selection:
    """The best model for a node_type, or for the node_type whose hardware matches machine_spec.

    Match: same processor model string (inside a VM cores/memory describe the VM, not the host);
    several matches or none: the smallest spec_distance, and no match logs a warning. Within the
    node_type: feature_group, else the group with the lowest MAE among those ``usable(metadata)``
    accepts (e.g. computable without perf). ``fallbacks`` lists the node_type's other usable
    groups' best models by MAE."""
    results = Path(results)
    best, where = best_table(results, limits)
    table = _Table(results, best, where, output_type, feature_group, usable, limits)
    if node_type is not None:
        if node_type not in best:
            raise InputError(where, f"no model for node_type {node_type} (known: {', '.join(sorted(best)) or 'none'})")
        return table.selection(node_type, table.ranked(node_type), True, 0.0)
    if machine_spec is None:
        from vmpower.collect.machine import machine_spec as local_spec

        machine_spec = local_spec()
    return _nearest(table, machine_spec)


def _nearest(table: _Table, machine_spec: dict) -> Selection:
    """The node_type with the same processor, else the nearest spec (with a warning)."""
    scored, skipped = [], []
    for nt in sorted(table.best):
        try:
            chain = table.ranked(nt)
        except InputError as exc:  # e.g. only perf models: another node_type may still do
            skipped.append(exc)
            continue
        spec = read_metadata(chain[0][1], table.limits).get("machine_spec") or {}
        same = bool(spec) and _norm_processor(spec.get("processor")) == _norm_processor(machine_spec.get("processor"))
        scored.append((not same, spec_distance(machine_spec, spec), nt, chain))
    if not scored:
        raise skipped[0]
    miss, dist, nt, chain = min(scored, key=lambda s: s[:3])
    if miss:
        log.warning("no node_type has processor %r: using the nearest, %s (spec distance %.2f)",
                    machine_spec.get("processor"), nt, dist)
    return table.selection(nt, chain, not miss, dist)


def read_spec(path: Path | None, limits=None) -> dict | None:
    """A machine_spec.json to match (None: read this machine)."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read machine spec ({exc})") from None
    from vmpower.jsonguard import read_json

    spec = read_json(Path(path), data, limits, "machine spec")
    if not isinstance(spec, dict):
        raise InputError(path, "machine spec must be a JSON object")
    return spec


def resolve_paths(request: ModelRequest, usable=None, level: int = logging.INFO, limits=None) -> list[Path]:
    """A model (directory or .zip), or a results dir (best.json, or model archives) plus a
    node_type / machine spec: the chosen model first, then its fallbacks (none for a single model).
    ``level``: of the "selected" log line (predict names its models in its output instead)."""
    path = Path(request.model)
    if is_model_collection(path):
        sel = select_model(path, node_type=request.node_type, machine_spec=read_spec(request.machine_spec, limits),
                           output_type=request.output_type, feature_group=request.feature_group, usable=usable,
                           limits=limits)
        log.log(level, "selected %s (node_type %s, %s/%s%s)", sel.path, sel.node_type, sel.output_type, sel.feature_group,
                "" if sel.exact else f", nearest spec, distance {sel.distance:.2f}")
        return [sel.path, *sel.fallbacks]
    if request.node_type or request.machine_spec:
        raise InputError(path, "--node-type/--machine-spec select from a results directory with best.json")
    return [path]
