"""The raw-sample-to-feature contract as serving uses it: the pipeline's own code
(``ingest`` + ``vm_feature_frame`` with the model's ingest settings), so inference sees exactly
what training saw, and ``LiveFeatures``, the same computation on two live records without pandas
(tested equal to the pipeline's code).

Every call into the pipeline's feature contract is in this module (``_contract``).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from pathlib import Path

from vmpower import settings as settings_model
from vmpower.errors import InputError
from vmpower.paths import CONFIG

LIVE = Path("<live>")  # the "file" named in errors about live samples


def _contract():
    """(settings class, vm_feature_frame): the pipeline's raw-to-feature contract."""
    from vmpower.pipeline.features import FeatureSettings, vm_feature_frame

    return FeatureSettings, vm_feature_frame


def load_settings(config: str | None, metadata: dict | None = None):
    """Ingest settings (cumulative/perf/non-features): from --config when it has an ``ingest``
    section, else from the model's metadata (exported since the settings are recorded there),
    else ./config.yaml. A --config without ``ingest`` (e.g. only ``limits``) keeps the model's."""
    from vmpower.configcheck import check_file

    settings_cls, _frame = _contract()
    if config and "ingest" in check_file(config):
        return settings_cls.from_config(settings_model.load(config), str(config))
    if metadata and isinstance(metadata.get("ingest"), dict):
        # Hinge columns come from the model's own feature_engineering record (model_matrix).
        return settings_cls.from_ingest(metadata["ingest"], {}, "metadata.json")
    candidates = [Path(config)] if config else [Path("config.yaml"), CONFIG]
    for p in candidates:
        if p.is_file() and "ingest" in check_file(p):
            return settings_cls.from_config(settings_model.load(p), str(p))
    raise InputError(candidates[0], "no ingest settings: pass --config with the config.yaml the models were built with")


def frame_features(raw, settings):
    """(features frame, skip reasons) of a RawTable, exactly as ingest computes them."""
    _cls, vm_feature_frame = _contract()
    feats, _names, _notes = vm_feature_frame(raw, settings)
    return feats, feats.pop("_drop")


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def rate_features(settings, names) -> set[str]:
    """Features that are rates of cumulative counters (invalid across a counter reset)."""
    return {n for n in names if n.endswith("_rate") and _matches(n[:-5], settings.cumulative_features)}


def perf_inputs(settings, names) -> list[str]:
    """Features that need perf counters (directly or as the base of an engineered input)."""
    from vmpower.pipeline.engineer import base_feature

    out = []
    for n in names:
        cands = {n, base_feature(n) or n}
        cands |= {c[:-5] for c in cands if c.endswith("_rate")}
        if any(_matches(c, settings.perf_features) for c in cands):
            out.append(n)
    return out


def for_features(settings, names):
    """settings computing exactly the hinge inputs named in ``names``: a hinge is a formula of
    one raw feature, named in the model's features, whatever hinges --config sets."""
    import dataclasses

    from vmpower.pipeline import engineer

    return dataclasses.replace(settings, hinges=engineer.hinge_knots(list(names)))


def for_model(settings, model):
    return for_features(settings, model.features)


def model_matrix(model, feats, drop, settings, source):
    """The model's input matrix; rows whose rate features span a counter reset become NaN."""
    import numpy as np

    missing = [f for f in model.features if f not in feats.columns]
    if missing:
        raise InputError(
            source,
            f"model {model.name} needs feature(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            "that the samples lack (other collector version, or other ingest settings in --config?)",
        )
    X = feats[model.features].to_numpy("float64", copy=True)
    if rate_features(settings, model.features):
        X[drop.eq("counter_reset").fillna(False).to_numpy(bool)] = np.nan
    return X


def live_frame(prev: dict, cur: dict, settings):
    """The reference for live features: a RawTable of two consecutive collector records, built
    like ingest.read_vm_features builds a file's, so ``vm_feature_frame`` gives the current
    sample's features. ``LiveFeatures`` computes the same without pandas; tests compare them."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from vmpower.pipeline import ingest

    keys = list(dict.fromkeys([*prev, *cur]))  # from_pylist would take the first record's keys only
    df = ingest._to_frame(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in (prev, cur)]))
    num = [c for c in df.columns if df[c].dtype == "float64" or df[c].isna().all()]
    nan = df[num].isna().to_numpy()
    cum = np.array([any(fnmatch.fnmatchcase(c, p) for p in settings.cumulative_features) for c in num])
    # Unavailable now, or a counter without a previous value: the feature is absent this tick.
    # A gauge missing only in the previous window does not matter (that row is not predicted).
    kill = nan[1] | (nan[0] & cum)
    fill = nan[0] & ~nan[1] & ~cum
    cols = pd.Index(num, dtype=object)
    df.loc[0, cols[fill]] = df.loc[1, cols[fill]].to_numpy()
    df[cols[kill]] = np.nan
    return ingest.RawTable(LIVE, df)


def features_of(prev: dict, cur: dict, settings):
    """(features frame, skip reasons) of the newer record: the pipeline's code, the reference
    ``LiveFeatures`` is tested against."""
    return frame_features(live_frame(prev, cur, settings), settings)


_NULL, _BOOL, _NUM, _TEXT, _NESTED = range(5)
_KIND_NAMES = {_BOOL: "boolean", _NUM: "number", _TEXT: "text", _NESTED: "nested"}


def _kind(v) -> int:
    t = type(v)
    if t is float or t is int:  # the common case first: this runs for every field on every tick
        return _NUM
    if v is None:
        return _NULL
    if t is bool or isinstance(v, bool):
        return _BOOL
    if isinstance(v, numbers.Real):
        return _NUM  # NaN too: pyarrow keeps it a float (read back as missing)
    if isinstance(v, (list, tuple, dict)):
        return _NESTED
    return _TEXT


class LiveFeatures:
    """Features of the newer of two consecutive collector records, exactly as ``live_frame`` +
    ``vm_feature_frame`` compute them (same typing of fields, perf handling, rates, reset
    and gap detection, hinges), on a 2 x fields numpy array instead of pandas/pyarrow frames:
    a fraction of a millisecond per tick instead of tens of milliseconds.

    ``compute`` returns ({feature: value}, reason) where reason is ``counter_reset``,
    ``rate_gap`` or None, as the pipeline's ``_drop`` column of that row."""

    def __init__(self, settings):
        from vmpower.pipeline.engineer import hinge_name

        self.s = settings
        self._flags: dict[str, tuple[bool, bool, bool]] = {}  # field -> (cumulative, perf, non-feature)
        self._hinges = [(base, float(k), hinge_name(base, float(k))) for base, ks in settings.hinges.items() for k in ks]

    def flags(self, key: str) -> tuple[bool, bool, bool]:
        f = self._flags.get(key)
        if f is None:  # fnmatch per field once, not per tick
            s = self.s
            f = self._flags[key] = (_matches(key, s.cumulative_features), _matches(key, s.perf_features),
                                    key in s.non_features)
        return f

    def compute(self, prev: dict, cur: dict) -> tuple[dict[str, float], str | None]:
        keys, names, V, F = self._numbers(prev, cur)
        col = {k: j for j, k in enumerate(names)}
        present = set(keys)
        cum, feat = F[:, 0], ~F[:, 2]
        perf = F[:, 1] & feat
        _gauges_and_counters(V, cum)
        all_null = self._perf_and_nulls(V, names, col, present, perf, feat)
        dt, window = self._times(V, col, present, prev, cur)
        out, reason = _rates(V, names, feat & cum & ~all_null, feat, dt, window)
        np = _np()
        for base, k, name in self._hinges:
            if base in out:
                out[name] = float(np.square(np.maximum(out[base] - k, 0.0)))  # NaN stays NaN
        return out, reason

    def _numbers(self, prev: dict, cur: dict):
        """(all keys, numeric field names, values [2, n], flags [n, 3]), typed as pyarrow would."""
        np = _np()
        nan = math.nan
        keys = list(dict.fromkeys([*prev, *cur]))
        names, v0, v1, flags = [], [], [], []
        for k in keys:
            a, b = prev.get(k), cur.get(k)
            ta, tb = type(a), type(b)
            if not ((ta is float or ta is int) and (tb is float or tb is int)):  # fast path: two numbers
                kinds = {_kind(a), _kind(b)} - {_NULL}
                if len(kinds) > 1:  # pyarrow cannot type such a column either
                    raise InputError(LIVE, f"field {k} is {' and '.join(sorted(_KIND_NAMES[x] for x in kinds))} "
                                           "in consecutive samples")
                if kinds and kinds <= {_TEXT, _NESTED}:
                    continue  # text and nested fields are not features
                a = nan if a is None else float(a)
                b = nan if b is None else float(b)
            names.append(k)
            v0.append(a)
            v1.append(b)
            flags.append(self.flags(k))
        return keys, names, np.array([v0, v1], dtype="float64"), np.array(flags, dtype=bool).reshape(-1, 3)

    @staticmethod
    def _perf_and_nulls(V, names, col, present, perf, feat):
        """vm_feature_frame's perf handling and NaN check on these two rows; returns the
        all-null columns."""
        np = _np()
        zero_flag = V[:, col["perf_available"]] == 0 if "perf_available" in col else np.zeros(2, bool)
        if perf.any():
            # A perf counter 0 or null in both records was not counted; in a record flagged
            # perf_available=false, its zeros mean "not counted" (page faults and context
            # switches may still come from /proc).
            cols = np.flatnonzero(perf)
            block = V[:, cols]
            V[:, cols[((block == 0) | np.isnan(block)).all(axis=0)]] = math.nan
            if "perf_available" in present and zero_flag.any():
                rows = V[zero_flag][:, cols]
                V[np.ix_(zero_flag, cols)] = np.where(rows == 0, math.nan, rows)
        allowed = zero_flag if "perf_available" in present else np.zeros(2, bool)
        isnan = np.isnan(V)
        all_null = isnan.all(axis=0)
        bad = isnan & feat & ~all_null
        bad[:, perf] &= ~allowed[:, None]
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=0))[0])
            raise InputError(LIVE, f"feature {names[j]} has {int(bad[:, j].sum())} NaN/null values "
                                   f"(first at row {int(np.flatnonzero(bad[:, j])[0])})")
        return all_null

    @staticmethod
    def _times(V, col, present, prev, cur) -> tuple[float, float]:
        """(seconds between the records, the newer record's window)."""
        np = _np()
        t = V[:, col["timestamp_absolute"]] if "timestamp_absolute" in col else None
        if "timestamp_absolute" in present and t is None:
            raise InputError(LIVE, "timestamp_absolute is not a number")
        if t is None or np.isnan(t).all():
            t = _naive_times(prev, cur)
        dt = float(t[1] - t[0])
        window = float(V[1, col["time_delta_seconds"]]) if "time_delta_seconds" in col else dt
        if "time_delta_seconds" in present and "time_delta_seconds" not in col:
            raise InputError(LIVE, "time_delta_seconds is not a number")
        return dt, window


def _np():
    import numpy as np

    return np


def _gauges_and_counters(V, cum) -> None:
    """live_frame: a field unavailable now, or a counter without a previous value, is absent;
    a gauge missing only in the previous record takes the current value."""
    np = _np()
    isnan = np.isnan(V)
    kill = isnan[1] | (isnan[0] & cum)
    fill = isnan[0] & ~isnan[1] & ~cum
    V[0, fill] = V[1, fill]
    V[:, kill] = math.nan


def _rates(V, names, rates, feat, dt: float, window: float):
    """({feature: value} of the newer record, reason): counters become rates over dt."""
    np = _np()
    reason = None
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if rates.any():
            delta = V[1, rates] - V[0, rates]
            if (delta < 0).any():
                reason = "counter_reset"
            elif dt > 1.5 * max(window, 1e-9):  # False for a NaN window, as in the pipeline
                reason = "rate_gap"
            r = delta / dt
            for j, v in zip(np.flatnonzero(rates), r.tolist()):
                V[1, j] = v
        for j in np.flatnonzero(feat).tolist():
            out[names[j] + "_rate" if rates[j] else names[j]] = float(V[1, j])
    return out, reason


def _naive_times(prev: dict, cur: dict):
    import pandas as pd

    from vmpower.pipeline import ingest

    if "timestamp_iso" not in prev and "timestamp_iso" not in cur:
        raise InputError(LIVE, "samples have neither timestamp_absolute nor timestamp_iso")
    return ingest.naive_seconds(pd.Series([prev.get("timestamp_iso"), cur.get("timestamp_iso")]), LIVE)
