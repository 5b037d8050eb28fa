"""``vmpower serve``'s Prometheus exporter: the model chain's watts per zone from live collector
records (``Exporter``), and the serve loop (``run_exporter``): the collect layer's ``Sampler``
every interval, one metrics rendering per tick, optionally a RAPL-shaped powercap tree."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from vmpower.errors import InputError
from vmpower.serving.artifact import Model
from vmpower.serving.energy import NodeEnergy
from vmpower.serving.fallback import DEFAULT_CONFIDENCE_THRESHOLD
from vmpower.serving.live import LiveFeatures, for_features, rate_features
from vmpower.serving.pinning_live import PinningMonitor

log = logging.getLogger("vmpower.serving.predict")

SOURCES = ("proc", "perf", "kepler", "features")  # kepler_vm_feature_collection_duration_seconds{feature}
SAMPLE_ERROR = "_sample"  # kepler_vm_feature_collection_errors_total{feature} of a failed tick


class Exporter:
    """Prometheus metrics of a model chain, updated from consecutive live collector records.

    Per tick and zone, the first model of the chain that has the zone, all of its features and
    a confidence >= ``threshold`` serves it. If only models below the threshold have their
    features, ``low_confidence`` decides: "report" (serve the first of them, the seed's
    fallback_method "estimation") or "drop" (the zone is absent, the seed's "disable"); either
    way kepler_vm_low_confidence_total rises. No model at all: the zone is absent."""

    def __init__(self, models, settings, node_name: str, *, threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                 low_confidence: str = "report", registry=None, idle: dict[str, float] | None = None,
                 max_fields: int | None = None, pinning: dict | None = None):
        from prometheus_client import CollectorRegistry

        models = [models] if isinstance(models, Model) else list(models)
        settings = list(settings) if isinstance(settings, (list, tuple)) else [settings] * len(models)
        if low_confidence not in ("report", "drop"):
            raise ValueError(f"low_confidence must be report or drop, not {low_confidence!r}")
        self.models, self.node_name = models, node_name
        self.max_fields = max_fields  # a live record wider than this is a failed tick (limits.max_columns)
        self.threshold, self.low_confidence = float(threshold), low_confidence
        self._features(settings)
        self.zones = list(dict.fromkeys(z for m in models for z in m.zones))
        self.chain = {z: [i for i, m in enumerate(models) if z in m.zones] for z in self.zones}
        self.features = list(dict.fromkeys(f for m in models for f in m.features))

        self.registry = registry or CollectorRegistry()
        # kepler_node_cpu_* (Kepler >= 0.10's node family: watts, joules, active/idle, usage ratio)
        self.energy = NodeEnergy(self.zones, node_name, idle, registry=self.registry)
        # A DynPower model predicts the power above idle: its total adds the zone's idle power.
        self.base = [self.energy.idle if m.metadata.get("output_type") == "DynPower" else {} for m in models]
        self._define_metrics(self.registry)
        self._first_series()
        # kepler_vm_cpu_pinning_* (EP-003 FR5); pinning: the cpu_pinning settings (enabled, isolated_cpus)
        self.pinning = PinningMonitor(self.registry, **(pinning or {}))
        self._prev: dict | None = None

    def _features(self, settings) -> None:
        """One feature computation per distinct ingest settings (normally one for the whole
        chain), computing the hinge inputs of all its models."""
        import numpy as np

        bases: list = []
        self.group: list[int] = []
        for s in settings:
            base = for_features(s, [])
            if base not in bases:
                bases.append(base)
            self.group.append(bases.index(base))
        models = self.models
        self.live = [LiveFeatures(for_features(b, [f for m, g in zip(models, self.group) if g == i for f in m.features]))
                     for i, b in enumerate(bases)]
        self.rate_mask = [np.array([f in rate_features(s, m.features) for f in m.features], bool)
                          for m, s in zip(models, settings)]

    def _define_metrics(self, r) -> None:
        from prometheus_client import Counter, Gauge

        self.inference = Gauge("kepler_vm_model_inference_duration_seconds",
                               "Time of the last inference of the model serving the zone", ["zone"], registry=r)
        self.confidence = Gauge("kepler_vm_model_confidence_score",
                                "Share of the serving model's features inside the range of its training data",
                                ["zone"], registry=r)
        self.version = Gauge("kepler_vm_model_version",
                             "1 for the model that served the zone on the last tick, 0 for the zone's other models "
                             "(version: manifest sha256 prefix)", ["zone", "version", "model_name", "feature_group"], registry=r)
        self.errors = Counter("kepler_vm_feature_collection_errors",
                              "Ticks on which a model feature was unavailable (_sample: the whole tick failed)",
                              ["feature"], registry=r)
        self.collection = Gauge("kepler_vm_feature_collection_duration_seconds",
                                "Time spent on the last sample per source (proc, perf, kepler, features)",
                                ["feature"], registry=r)
        self.mae = Gauge("kepler_vm_model_accuracy_mae", "Held-out MAE of the model serving the zone (W)", ["zone"],
                         registry=r)
        self.points = Gauge("kepler_vm_training_data_points",
                            "Training rows of the model serving the zone", ["zone"], registry=r)
        self.trained = Gauge("kepler_vm_last_training_timestamp",
                             "Time of the newest training sample of the model serving the zone (s since 1970)",
                             ["zone"], registry=r)
        self.inference_errors = Counter("kepler_vm_inference_errors", "Failed inferences (the next model is tried)",
                                        ["zone", "model_name", "feature_group"], registry=r)
        self.low = Counter("kepler_vm_low_confidence", "Ticks on which no model with its features had a confidence "
                           "at or above the threshold", ["zone"], registry=r)
        self.unavailable = Counter("kepler_vm_zone_unavailable", "Ticks on which the zone was not reported",
                                   ["zone"], registry=r)

    def _first_series(self) -> None:
        """The series exported from the start (counters at 0, every model's version at 0)."""
        models = self.models
        for f in [*self.features, SAMPLE_ERROR]:
            self.errors.labels(f)  # exported as 0 from the start
        for zone in self.zones:
            for c in (self.low, self.unavailable):
                c.labels(zone)
            for i in self.chain[zone]:
                self.version.labels(zone, models[i].version, *models[i].labels).set(0)
                self.inference_errors.labels(zone, *models[i].labels)
        self.served: dict[str, int] = {}  # zone -> index of the model that served it last tick
        self._conf_shown: set[str] = set()  # zones with a confidence series
        self._info: dict[str, int] = {}  # zone -> model whose MAE/training info is exported
        for zone in self.zones:
            self._set_info(zone, self.chain[zone][0])

    def _set_info(self, zone: str, i: int) -> None:
        if self._info.get(zone) == i:
            return
        self._info[zone] = i
        m = self.models[i]
        for gauge, value in ((self.mae, m.metadata.get(f"{zone}_mae")), (self.points, m.training_rows),
                             (self.trained, m.last_training_time)):
            if value is None:
                _remove(gauge, zone)
            else:
                gauge.labels(zone).set(float(value))

    def _absent(self, zone: str) -> None:
        """No trustworthy watts for the zone: remove its per-tick series, count it."""
        i = self.served.pop(zone, None)
        if i is not None:
            self.version.labels(zone, self.models[i].version, *self.models[i].labels).set(0)
            _remove(self.inference, zone)
        self.unavailable.labels(zone).inc()

    def _serve(self, zone: str, i: int, watts: float, seconds: float) -> None:
        old = self.served.get(zone)
        if old != i:
            if old is not None:
                self.version.labels(zone, self.models[old].version, *self.models[old].labels).set(0)
            self.version.labels(zone, self.models[i].version, *self.models[i].labels).set(1)
            self.served[zone] = i
            self._set_info(zone, i)
        self.inference.labels(zone).set(seconds)

    def _show_confidence(self, zone: str, value: float | None) -> None:
        if value is not None:
            self.confidence.labels(zone).set(value)
            self._conf_shown.add(zone)
        elif zone in self._conf_shown:
            self._conf_shown.discard(zone)
            self.confidence.remove(zone)

    def fail(self, exc: BaseException | None = None) -> None:
        """A tick without a sample (collection or feature computation failed): count it and
        publish no watts; rates restart from the next record."""
        self.errors.labels(SAMPLE_ERROR).inc()
        self._prev = None
        self.energy.tick({}, None)
        for zone in self.zones:
            self._absent(zone)
            self._show_confidence(zone, None)

    def update(self, record: dict, durations: dict | None = None) -> dict[str, float]:
        """Feed one collector record; returns the watts reported per zone (absent zones omitted).
        ``durations``: seconds per collection source, exported with the feature computation's."""
        t0 = time.perf_counter()
        for src, seconds in (durations or {}).items():
            self.collection.labels(src).set(seconds)
        if self.max_fields is not None and len(record) > self.max_fields:
            log.warning("sample skipped: %d fields, more than limits.max_columns (%d)", len(record), self.max_fields)
            self.fail()
            return {}
        prev, self._prev = self._prev, record
        self.pinning.update(record)
        if prev is None:
            self.energy.tick({}, None, _usage_ratio(record))
            return {}  # rates need two samples
        try:
            computed = [lf.compute(prev, record) for lf in self.live]
        except (InputError, ValueError) as exc:  # one bad record must not stop the exporter
            log.warning("sample skipped: %s", exc)
            self.fail(exc)
            self._prev = record  # the record itself may pair with the next one
            return {}
        xs, ok = self._inputs(computed)
        self.collection.labels("features").set(time.perf_counter() - t0)
        conf = [m.confidence(x[0]) if good else None for m, x, good in zip(self.models, xs, ok)]
        out = {}
        for zone in self.zones:
            w = self._zone(zone, xs, ok, conf)
            if w is not None:
                out[zone] = w
        self.energy.tick(out, _window(prev, record), _usage_ratio(record))
        return out

    def _inputs(self, computed):
        """(input row [1, n] per model, whether it is complete), counting unavailable features."""
        import numpy as np

        xs, ok, missing = [], [], set()
        for m, g, mask in zip(self.models, self.group, self.rate_mask):
            feats, reason = computed[g]
            x = np.array([feats.get(f, math.nan) for f in m.features], dtype="float64")
            if reason == "counter_reset" and mask.any():
                x[mask] = math.nan
            good = np.isfinite(x)
            if not good.all():
                missing.update(f for f, g_ in zip(m.features, good) if not g_)
            xs.append(x.reshape(1, -1))
            ok.append(bool(good.all()))
        for f in missing:
            self.errors.labels(f).inc()
        if missing:
            log.debug("features unavailable: %s", ", ".join(sorted(missing)))
        return xs, ok

    def _zone(self, zone: str, xs, ok, conf) -> float | None:
        """The zone's watts from the first model of its chain that answers (None: absent)."""
        have = [i for i in self.chain[zone] if ok[i]]
        passing = [i for i in have if conf[i] is None or conf[i] >= self.threshold]
        low = [i for i in have if i not in passing]
        order = passing + (low if self.low_confidence == "report" else [])
        served = watts = None
        for i in order:
            t1 = time.perf_counter()
            try:
                w = float(self.models[i].predict_zone(zone, xs[i])[0])
            except Exception as exc:  # onnxruntime's own types: try the next model
                self.inference_errors.labels(zone, *self.models[i].labels).inc()
                log.warning("%s: inference of zone %s failed: %s", self.models[i].name, zone, exc)
                continue
            if not math.isfinite(w):
                self.inference_errors.labels(zone, *self.models[i].labels).inc()
                continue
            watts = max(0.0, w + self.base[i].get(zone, 0.0))  # total power; below 0 is not power
            served = i
            self._serve(zone, i, watts, time.perf_counter() - t1)
            break
        if low and (served is None or served in low):
            self.low.labels(zone).inc()
        shown = served if served is not None else (low[0] if low else None)
        self._show_confidence(zone, conf[shown] if shown is not None else None)
        if served is None:
            self._absent(zone)
        return watts


def _window(prev: dict, record: dict) -> float | None:
    """Seconds the record's watts stand for: its window on the collector's monotonic clock."""
    dt = record.get("time_delta_seconds")
    if isinstance(dt, (int, float)) and not isinstance(dt, bool):
        return float(dt)
    a, b = prev.get("timestamp"), record.get("timestamp")
    return float(b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _usage_ratio(record: dict) -> float | None:
    """Kepler's node CPU usage ratio: the collector's cpu_utilization (non-idle, non-iowait share
    of /proc/stat time, in %) / 100."""
    u = record.get("cpu_utilization")
    return u / 100.0 if isinstance(u, (int, float)) and not isinstance(u, bool) else None


def _remove(metric, *labels) -> None:
    """Remove a labelled series if it is exported (prometheus_client raises KeyError otherwise)."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass


@dataclass(frozen=True)
class ServeOptions:
    """``vmpower serve``'s settings: where to listen, how often to sample, how to choose.
    ``idle_source``: the --model path, searched for the node_type's idle power (find_idle);
    ``powercap_dir``: keep a RAPL-shaped tree of the modelled energy there (vmpower.serving.powercap)."""

    port: int
    address: str
    interval: float
    node_name: str
    use_perf: bool
    kepler_url: str | None
    threshold: float
    low_confidence: str
    idle_source: object
    powercap_dir: object
    pinning: dict | None = None  # cpu_pinning settings: enabled, isolated_cpus (serving/pinning_live.py)


def _exporter(models, settings, options: ServeOptions, limits, make_exporter=None) -> Exporter:
    from vmpower.serving.energy import find_idle

    idle, where = find_idle(models, options.idle_source)
    if idle is None:
        log.warning("no idle power for the node_type (%s): kepler_node_cpu_active_*/idle_* are not published", where)
    else:
        log.info("idle power per zone from %s: %s", where, ", ".join(f"{z} {w:.3g} W" for z, w in idle.items()))
    return (make_exporter or Exporter)(models, settings, options.node_name, threshold=options.threshold,
                                       low_confidence=options.low_confidence, idle=idle,
                                       max_fields=limits.max_columns, pinning=options.pinning)


def _one_tick(exporter: Exporter, sampler, last_error: str | None) -> tuple[bool, str | None]:
    """One sample into the exporter: (whether the tick counts, the error message of this tick).
    The first snapshot only starts the first window; a failed tick publishes no watts."""
    try:
        record = sampler.next()
        if record is None:
            return False, last_error
        exporter.update(record, sampler.durations)
        return True, None
    except Exception as exc:  # the exporter outlives any one bad tick (psutil, /proc, perf ...)
        exporter.fail(exc)
        msg = f"{type(exc).__name__}: {exc}"
        (log.debug if msg == last_error else log.warning)("tick failed, no watts published: %s", msg)
        return True, msg


def _serve_ticks(exporter: Exporter, sampler, schedule, ticks: list, tree, powercap_dir) -> None:
    last_error = None
    for _tick in schedule.ticks():
        counted, last_error = _one_tick(exporter, sampler, last_error)
        if not counted:
            continue
        ticks[0] += 1
        if tree is not None:
            try:
                tree.write(exporter.energy.snapshot_joules())
            except OSError as exc:  # e.g. a full disk: the metrics go on
                log.warning("cannot update the powercap tree %s: %s", powercap_dir, exc)


def run_exporter(models, settings, options: ServeOptions, *, stop=None, limits=None, make_exporter=None) -> None:
    """Collect live features every ``options.interval`` s with the collect layer's Sampler and
    serve /metrics until a function appended to ``stop`` is called. ``limits``:
    vmpower.limits.Limits (HTTP server, Kepler answers, record width)."""
    from prometheus_client import disable_created_metrics

    from vmpower import limits as limits_mod
    from vmpower.collect.common import Schedule
    from vmpower.collect.sampler import Sampler
    from vmpower.serving import footprint, metrics_http
    from vmpower.serving.powercap import PowercapTree

    disable_created_metrics()  # *_created series only add noise to every scrape
    limits = limits or limits_mod.defaults()
    exporter = _exporter(models, settings, options, limits, make_exporter)
    tree = PowercapTree(options.powercap_dir, exporter.zones) if options.powercap_dir else None
    sampler = Sampler(options.interval, use_perf=options.use_perf, kepler_url=options.kepler_url,
                      max_http_bytes=limits.max_http_response_bytes)
    sampler.start()
    try:
        # Every change of the metrics happens in a tick: one rendering per tick serves all scrapes.
        ticks = [0]
        server, thread = metrics_http.start(exporter.registry, options.address, options.port, limits,
                                            version=lambda: ticks[0])
    except OSError as exc:
        sampler.stop()
        raise InputError(f"{options.address}:{options.port}", f"cannot listen ({exc.strerror or exc})") from None
    log.info("serving %s on http://%s:%d/metrics (interval %.3g s)", ", ".join(m.name for m in exporter.models),
             options.address, options.port, options.interval)
    log.debug("third-party packages loaded: %s", " ".join(footprint.loaded_packages()))
    schedule = Schedule(options.interval, None)
    if stop is not None:
        stop.append(schedule.stop)
    try:
        _serve_ticks(exporter, sampler, schedule, ticks, tree, options.powercap_dir)
    finally:
        sampler.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
