"""The raw-sample-to-feature contract shared by training (the merge) and serving (predict, serve).

``vm_feature_frame(vm_raw, settings)`` turns a VM file's records (an ``ingest.RawTable``) into the
numeric features a model sees; ``FeatureSettings`` are the config keys it reads (the ``ingest``
section plus ``features.hinges``). Both sides call this one function, so inference computes
exactly what training did. The steps themselves (text columns, absent perf counters, sample
times) are in vmframe.py; counter rates in counters.py; the hinge basis in engineer.py.

Nothing is dropped silently: a column that is not a number, or that is missing in every sample,
is recorded in ``notes["features_dropped"]`` with the reason; a sample with a missing value is
dropped with reason ``missing_feature`` (its count per feature in the notes).
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from vmpower.pipeline import counters, engineer, ingest, vmframe
from vmpower.settings import Section

# The config sections whose keys the pipeline's settings classes read (nested config.yaml);
# the workflow's --settings JSON has them flattened into one mapping.
SECTIONS = ("ingest", "merge", "features")


def flatten(cfg: dict, sections=SECTIONS) -> dict:
    """One flat mapping from a whole config (settings.load output: top-level keys plus the keys
    of ``sections``) or from the workflow's already flat --settings JSON (returned as is)."""
    out = dict(cfg)
    for section in sections:
        if isinstance(cfg.get(section), dict):
            out.update(cfg[section])
    return out


@dataclasses.dataclass(frozen=True)
class FeatureSettings(Section):
    """What vm_feature_frame reads: config ``ingest`` (which columns are bookkeeping, counters,
    perf counters; how counters are decided) and ``features.hinges`` (per-sample hinge basis)."""

    non_features: list
    perf_features: list
    cumulative_features: list
    counter_semantics: dict
    counter_detection: dict
    hinges: dict

    @classmethod
    def from_config(cls, cfg: dict, source: str = "settings"):
        """From a whole config (vmpower.settings.load output) or the workflow's flat --settings."""
        return cls.build(flatten(cfg), source)

    @classmethod
    def from_ingest(cls, ingest_section: dict, hinges: dict, source: str = "settings") -> "FeatureSettings":
        """From an ``ingest`` section alone (e.g. a model's metadata) and the hinge knots to compute."""
        return cls.build({**ingest_section, "hinges": hinges}, source)

    @classmethod
    def of(cls, settings) -> "FeatureSettings":
        """The feature settings held by a wider settings object (e.g. merge.MergeSettings)."""
        if type(settings) is cls:
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def vm_feature_frame(raw: ingest.RawTable, settings) -> tuple[pd.DataFrame, list[str], dict]:
    """Numeric feature columns of a VM file, with absent perf counters as NaN and counters turned
    into per-second rates (counters.py decides each counter's semantics from the data), plus the
    per-sample hinge basis. ``settings``: FeatureSettings (or any settings holding its fields,
    e.g. merge.MergeSettings). Returns (frame with a ``_drop`` reason column, feature names, notes)."""
    s = FeatureSettings.of(settings)
    df, notes = raw.df, {}
    dropped = vmframe.text_columns(df, s.non_features)
    numeric = [c for c in df.columns if c not in s.non_features and pd.api.types.is_float_dtype(df[c].dtype)]
    feats = df[numeric].copy()
    perf_cols = [c for c in numeric if vmframe.matches(c, s.perf_features)]
    allowed_nan = vmframe.perf_absent(df, feats, perf_cols, notes)
    present, drop = vmframe.missing_values(df, feats, numeric, perf_cols, allowed_nan, notes, dropped)
    if dropped:
        notes["features_dropped"] = dict(sorted(dropped.items()))

    candidates = [c for c in present if vmframe.matches(c, s.cumulative_features)]
    decisions = counters.decide(feats[candidates], s.counter_semantics, s.counter_detection)
    if decisions:
        notes["counter_semantics"] = {c: decisions[c]["semantics"] for c in sorted(decisions)}
        notes["counter_decisions"] = {c: decisions[c] for c in sorted(decisions)}
    t, window = vmframe.sample_times(raw)
    feats = counters.rates(feats, decisions, t, window, drop)
    basis = engineer.hinges(feats, s.hinges)
    if len(basis.columns):
        feats = pd.concat([feats, basis], axis=1)
    feature_names = list(feats.columns)
    feats["_drop"] = drop
    return feats, feature_names, notes
