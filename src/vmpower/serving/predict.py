"""Use exported models: ``vmpower predict`` (batch) and ``vmpower serve`` (Prometheus exporter).

Only onnxruntime and the archive's ``metadata.json`` are used (feature order, zones, training
ranges), never pickles. Every load verifies ``manifest.sha256`` and the consistency of metadata
and ONNX graphs first; a tampered or mismatched model is refused with a one-line InputError.

Features are computed from raw VM samples by the pipeline's own code (``ingest`` +
``merge.vm_feature_frame`` with the model's ingest settings), so inference sees exactly what
training saw. The exporter computes the same features of its last two live records with
``LiveFeatures`` (no pandas per tick; tested equal to the pipeline's code). Model selection
(vmpower.serving.selection), the fallback chain predict and serve share (vmpower.serving.fallback), confidence
and the machine distance are documented in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import logging
import math
import numbers
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmpower.paths import CONFIG
from vmpower.configcheck import check_file
from vmpower.errors import InputError
from vmpower.serving.selection import DEFAULT_OUTPUT_TYPE, usable_status

log = logging.getLogger("vmpower.serving.predict")

MANIFEST = "manifest.sha256"  # same name as vmpower.pipeline.export (not imported: it pulls in pandas)
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
# The seed's validation.confidence_threshold (serve --confidence-threshold).
DEFAULT_CONFIDENCE_THRESHOLD = 0.7
LIVE = Path("<live>")  # the "file" named in errors about live samples


# ---------------------------------------------------------------- loading and integrity


def read_artifact(path: str | Path, limits=None) -> dict[str, bytes]:
    """All files of an exported model (directory or .zip), by relative name, read once, with
    their sizes bounded by ``limits`` (vmpower.serving.archive)."""
    from vmpower.serving.archive import read_model_files

    return read_model_files(path, limits)


def verify_manifest(path: Path, files: dict[str, bytes]) -> str:
    """Check every file against manifest.sha256; return the model version (manifest digest)."""
    if MANIFEST not in files:
        raise InputError(path, f"no {MANIFEST}: cannot verify the model's integrity")
    listed: dict[str, str] = {}
    for n, line in enumerate(files[MANIFEST].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line)
        if not m:
            raise InputError(path, f"{MANIFEST} line {n} is malformed: {line[:80]!r}")
        listed[m.group(2)] = m.group(1)
    for name, digest in listed.items():
        if name not in files:
            raise InputError(path, f"{name} is listed in {MANIFEST} but missing")
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise InputError(path, f"{name} does not match its sha256 in {MANIFEST} (file changed)")
    extra = sorted(set(files) - set(listed) - {MANIFEST, MANIFEST + ".sig"})  # issue 17 hook: the signature
    if extra:
        raise InputError(path, f"{extra[0]} is not listed in {MANIFEST} (unexpected file)")
    return hashlib.sha256(files[MANIFEST]).hexdigest()[:12]


def _session(path: Path, name: str, data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One sample per call: thread pools cost more than they save and would compete with the VM.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(path, f"{name} is not a loadable ONNX model ({' '.join(str(exc).split())[:120]})") from None


def _training_ranges(path: Path, meta: dict, features: list[str]):
    """(lo, hi) arrays of the training data's per-feature [min, max], or None (older export)."""
    import numpy as np

    ranges = (meta.get("training_data") or {}).get("feature_ranges")
    if not ranges:
        return None
    try:
        lo = np.array([float(ranges[f]["min"]) for f in features])
        hi = np.array([float(ranges[f]["max"]) for f in features])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "metadata.json training_data.feature_ranges does not give min/max for every feature") from None
    if not (lo <= hi).all():
        raise InputError(path, "metadata.json training_data.feature_ranges has a min above its max")
    return lo, hi


def _metadata(path: Path, data: bytes, limits) -> dict:
    from vmpower import jsonguard
    from vmpower import limits as limits_mod

    try:
        meta = jsonguard.loads(data, path, limits or limits_mod.defaults())
    except InputError as exc:
        raise InputError(path, f"metadata.json: {exc.problem}") from None
    if not isinstance(meta, dict):
        raise InputError(path, "metadata.json is not a JSON object")
    return meta


@dataclass
class Model:
    """An exported, verified model: one onnxruntime session per zone."""

    source: Path
    metadata: dict
    features: list[str]
    zones: list[str]
    version: str
    sessions: dict = field(repr=False)
    input_name: str = "features"
    output_names: dict = field(default_factory=dict, repr=False)
    ranges: tuple | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.metadata.get("model_name", self.source.name))

    @property
    def labels(self) -> tuple[str, str]:
        """(model_name, feature_group): the name alone is the same for one trainer in every group."""
        return self.name, str(self.metadata.get("feature_group", ""))

    @property
    def training_rows(self) -> int | None:
        return (self.metadata.get("training_data") or {}).get("rows")

    @property
    def last_training_time(self) -> float | None:
        return (self.metadata.get("training_data") or {}).get("last_sample_time")

    @classmethod
    def load(cls, path: str | Path, limits=None) -> "Model":
        path = Path(path)
        files = read_artifact(path, limits)
        version = verify_manifest(path, files)
        from vmpower.serving import signing  # issue 17 hook: signature policy

        signing.check(path, files)
        if "metadata.json" not in files:
            raise InputError(path, "no metadata.json")
        meta = _metadata(path, files["metadata.json"], limits)
        if not usable_status(meta):
            raise InputError(path, f"model is not usable (status {meta.get('status')}: {meta.get('reason')})")
        features, zones = meta.get("features"), meta.get("zones")
        if not features or not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise InputError(path, "metadata.json has no feature list")
        if not zones or not isinstance(zones, list):
            raise InputError(path, "metadata.json has no zone list")
        spec = meta.get("input") or {}
        shape = spec.get("shape") or [None, None]
        if len(shape) != 2 or shape[1] != len(features):
            raise InputError(path, f"metadata.json input shape {shape} does not match its {len(features)} features")
        onnx_files = {n for n in files if n.endswith(".onnx")}
        wanted = {f"{z}.onnx" for z in zones}
        if onnx_files - wanted:
            raise InputError(path, f"{sorted(onnx_files - wanted)[0]} is not a zone of metadata.json (zones: {', '.join(zones)})")
        if wanted - onnx_files:
            raise InputError(path, f"zone {sorted(wanted - onnx_files)[0][:-5]} of metadata.json has no ONNX file")
        ranges = _training_ranges(path, meta, features)
        input_name = spec.get("name", "features")
        sessions, outputs = {}, {}
        for zone in zones:
            fname = f"{zone}.onnx"
            sess = _session(path, fname, files[fname])
            inputs = sess.get_inputs()
            if len(inputs) != 1 or inputs[0].name != input_name or inputs[0].type != "tensor(double)":
                got = ", ".join(f"{i.name}:{i.type}" for i in inputs)
                raise InputError(path, f"{fname} input is {got}, metadata.json says {input_name}:tensor(double)")
            width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
            if width != len(features):
                raise InputError(path, f"{fname} takes {width} features, metadata.json lists {len(features)}")
            sessions[zone] = sess
            outputs[zone] = sess.get_outputs()[0].name
        return cls(path, meta, list(features), list(zones), version, sessions, input_name, outputs, ranges)

    def predict_zone(self, zone: str, X):
        """Watts of one zone for complete rows (no NaN) of X [N, n_features] float64."""
        import numpy as np

        out = self.sessions[zone].run([self.output_names[zone]], {self.input_name: X})[0]
        return np.asarray(out, dtype="float64").reshape(len(X))

    def predict(self, X):
        """Watts [N, n_zones] in ``self.zones`` order; rows with a missing feature give NaN."""
        import numpy as np

        X = np.ascontiguousarray(X, dtype="float64")
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected [N, {len(self.features)}] features, got {X.shape}")
        ok = np.isfinite(X).all(axis=1)
        out = np.full((len(X), len(self.zones)), np.nan)
        if ok.any():
            Xok = X if ok.all() else X[ok]
            for j, zone in enumerate(self.zones):
                out[ok, j] = self.predict_zone(zone, Xok)
        return out

    def confidence(self, x) -> float | None:
        """Share of the features of one complete sample x [n_features] inside the training data's
        [min, max] (None for a model exported without training ranges)."""
        if self.ranges is None:
            return None
        lo, hi = self.ranges
        return float(((x >= lo) & (x <= hi)).sum()) / len(lo)


# ---------------------------------------------------------------- features (the pipeline's code)


def load_settings(config: str | None, metadata: dict | None = None):
    """Ingest settings (cumulative/perf/non-features): from --config when given, else from the
    model's metadata (exported since the settings are recorded there), else ./config.yaml."""
    from vmpower.pipeline.merge import MergeSettings

    if not config and metadata and isinstance(metadata.get("ingest"), dict):
        return MergeSettings.from_config({"ingest": metadata["ingest"]})
    candidates = [Path(config)] if config else [Path("config.yaml"), CONFIG]
    for p in candidates:
        if p.is_file():
            try:
                return MergeSettings.from_config(check_file(p))
            except TypeError as exc:
                raise InputError(p, f"not a vmpower config ({' '.join(str(exc).split())[:120]})") from None
    raise InputError(candidates[0], "config not found: pass --config with the config.yaml the models were built with")


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


def frame_features(raw, settings):
    """(features frame, skip reasons) of a RawTable, exactly as ingest computes them."""
    from vmpower.pipeline.merge import vm_feature_frame

    feats, _names, _notes = vm_feature_frame(raw, settings)
    return feats, feats.pop("_drop")


def for_model(settings, model: Model):
    """settings computing exactly the hinge inputs the model needs: a hinge is a formula of one
    raw feature, named in the model's features, whatever hinges --config sets."""
    return for_features(settings, model.features)


def for_features(settings, names):
    import dataclasses

    from vmpower.pipeline import engineer

    return dataclasses.replace(settings, hinges=engineer.hinge_knots(list(names)))


def model_matrix(model: Model, feats, drop, settings, source):
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


def predict_file(model: Model, input_path: str | Path, settings, limits=None):
    """Per-sample watts per zone for a VM features file (JSON array or JSON Lines)."""
    import numpy as np
    import pandas as pd

    from vmpower.pipeline import ingest

    raw = ingest.read_vm_features(input_path, limits)
    settings = for_model(settings, model)
    feats, drop = frame_features(raw, settings)
    X = model_matrix(model, feats, drop, settings, raw.path)
    watts = model.predict(X)
    out = pd.DataFrame({c: raw.df[c] for c in ("timestamp_absolute", "timestamp_iso") if c in raw.df.columns})
    for j, zone in enumerate(model.zones):
        out[f"power_{zone}"] = watts[:, j]
    reason = pd.Series(pd.NA, index=out.index, dtype="string")
    incomplete = ~np.isfinite(X).all(axis=1)
    reason[incomplete] = drop[incomplete].fillna("missing_features")
    out["skip_reason"] = reason
    # The first sample never has rates (rate_warmup, as in training): not worth a warning.
    unexpected = incomplete & drop.ne("rate_warmup").fillna(True).to_numpy(bool)
    if unexpected.any():
        lacking = ~np.isfinite(X[unexpected]).all(axis=0)
        names = [f for f, bad in zip(model.features, lacking) if bad]
        log.warning("%s: %d of %d samples lack feature(s) %s: no watts for them", raw.path, int(unexpected.sum()),
                    len(out), ", ".join(names[:5]))
    return out


# ---------------------------------------------------------------- live features (serve)


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
    ``merge.vm_feature_frame`` compute them (same typing of fields, perf handling, rates, reset
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
        import numpy as np

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
        col = {k: j for j, k in enumerate(names)}
        V = np.array([v0, v1], dtype="float64")
        F = np.array(flags, dtype=bool).reshape(-1, 3)
        cum, feat = F[:, 0], ~F[:, 2]
        perf = F[:, 1] & feat
        # live_frame: a field unavailable now, or a counter without a previous value, is absent;
        # a gauge missing only in the previous record takes the current value.
        isnan = np.isnan(V)
        kill = isnan[1] | (isnan[0] & cum)
        fill = isnan[0] & ~isnan[1] & ~cum
        V[0, fill] = V[1, fill]
        V[:, kill] = nan

        # vm_feature_frame, on these two rows.
        present = set(keys)
        zero_flag = V[:, col["perf_available"]] == 0 if "perf_available" in col else np.zeros(2, bool)
        if perf.any():
            # A perf counter 0 or null in both records was not counted; in a record flagged
            # perf_available=false, its zeros mean "not counted" (page faults and context
            # switches may still come from /proc).
            cols = np.flatnonzero(perf)
            block = V[:, cols]
            V[:, cols[((block == 0) | np.isnan(block)).all(axis=0)]] = nan
            if "perf_available" in present and zero_flag.any():
                rows = V[zero_flag][:, cols]
                V[np.ix_(zero_flag, cols)] = np.where(rows == 0, nan, rows)
        allowed = zero_flag if "perf_available" in present else np.zeros(2, bool)
        isnan = np.isnan(V)
        all_null = isnan.all(axis=0)
        bad = isnan & feat & ~all_null
        bad[:, perf] &= ~allowed[:, None]
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=0))[0])
            raise InputError(LIVE, f"feature {names[j]} has {int(bad[:, j].sum())} NaN/null values "
                                   f"(first at row {int(np.flatnonzero(bad[:, j])[0])})")
        t = V[:, col["timestamp_absolute"]] if "timestamp_absolute" in col else None
        if "timestamp_absolute" in present and t is None:
            raise InputError(LIVE, "timestamp_absolute is not a number")
        if t is None or np.isnan(t).all():
            t = self._naive_times(prev, cur)
        dt = float(t[1] - t[0])
        window = float(V[1, col["time_delta_seconds"]]) if "time_delta_seconds" in col else dt
        if "time_delta_seconds" in present and "time_delta_seconds" not in col:
            raise InputError(LIVE, "time_delta_seconds is not a number")
        rates = feat & cum & ~all_null
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
        for base, k, name in self._hinges:
            if base in out:
                out[name] = float(np.square(np.maximum(out[base] - k, 0.0)))  # NaN stays NaN
        return out, reason

    @staticmethod
    def _naive_times(prev: dict, cur: dict):
        import pandas as pd

        from vmpower.pipeline import ingest

        if "timestamp_iso" not in prev and "timestamp_iso" not in cur:
            raise InputError(LIVE, "samples have neither timestamp_absolute nor timestamp_iso")
        return ingest.naive_seconds(pd.Series([prev.get("timestamp_iso"), cur.get("timestamp_iso")]), LIVE)


# ---------------------------------------------------------------- serve (the exporter is in vmpower.serving.exporter)


def __getattr__(name: str):
    """predict.Exporter / predict.run_exporter keep working (imported lazily: exporter imports predict)."""
    if name in ("Exporter", "run_exporter", "SOURCES", "SAMPLE_ERROR"):
        from vmpower.serving import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cmd_serve(args) -> int:
    import socket

    from vmpower.collect.common import stop_on_signals
    from vmpower.serving.exporter import run_exporter
    from vmpower.serving.fallback import resolve_chain

    from vmpower.serving import reload, vmconfig  # issue 17 hook: config file, model versions

    cfg = vmconfig.apply(args, "serve")
    if args.config:  # a bad config fails first, in one line
        check_file(args.config)
    from vmpower import limits as limits_mod

    limits = limits_mod.load(args.config)
    if not cfg.enabled:  # issue 17 hook
        from vmpower.serving.health import serve_disabled

        return serve_disabled(args, limits)
    if args.model_versions:  # issue 17 hook
        models, make_exporter = reload.start(args, cfg, limits, use_perf=not args.no_perf)
    else:
        models, make_exporter = resolve_chain(args, use_perf=not args.no_perf, limits=limits), reload.static()
    settings = [load_settings(args.config, m.metadata) for m in models]
    if args.no_perf:
        for m, s in zip(models, settings):
            need = perf_inputs(s, m.features)
            if need:
                log.warning("%s needs perf counters (%s) and --no-perf is set: it will serve no zone", m.name,
                            ", ".join(need[:3]))
    stoppers: list = []
    with stop_on_signals(lambda: [s() for s in stoppers]):
        run_exporter(models, settings, port=args.port, address=args.address, interval=args.interval,
                     node_name=args.node_name or socket.gethostname(), use_perf=not args.no_perf,
                     kepler_url=args.kepler_url, stop=stoppers, threshold=args.confidence_threshold,
                     low_confidence=args.low_confidence, idle_source=args.model, powercap_dir=args.powercap_dir,
                     limits=limits, make_exporter=make_exporter)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _model_args(p) -> None:
    p.add_argument("--model", required=True,
                   help="exported model directory or .zip, or a results directory with best.json or model "
                        "archives (then selects)")
    p.add_argument("--node-type", help="with a results directory: the node_type whose best model to use")
    p.add_argument("--machine-spec", metavar="FILE",
                   help="with a results directory: machine_spec.json to match (default: read this machine)")
    p.add_argument("--output-type", default=DEFAULT_OUTPUT_TYPE, help="with a results directory (default: AbsPower)")
    p.add_argument("--feature-group", help="with a results directory (default: the group with the lowest MAE)")
    p.add_argument("--config", help="config.yaml the models were built with, for its ingest settings (default: the "
                        "settings recorded in the model's metadata.json, else ./config.yaml)")


def _chain_args(p) -> None:
    """The fallback chain's options: predict and serve walk the same chain (vmpower.serving.fallback)."""
    p.add_argument("--no-fallback", action="store_true",
                   help="with a results directory: use only the selected model (no fallback to other groups)")
    p.add_argument("--confidence-threshold", type=_fraction, default=DEFAULT_CONFIDENCE_THRESHOLD,
                   help="a model answers for a zone only if this share of its features lies inside its training "
                        "range (default: 0.7, the seed's validation.confidence_threshold)")
    p.add_argument("--low-confidence", choices=("report", "drop"), default="report",
                   help="when only models below the threshold have their features: report the first "
                        "anyway (default) or drop the zone (serve counts both in kepler_vm_low_confidence_total)")


def cmd_predict(args) -> int:
    from vmpower.serving.fallback import cmd_predict as run

    from vmpower.serving import vmconfig  # issue 17 hook: config file, model versions

    vmconfig.apply(args, "predict")
    if args.model_versions:
        vmconfig.pick_version(args)
    return run(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="per-zone watts for a VM features file with an exported ONNX model")
    _model_args(p)
    p.add_argument("--input", required=True, help="vm_features file (JSON array or JSON Lines)")
    p.add_argument("--output", help=".csv or .parquet (default: CSV on stdout)")
    _chain_args(p)
    from vmpower.serving import vmconfig  # issue 17 hook

    vmconfig.add_arguments(p, "predict")
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("serve", help="Prometheus exporter: live VM features in, kepler_node_cpu_watts out")
    _model_args(s)
    s.add_argument("--port", type=int, default=9102, help="HTTP port for /metrics (default: 9102)")
    s.add_argument("--address", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    s.add_argument("--interval", type=_positive, default=1.0, help="feature collection interval (default: 1.0 s)")
    s.add_argument("--node-name", help="node_name label (default: the host name)")
    s.add_argument("--no-perf", action="store_true",
                   help="do not read perf counters (their features are absent; selection skips models needing them)")
    s.add_argument("--kepler-url", default="none",
                   help="Kepler inside the VM for process CPU seconds (default: none)")
    _chain_args(s)
    s.add_argument("--powercap-dir", metavar="DIR",
                   help="keep a RAPL-shaped powercap tree of the modelled energy in DIR (use it as "
                        "/sys/class/powercap for RAPL readers; see docs/deploy.md)")
    vmconfig.add_arguments(s, "serve")  # issue 17 hook
    s.set_defaults(func=cmd_serve)
