"""Use exported models: ``vmpower predict`` (batch) and ``vmpower serve`` (Prometheus exporter).

Only onnxruntime and the archive's ``metadata.json`` are used (feature order, zones), never
pickles. Every load verifies ``manifest.sha256`` and the consistency of metadata and ONNX
graphs first; a tampered or mismatched model is refused with a one-line InputError.

Features are computed from raw VM samples by the pipeline's own code (``ingest`` +
``merge.vm_feature_frame`` with the config's ingest settings), so inference sees exactly what
training saw. Model selection and the machine distance are documented in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmpower.errors import InputError

log = logging.getLogger("vmpower.predict")

MANIFEST = "manifest.sha256"  # same name as vmpower.export (not imported: it pulls in pandas)
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
DEFAULT_OUTPUT_TYPE = "AbsPower"


# ---------------------------------------------------------------- loading and integrity


def read_artifact(path: str | Path) -> dict[str, bytes]:
    """All files of an exported model (directory or .zip), by relative name, read once."""
    import zipfile

    path = Path(path)
    if path.is_dir():
        # Snakemake marks directory outputs with an empty .snakemake_timestamp: not a model file.
        return {
            p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"
        }
    if not path.exists():
        raise InputError(path, "model not found")
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a model directory or .zip archive")
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


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
    extra = sorted(set(files) - set(listed) - {MANIFEST})
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

    @property
    def name(self) -> str:
        return str(self.metadata.get("model_name", self.source.name))

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        path = Path(path)
        files = read_artifact(path)
        version = verify_manifest(path, files)
        try:
            meta = json.loads(files["metadata.json"])
        except KeyError:
            raise InputError(path, "no metadata.json") from None
        except ValueError as exc:
            raise InputError(path, f"metadata.json is not valid JSON ({exc})") from None
        if meta.get("status", "trained") != "trained":
            raise InputError(path, f"model was not trained (status {meta.get('status')}: {meta.get('reason')})")
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
        return cls(path, meta, list(features), list(zones), version, sessions, input_name, outputs)

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


# ---------------------------------------------------------------- features (the pipeline's code)


def load_settings(config: str | None, metadata: dict | None = None):
    """Ingest settings (cumulative/perf/non-features): from --config when given, else from the
    model's metadata (exported since the settings are recorded there), else ./config.yaml."""
    import yaml

    from vmpower.merge import MergeSettings

    if not config and metadata and isinstance(metadata.get("ingest"), dict):
        return MergeSettings.from_config({"ingest": metadata["ingest"]})
    candidates = [Path(config)] if config else [Path("config.yaml"), Path(__file__).resolve().parents[2] / "config.yaml"]
    for p in candidates:
        if p.is_file():
            try:
                return MergeSettings.from_config(yaml.safe_load(p.read_text()) or {})
            except (yaml.YAMLError, TypeError) as exc:
                raise InputError(p, f"not a vmpower config ({' '.join(str(exc).split())[:120]})") from None
    raise InputError(candidates[0], "config not found: pass --config with the config.yaml the models were built with")


def rate_features(settings, names) -> set[str]:
    """Features that are rates of cumulative counters (invalid across a counter reset)."""
    return {n for n in names if n.endswith("_rate") and any(fnmatch.fnmatchcase(n[:-5], p) for p in settings.cumulative_features)}


def frame_features(raw, settings):
    """(features frame, skip reasons) of a RawTable, exactly as ingest computes them."""
    from vmpower.merge import vm_feature_frame

    feats, _names, _notes = vm_feature_frame(raw, settings)
    return feats, feats.pop("_drop")


def for_model(settings, model: Model):
    """settings computing exactly the hinge inputs the model needs: a hinge is a formula of one
    raw feature, named in the model's features, whatever hinges --config sets."""
    import dataclasses

    from vmpower import engineer

    return dataclasses.replace(settings, hinges=engineer.hinge_knots(model.features))


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


def predict_file(model: Model, input_path: str | Path, settings):
    """Per-sample watts per zone for a VM features file (JSON array or JSON Lines)."""
    import numpy as np
    import pandas as pd

    from vmpower import ingest

    raw = ingest.read_vm_features(input_path)
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


# ---------------------------------------------------------------- model selection

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


def read_metadata(path: Path) -> dict:
    """metadata.json of a model dir or zip, unverified (selection only; the chosen one is verified)."""
    import zipfile

    try:
        if path.is_dir():
            return json.loads((path / "metadata.json").read_text())
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read metadata.json ({exc})") from None


@dataclass
class Selection:
    path: Path
    node_type: str
    output_type: str
    feature_group: str
    exact: bool
    distance: float | None = None


def _model_path(results: Path, output_type: str, group: str, entry: dict) -> Path:
    base = results / "models" / output_type / group / entry["model_name"]
    for p in (base, base.with_name(base.name + ".zip"), Path(entry.get("archive", "")), results.parent / entry.get("archive", "")):
        if p.name and p.exists():
            return p
    raise InputError(results / "best.json", f"model {entry['model_name']} not found under {results / 'models'}")


def select_model(results: str | Path, *, node_type: str | None = None, machine_spec: dict | None = None,
                 output_type: str = DEFAULT_OUTPUT_TYPE, feature_group: str | None = None) -> Selection:
    """The best model for a node_type, or for the node_type whose hardware matches machine_spec.

    Match: same processor model string (inside a VM cores/memory describe the VM, not the host);
    several matches or none: the smallest spec_distance, and no match logs a warning."""
    results = Path(results)
    best_path = results / "best.json"
    try:
        best = json.loads(best_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(best_path, f"cannot read best models ({exc})") from None

    def pick_group(nt: str) -> tuple[str, dict]:
        groups = best[nt].get(output_type) or {}
        if not groups:
            raise InputError(best_path, f"node_type {nt} has no {output_type} model (has {', '.join(best[nt])})")
        if feature_group:
            if feature_group not in groups:
                raise InputError(best_path, f"node_type {nt} has no {output_type}/{feature_group} model (groups: {', '.join(sorted(groups))})")
            return feature_group, groups[feature_group]
        g = min(groups, key=lambda k: (groups[k]["mae_mean"], k))  # lowest held-out MAE
        return g, groups[g]

    if node_type is not None:
        if node_type not in best:
            raise InputError(best_path, f"no model for node_type {node_type} (known: {', '.join(sorted(best)) or 'none'})")
        g, entry = pick_group(node_type)
        return Selection(_model_path(results, output_type, g, entry), node_type, output_type, g, True, 0.0)
    if not best:
        raise InputError(best_path, "no models")
    if machine_spec is None:
        from vmpower.collect.orchestrate import machine_spec as local_spec

        machine_spec = local_spec()
    scored = []
    for nt in sorted(best):
        g, entry = pick_group(nt)
        path = _model_path(results, output_type, g, entry)
        spec = read_metadata(path).get("machine_spec") or {}
        same = bool(spec) and _norm_processor(spec.get("processor")) == _norm_processor(machine_spec.get("processor"))
        scored.append((not same, spec_distance(machine_spec, spec), nt, g, path))
    miss, dist, nt, g, path = min(scored)
    if miss:
        log.warning("no node_type has processor %r: using the nearest, %s (spec distance %.2f)",
                    machine_spec.get("processor"), nt, dist)
    return Selection(path, nt, output_type, g, not miss, dist)


def resolve_model(args) -> Model:
    """--model DIR|ZIP, or a results dir (with best.json) plus --node-type / --machine-spec."""
    path = Path(args.model)
    if path.is_dir() and (path / "best.json").exists():
        spec = None
        if args.machine_spec:
            try:
                spec = json.loads(Path(args.machine_spec).read_text())
            except (OSError, ValueError) as exc:
                raise InputError(args.machine_spec, f"cannot read machine spec ({exc})") from None
            if not isinstance(spec, dict):
                raise InputError(args.machine_spec, "machine spec must be a JSON object")
        sel = select_model(path, node_type=args.node_type, machine_spec=spec, output_type=args.output_type,
                           feature_group=args.feature_group)
        log.info("selected %s (node_type %s, %s/%s%s)", sel.path, sel.node_type, sel.output_type, sel.feature_group,
                 "" if sel.exact else f", nearest spec, distance {sel.distance:.2f}")
        path = sel.path
    elif args.node_type or args.machine_spec:
        raise InputError(path, "--node-type/--machine-spec select from a results directory with best.json")
    t0 = time.perf_counter()
    model = Model.load(path)
    log.info("loaded %s (version %s, %d features, zones %s) in %.3f s", model.name, model.version,
             len(model.features), ",".join(model.zones), time.perf_counter() - t0)
    return model


# ---------------------------------------------------------------- predict CLI


def cmd_predict(args) -> int:
    import sys

    from vmpower.io import atomic_path, write_parquet

    model = resolve_model(args)
    settings = load_settings(args.config, model.metadata)
    out = predict_file(model, args.input, settings)
    if not args.output:
        try:
            out.to_csv(sys.stdout, index=False, float_format="%.6f")
        except BrokenPipeError:  # e.g. piped into head
            pass
        return 0
    target = Path(args.output)
    if target.suffix == ".parquet":
        write_parquet(out, target)
    elif target.suffix == ".csv":
        with atomic_path(target) as tmp:
            out.to_csv(tmp, index=False, float_format="%.6f")
    else:
        raise InputError(target, "output must end in .csv or .parquet")
    done = int(out[f"power_{model.zones[0]}"].notna().sum())
    print(f"{model.name}: {done}/{len(out)} samples, zones {','.join(model.zones)} -> {target}")
    return 0


# ---------------------------------------------------------------- serve


def live_frame(prev: dict, cur: dict, settings):
    """A RawTable of two consecutive live collector records, built like ingest.read_vm_features
    builds a file's, so ``vm_feature_frame`` gives the current sample's features."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from vmpower import ingest

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
    return ingest.RawTable(Path("<live>"), df)


class Exporter:
    """Prometheus metrics of one model, updated from consecutive live collector records."""

    def __init__(self, model: Model, settings, node_name: str, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.model, self.settings, self.node_name = model, for_model(settings, model), node_name
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.watts = Gauge("kepler_node_cpu_watts", "Estimated CPU power of this VM's node by zone (W)",
                           ["node_name", "zone"], registry=r)
        self.inference = Gauge("kepler_vm_model_inference_duration_seconds", "Last inference time per zone",
                               ["zone"], registry=r)
        self.version = Gauge("kepler_vm_model_version", "Loaded model version (manifest sha256 prefix) per zone",
                             ["zone", "version", "model_name"], registry=r)
        self.errors = Counter("kepler_vm_feature_collection_errors", "Ticks on which a model feature was unavailable",
                              ["feature"], registry=r)
        self.collection = Gauge("kepler_vm_feature_collection_duration_seconds",
                                "Time to collect and compute the last feature sample", registry=r)
        self.mae = Gauge("kepler_vm_model_accuracy_mae", "Held-out MAE of the model per zone (W)", ["zone"], registry=r)
        for zone in model.zones:
            self.version.labels(zone, model.version, model.name).set(1)
            mae = model.metadata.get(f"{zone}_mae")
            if mae is not None:
                self.mae.labels(zone).set(float(mae))
        for f in model.features:
            self.errors.labels(f)  # exported as 0 from the start
        self.rates = rate_features(settings, model.features)
        self._prev: dict | None = None
        self.reported: set[str] = set()

    def clear(self) -> None:
        """Remove every zone's watts (nothing trustworthy to report)."""
        for zone in list(self.reported):
            self.watts.remove(self.node_name, zone)
        self.reported.clear()

    def update(self, record: dict, collect_seconds: float = 0.0) -> dict[str, float]:
        """Feed one collector record; returns the watts reported per zone (absent zones omitted)."""
        import numpy as np

        t0 = time.perf_counter()
        prev, self._prev = self._prev, record
        if prev is None:
            return {}  # rates need two samples
        feats, drop = frame_features(live_frame(prev, record, self.settings), self.settings)
        row = feats.iloc[-1]
        values = np.array([row.get(f, np.nan) for f in self.model.features], dtype="float64")
        if self.rates and str(drop.iloc[-1]) == "counter_reset":
            values[[f in self.rates for f in self.model.features]] = np.nan
        missing = [f for f, v in zip(self.model.features, values) if not math.isfinite(v)]
        for f in missing:
            self.errors.labels(f).inc()
        self.collection.set(collect_seconds + time.perf_counter() - t0)
        out = {}
        X = values.reshape(1, -1)
        for zone in self.model.zones:
            if missing:  # every zone model here reads all the model's features
                if zone in self.reported:
                    self.watts.remove(self.node_name, zone)
                    self.reported.discard(zone)
                continue
            t1 = time.perf_counter()
            w = float(self.model.predict_zone(zone, X)[0])
            self.inference.labels(zone).set(time.perf_counter() - t1)
            self.watts.labels(self.node_name, zone).set(w)
            self.reported.add(zone)
            out[zone] = w
        if missing:
            log.debug("features unavailable: %s (zones not reported)", ", ".join(missing))
        return out


def run_exporter(model: Model, settings, *, port: int, address: str, interval: float, node_name: str,
                 use_perf: bool, kepler_url: str | None, stop=None) -> None:
    """Collect live features every ``interval`` s with the guest collector and serve /metrics."""
    import os

    from prometheus_client import disable_created_metrics, start_http_server

    from vmpower.collect.common import Schedule
    from vmpower.collect.features import FeatureCollector, take_snapshot

    disable_created_metrics()  # *_created series only add noise to every scrape
    exporter = Exporter(model, settings, node_name)
    collector = FeatureCollector(os.devnull, interval=interval, duration=None, workloads="none",
                                 kepler_url=kepler_url, use_perf=use_perf)
    collector._start_perf()
    try:
        server, thread = start_http_server(port, addr=address, registry=exporter.registry)
    except OSError as exc:
        raise InputError(f"{address}:{port}", f"cannot listen ({exc.strerror or exc})") from None
    log.info("serving %s on http://%s:%d/metrics (interval %.3g s)", model.name, address, port, interval)
    schedule = Schedule(interval, None)
    if stop is not None:
        stop.append(schedule.stop)
    prev = t_start = None
    try:
        for _tick in schedule.ticks():
            t0 = time.perf_counter()
            cur = take_snapshot()
            if prev is None:
                prev, t_start = cur, cur.mono
                continue
            record = collector._sample(prev, cur, t_start)
            prev = cur
            try:
                exporter.update(record, time.perf_counter() - t0)
            except (InputError, ValueError) as exc:  # one bad sample must not stop the exporter
                log.warning("sample skipped: %s", exc)
                exporter.clear()
    finally:
        if collector.perf is not None:
            collector.perf.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def cmd_serve(args) -> int:
    import socket

    from vmpower.collect.common import stop_on_signals

    model = resolve_model(args)
    settings = load_settings(args.config, model.metadata)
    stoppers: list = []
    with stop_on_signals(lambda: [s() for s in stoppers]):
        run_exporter(model, settings, port=args.port, address=args.address, interval=args.interval,
                     node_name=args.node_name or socket.gethostname(), use_perf=not args.no_perf,
                     kepler_url=args.kepler_url, stop=stoppers)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _model_args(p) -> None:
    p.add_argument("--model", required=True,
                   help="exported model directory or .zip, or a results directory with best.json (then selects)")
    p.add_argument("--node-type", help="with a results directory: the node_type whose best model to use")
    p.add_argument("--machine-spec", metavar="FILE",
                   help="with a results directory: machine_spec.json to match (default: read this machine)")
    p.add_argument("--output-type", default=DEFAULT_OUTPUT_TYPE, help="with a results directory (default: AbsPower)")
    p.add_argument("--feature-group", help="with a results directory (default: the group with the lowest MAE)")
    p.add_argument("--config", help="config.yaml the models were built with, for its ingest settings (default: the "
                        "settings recorded in the model's metadata.json, else ./config.yaml)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="per-zone watts for a VM features file with an exported ONNX model")
    _model_args(p)
    p.add_argument("--input", required=True, help="vm_features file (JSON array or JSON Lines)")
    p.add_argument("--output", help=".csv or .parquet (default: CSV on stdout)")
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("serve", help="Prometheus exporter: live VM features in, kepler_node_cpu_watts out")
    _model_args(s)
    s.add_argument("--port", type=int, default=9102, help="HTTP port for /metrics (default: 9102)")
    s.add_argument("--address", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    s.add_argument("--interval", type=_positive, default=1.0, help="feature collection interval (default: 1.0 s)")
    s.add_argument("--node-name", help="node_name label (default: the host name)")
    s.add_argument("--no-perf", action="store_true", help="do not read perf counters (their features are absent)")
    s.add_argument("--kepler-url", default="none",
                   help="Kepler inside the VM for process CPU seconds (default: none)")
    s.set_defaults(func=cmd_serve)
