"""Shared by the serving test files: one build of real exported models per test session
(bench.predict_artifacts, by the pipeline's own steps) and helpers over it."""

import hashlib
import json
import shutil
from pathlib import Path

from bench.predict_artifacts import NODE_TYPE, build
from vmpower.names import MANIFEST
from vmpower.serving import fallback, selection

SYS_GBR = ("AbsPower", "SystemOnly", "GradientBoostingRegressor")
SYS_LR = ("AbsPower", "SystemOnly", "LinearRegression")
SYS_XGB = ("AbsPower", "SystemOnly", "XGBRegressor")
CNT_LR = ("AbsPower", "CounterOnly", "LinearRegression")
ACT_LR = ("AbsPower", "Activity", "LinearRegression")
DYN_LR = ("DynPower", "SystemOnly", "LinearRegression")
PERF_FIELDS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
               "page_faults", "context_switches", "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")

_BUILT: dict = {}


def artifacts(tmp_path_factory) -> dict:
    """The models, built once per session whichever test file asks first."""
    if "art" not in _BUILT:
        _BUILT["art"] = build(tmp_path_factory.mktemp("serving"))
    return _BUILT["art"]


def _copy(art, key, tmp_path) -> Path:
    return Path(shutil.copytree(art["models"][key], tmp_path / art["models"][key].name))


def _rewrite_manifest(d: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(d.iterdir())
             if p.name != MANIFEST]
    (d / MANIFEST).write_text("\n".join(lines) + "\n")


def _chain(art, *, use_perf: bool = True, no_fallback: bool = False, **kw) -> list:
    base = {"model": art["results"], "node_type": NODE_TYPE, "machine_spec": None, "output_type": "AbsPower",
            "feature_group": None}
    request = selection.ModelRequest(**{**base, **kw})
    return fallback.resolve_chain(request, None, fallback=not no_fallback, use_perf=use_perf)


def _groups(models) -> list[str]:
    return [m.metadata["feature_group"] for m in models]


def _variant(art, tmp_path, name, edit) -> Path:
    """run02-mix with every record passed through edit(index, record)."""
    records = _records(art)
    for i, r in enumerate(records):
        edit(i, r)
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def _strip_perf(r: dict) -> None:
    """As the seed's collector writes a sample without perf: counters 0, no flag."""
    r.update(dict.fromkeys(PERF_FIELDS, 0))
    r.pop("perf_available", None)


def _best_label(art, group: str) -> tuple[str, tuple]:
    entry = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"][group]
    return f"{group}/{entry['model_name']}", ("AbsPower", group, entry["trainer"])


def _records_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def _watts(registry) -> dict:
    return {s.labels["zone"]: s.value for s in registry.collect() if s.name == "kepler_node_cpu_watts" for s in s.samples}


def _records(art, run="run02-mix") -> list[dict]:
    return json.loads(art["vm_files"][run].read_text())


def _who(model) -> dict:
    return {"model_name": model.name, "feature_group": model.metadata["feature_group"]}


def _sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def _series(registry, name) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples if s.name == name}
