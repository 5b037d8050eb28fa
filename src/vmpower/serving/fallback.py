"""The fallback chain of ``vmpower predict`` and ``vmpower serve``.

The chain is the selected model, then the node_type's best model of every other feature group
by held-out MAE (vmpower.serving.selection). For each sample and zone, the first model of the chain
that has the zone, all of its inputs and a confidence at or above the threshold answers; when
only models below the threshold have their inputs, ``low_confidence`` "report" takes the first
of them and "drop" none. serve applies the rule tick by tick (exporter.Exporter, which also
falls back on an inference error); predict applies it to a whole file at once (``choose``) and
names the model of every row and zone. predict never exits 0 without watts: a file in which no
sample has the inputs of any model is an error naming the missing features.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vmpower.errors import InputError
from vmpower.names import power_column
from vmpower.serving.artifact import Model
from vmpower.serving.live import for_features, frame_features, load_settings, model_matrix, perf_inputs
from vmpower.serving.selection import ModelRequest, resolve_paths

log = logging.getLogger("vmpower.serving.fallback")

# The seed's validation.confidence_threshold (--confidence-threshold).
DEFAULT_CONFIDENCE_THRESHOLD = 0.7


def label(model: Model) -> str:
    """<feature_group>/<model_name>: the model name alone is the same for a trainer in every group."""
    name, group = model.labels
    return f"{group}/{name}" if group else name


def load_model(path: Path, level: int = logging.INFO, limits=None) -> Model:
    t0 = time.perf_counter()
    model = Model.load(path, limits)
    log.log(level, "loaded %s (version %s, %d features, zones %s) in %.3f s", model.name, model.version,
            len(model.features), ",".join(model.zones), time.perf_counter() - t0)
    return model


def resolve_chain(request: ModelRequest, config: str | None = None, *, fallback: bool = True,
                  use_perf: bool = True, level: int = logging.INFO, limits=None) -> list[Model]:
    """The chain: the selected model, then (from a results directory, with ``fallback``) the
    node_type's best model of every other feature group by MAE. Without perf, only models whose
    features can be collected are chosen (an explicit feature group is kept first). ``config``:
    the --config whose ingest settings apply (None: each model's own)."""

    def usable(meta: dict) -> bool:
        return use_perf or not perf_inputs(load_settings(config, meta), meta.get("features") or [])

    paths = resolve_paths(request, usable, level, limits)
    if not fallback:
        paths = paths[:1]
    models = [load_model(p, level, limits) for p in paths]
    if len(models) > 1:
        log.log(level, "fallback order: %s", " > ".join(label(m) for m in models))
    return models


@dataclass(frozen=True)
class ChainSpec:
    """Which model chain to load: the model request, the --config whose ingest settings apply
    (None: each model's own) and whether to fall back to the other feature groups."""

    request: ModelRequest
    config: str | None
    fallback: bool

    @classmethod
    def from_flags(cls, flags: Mapping) -> ChainSpec:
        """From predict/serve's flag values (``vars(args)``): --model and its selection options,
        --config and --no-fallback."""
        spec = flags.get("machine_spec")
        request = ModelRequest(model=Path(flags["model"]), node_type=flags.get("node_type"),
                               machine_spec=Path(spec) if spec else None, output_type=flags["output_type"],
                               feature_group=flags.get("feature_group"))
        return cls(request, flags.get("config"), not flags.get("no_fallback"))

    def for_model(self, path: str | Path) -> ChainSpec:
        """The same chain options for another --model path (a model version)."""
        return replace(self, request=replace(self.request, model=Path(path)))

    def load(self, **kw) -> list[Model]:
        """``resolve_chain`` of this spec (``kw``: use_perf, level, limits)."""
        return resolve_chain(self.request, self.config, fallback=self.fallback, **kw)


def choose(ok, conf, threshold: float, low_confidence: str = "report"):
    """Per row, the column (the zone's models in chain order) of the model that answers, -1 for
    none. ok [N, K]: the model has all its inputs; conf [N, K]: its confidence, NaN for a model
    exported without training ranges (always passes)."""
    import numpy as np

    if low_confidence not in ("report", "drop"):
        raise ValueError(f"low_confidence must be report or drop, not {low_confidence!r}")
    passing = ok & ~(conf < threshold)  # NaN < t is False: no ranges, no confidence test
    low = ok & ~passing
    pick = np.where(passing.any(axis=1), passing.argmax(axis=1), -1)
    if low_confidence == "report":
        pick = np.where((pick < 0) & low.any(axis=1), low.argmax(axis=1), pick)
    return pick


@dataclass
class Inputs:
    """One model's input matrix over a file's samples."""

    X: object  # [N, n_features] float64, NaN where unavailable
    ok: object  # [N] bool: every input present
    conf: object  # [N] float64 confidence, NaN without training ranges
    absent: list[str]  # features the file does not have at all


def chain_inputs(models, settings, raw):
    """(Inputs per model, the rows' skip reasons): features computed once per distinct ingest
    settings (normally one for the whole chain), with the hinge inputs of all its models."""
    import numpy as np

    bases: list = []
    group: list[int] = []
    for s in settings:
        base = for_features(s, [])
        if base not in bases:
            bases.append(base)
        group.append(bases.index(base))
    frames = []
    for i, base in enumerate(bases):
        s = for_features(base, [f for m, g in zip(models, group) if g == i for f in m.features])
        frames.append((s, *frame_features(raw, s)))
    out = []
    for m, g in zip(models, group):
        s, feats, drop = frames[g]
        absent = [f for f in m.features if f not in feats.columns]
        X = model_matrix(m, feats.reindex(columns=[*feats.columns, *absent]), drop, s, raw.path)
        ok = np.isfinite(X).all(axis=1)
        conf = np.full(len(X), np.nan)
        if m.ranges is not None:
            lo, hi = m.ranges
            conf = ((X >= lo) & (X <= hi)).sum(axis=1) / len(lo)
        out.append(Inputs(X, ok, conf, absent))
    return out, frames[group[0]][2]


def _infer(model: Model, zone: str, X):
    try:
        return model.predict_zone(zone, X)
    except Exception as exc:  # onnxruntime's own types
        raise InputError(model.source, f"inference of zone {zone} failed ({' '.join(str(exc).split())[:120]})") from None


def predict_chain(models, settings, input_path, *, threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                  low_confidence: str = "report", limits=None):
    """(per-sample frame, summary line) for a VM features file: timestamps, ``power_<zone>``,
    ``skip_reason``, then ``model_<zone>`` (the model that answered, empty without watts).
    Raises InputError when no sample gets watts."""
    import numpy as np
    import pandas as pd

    from vmpower.pipeline import ingest

    raw = ingest.read_vm_features(input_path, limits)
    inputs, drop = chain_inputs(models, settings, raw)
    n = len(raw.df)
    zones = list(dict.fromkeys(z for m in models for z in m.zones))
    out = pd.DataFrame({c: raw.df[c] for c in ("timestamp_absolute", "timestamp_iso") if c in raw.df.columns})
    names, low = {}, np.zeros(n, bool)
    for zone in zones:
        cands = [i for i, m in enumerate(models) if zone in m.zones]
        ok = np.column_stack([inputs[i].ok for i in cands])
        pick = choose(ok, np.column_stack([inputs[i].conf for i in cands]), threshold, low_confidence)
        low |= (pick < 0) & ok.any(axis=1)  # inputs present, every such model below the threshold ("drop")
        watts, who = np.full(n, np.nan), np.full(n, None, dtype=object)
        for j, i in enumerate(cands):
            rows = pick == j
            if rows.any():
                watts[rows] = _infer(models[i], zone, inputs[i].X[rows])
                who[rows] = label(models[i])
        out[power_column(zone)] = watts
        names[f"model_{zone}"] = pd.Series(who, index=out.index, dtype="string")
    power = out[[power_column(z) for z in zones]]
    lacking = power.isna().any(axis=1).to_numpy()
    reason = pd.Series(pd.NA, index=out.index, dtype="string")
    reason[lacking] = drop[lacking].fillna("missing_features")
    reason[lacking & low] = "low_confidence"
    out["skip_reason"] = reason
    for k, v in names.items():
        out[k] = v
    served = power.notna().any(axis=1).to_numpy()
    if not served.any():
        lead = "for any of its" if low.any() else "(no model's inputs) in any of its"
        raise InputError(raw.path, f"no watts {lead} {n} samples: {_missing(models, inputs, ~served, reason)}")
    return out, _summary(out, zones, models, inputs, served, reason)


def _missing(models, inputs, rows, reason, top: int = 3) -> str:
    """What the rows lack, per model of the chain (first ``top``; models lacking the same are
    listed together): the features unavailable in most of them (an engineered input only when
    its raw feature is there), then the rows' skip reasons other than missing features."""
    import numpy as np

    from vmpower.pipeline.engineer import base_feature

    lacks: dict[str, list[str]] = {}
    for m, x in list(zip(models, inputs))[:top]:
        bad = (~np.isfinite(x.X[rows])).sum(axis=0)
        names = [m.features[j] for j in np.argsort(-bad, kind="stable") if bad[j]]
        names = [f for f in names if base_feature(f) not in names]
        text = ", ".join(f + (" (not in the file)" if f in x.absent else "") for f in names[:4])
        text = (text + (f" +{len(names) - 4} more" if len(names) > 4 else "")) or "nothing (low confidence)"
        lacks.setdefault(text, []).append(label(m))
    parts = [f"{', '.join(who)} {'lack' if len(who) > 1 else 'lacks'} {text}" for text, who in lacks.items()]
    counts = reason[rows].value_counts()
    if set(counts.index) - {"missing_features"}:
        parts.append("reasons: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "; ".join(parts)


def _summary(out, zones, models, inputs, served, reason) -> str:
    """One line: samples with watts, the models that gave them per zone, what the others lacked."""
    per_zone: dict[str, list[str]] = {}
    for z in zones:
        counts = out[f"model_{z}"].value_counts()
        text = ", ".join(f"{k} {counts[k]}" for k in map(label, models) if k in counts.index)  # chain order
        per_zone.setdefault(text, []).append(z)
    used = "; ".join(f"{','.join(zs)}: {text}" for text, zs in per_zone.items())
    line = f"watts for {int(served.sum())}/{len(out)} samples ({used})"
    if not served.all():
        line += f"; {int((~served).sum())} lacked the inputs of every model ({_missing(models, inputs, ~served, reason)})"
    return line

