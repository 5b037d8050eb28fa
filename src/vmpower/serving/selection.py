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

log = logging.getLogger("vmpower.serving.selection")

DEFAULT_OUTPUT_TYPE = "AbsPower"
# Statuses of a model that can serve ("trained" as exported; "ok" in summaries).
USABLE_STATUSES = ("trained", "ok")


def usable_status(meta: dict) -> bool:
    return meta.get("status", "trained") in USABLE_STATUSES


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


def read_metadata(path: Path, limits=None) -> dict:
    """metadata.json of a model dir or zip, unverified (selection only; the chosen one is verified),
    size- and depth-bounded by ``limits`` (default: the built-in ones)."""
    from vmpower.serving.archive import read_model_files

    files = read_model_files(path, limits, names={"metadata.json"})
    if "metadata.json" not in files:
        raise InputError(path, "cannot read metadata.json (not in the model)")
    return _json(path, files["metadata.json"], limits, "metadata.json")


def _json(path: Path, data: bytes, limits, what: str):
    """Bounded JSON (vmpower.jsonguard): one line naming the file on any problem."""
    from vmpower import jsonguard
    from vmpower import limits as limits_mod

    try:
        return jsonguard.loads(data, path, limits or limits_mod.defaults())
    except InputError as exc:
        raise InputError(path, f"cannot read {what} ({exc.problem})") from None


def is_model_collection(path: Path) -> bool:
    """A directory to select from (results/ with best.json, or holding model archives), not a model."""
    return path.is_dir() and not (path / "metadata.json").exists()


def best_table(results: Path, limits=None) -> tuple[dict, Path]:
    """{node_type: {output_type: {group: entry}}} with each entry's mae_mean, and the file named
    in errors: results/best.json, or else the best (lowest MAE) trained model per node_type,
    output type and feature group among the model directories and archives under the directory."""
    best_path = results / "best.json"
    if best_path.exists():
        try:
            data = best_path.read_bytes()
        except OSError as exc:
            raise InputError(best_path, f"cannot read best models ({exc})") from None
        best = _json(best_path, data, limits, "best models")
        if not isinstance(best, dict):
            raise InputError(best_path, "cannot read best models (not a JSON object)")
        return best, best_path
    dirs = [p.parent for p in sorted(results.rglob("metadata.json"))]
    zips = [p for p in sorted(results.rglob("*.zip")) if p.with_suffix("") not in dirs]
    best: dict = {}
    for p in dirs + zips:
        meta = read_metadata(p, limits)
        if meta.get("status") is None or not usable_status(meta) or meta.get("mae") is None:
            continue
        entry = {"trainer": str(meta.get("trainer", "")).removesuffix("Trainer"), "model_name": meta.get("model_name"),
                 "mae_mean": float(meta["mae"]), "path": str(p)}
        slot = best.setdefault(meta["node_type"], {}).setdefault(meta["output_type"], {})
        old = slot.get(meta["feature_group"])
        if old is None or (entry["mae_mean"], entry["model_name"]) < (old["mae_mean"], old["model_name"]):
            slot[meta["feature_group"]] = entry
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

    def ranked(nt: str) -> list[tuple[str, Path]]:
        groups = best[nt].get(output_type) or {}
        if not groups:
            raise InputError(where, f"node_type {nt} has no {output_type} model (has {', '.join(best[nt])})")
        order = sorted(groups, key=lambda k: (groups[k]["mae_mean"], k))  # lowest held-out MAE first
        paths, ok, failed = [], [], {}
        for g in order:
            p = _model_path(results, output_type, g, groups[g])
            meta = read_metadata(p, limits)
            if not (usable_status(groups[g]) and usable_status(meta)):  # e.g. onnx_mismatch: never served
                failed[g] = groups[g].get("status") if not usable_status(groups[g]) else meta.get("status")
                continue
            paths.append((g, p))
            if usable is None or usable(meta):
                ok.append((g, p))
        if failed:
            log.warning("%s: skipping %s", nt, ", ".join(f"{output_type}/{g} (status {s})" for g, s in failed.items()))
        if not paths:
            raise InputError(where, f"no {output_type} model of node_type {nt} can serve (statuses: "
                                    f"{', '.join(f'{g} {s}' for g, s in failed.items())})")
        if feature_group:
            if feature_group in failed:
                raise InputError(where, f"{output_type}/{feature_group} of node_type {nt} cannot serve "
                                        f"(status {failed[feature_group]})")
            if feature_group not in groups:
                raise InputError(where, f"node_type {nt} has no {output_type}/{feature_group} model (groups: {', '.join(sorted(groups))})")
            chosen = next(gp for gp in paths if gp[0] == feature_group)
            if chosen not in ok:
                log.warning("%s/%s of %s needs features that cannot be collected here: its zones will be absent "
                            "unless a fallback model serves them", output_type, feature_group, nt)
            return [chosen] + [gp for gp in ok if gp != chosen]
        if not ok:
            raise InputError(where, f"no {output_type} model of node_type {nt} can be computed from the features "
                                    f"collected here (groups: {', '.join(order)}; perf counters needed?)")
        return ok

    def selection(nt, chain, exact, dist) -> Selection:
        (g, path), rest = chain[0], chain[1:]
        return Selection(path, nt, output_type, g, exact, dist, [p for _g, p in rest])

    if node_type is not None:
        if node_type not in best:
            raise InputError(where, f"no model for node_type {node_type} (known: {', '.join(sorted(best)) or 'none'})")
        return selection(node_type, ranked(node_type), True, 0.0)
    if machine_spec is None:
        from vmpower.collect.orchestrate import machine_spec as local_spec

        machine_spec = local_spec()
    scored, skipped = [], []
    for nt in sorted(best):
        try:
            chain = ranked(nt)
        except InputError as exc:  # e.g. only perf models: another node_type may still do
            skipped.append(exc)
            continue
        spec = read_metadata(chain[0][1], limits).get("machine_spec") or {}
        same = bool(spec) and _norm_processor(spec.get("processor")) == _norm_processor(machine_spec.get("processor"))
        scored.append((not same, spec_distance(machine_spec, spec), nt, chain))
    if not scored:
        raise skipped[0]
    miss, dist, nt, chain = min(scored, key=lambda s: s[:3])
    if miss:
        log.warning("no node_type has processor %r: using the nearest, %s (spec distance %.2f)",
                    machine_spec.get("processor"), nt, dist)
    return selection(nt, chain, not miss, dist)


def _read_spec(args, limits=None) -> dict | None:
    if not args.machine_spec:
        return None
    try:
        data = Path(args.machine_spec).read_bytes()
    except OSError as exc:
        raise InputError(args.machine_spec, f"cannot read machine spec ({exc})") from None
    spec = _json(Path(args.machine_spec), data, limits, "machine spec")
    if not isinstance(spec, dict):
        raise InputError(args.machine_spec, "machine spec must be a JSON object")
    return spec


def resolve_paths(args, usable=None, level: int = logging.INFO, limits=None) -> list[Path]:
    """--model DIR|ZIP, or a results dir (best.json, or model archives) plus --node-type /
    --machine-spec: the chosen model first, then its fallbacks (none for a single model).
    ``level``: of the "selected" log line (predict names its models in its output instead)."""
    path = Path(args.model)
    if is_model_collection(path):
        sel = select_model(path, node_type=args.node_type, machine_spec=_read_spec(args, limits),
                           output_type=args.output_type, feature_group=args.feature_group, usable=usable, limits=limits)
        log.log(level, "selected %s (node_type %s, %s/%s%s)", sel.path, sel.node_type, sel.output_type, sel.feature_group,
                 "" if sel.exact else f", nearest spec, distance {sel.distance:.2f}")
        return [sel.path, *sel.fallbacks]
    if args.node_type or args.machine_spec:
        raise InputError(path, "--node-type/--machine-spec select from a results directory with best.json")
    return [path]
