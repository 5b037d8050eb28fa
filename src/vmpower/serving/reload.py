"""Live model updates with rollback for ``vmpower serve --model-versions`` (issue 17).

``Switch`` stands where serve's ``Exporter`` stands (run_exporter's ``make_exporter``): it
holds one Exporter per loaded version and forwards each tick to the active one. Every tick (the
collection interval) it rescans the store (vmpower.serving.versions), and on SIGHUP it also
retries versions that failed before. A new version is checked before it serves (``check``):
its manifest and signature (Model.load), its features available here (a dry tick on the last
two live records must give every zone the active version gives), finite outputs not far below
0 on probe samples at the training data's min, middle and max. A version failing the checks,
or failing at run time (``rollback_after_ticks`` consecutive ticks with an inference error or no
zone at or above the confidence threshold), is rolled back from: the previous version serves
again, the event is logged and counted in ``kepler_vm_model_rollbacks_total``.

No gap: the switch happens between two ticks, and the new Exporter has already seen the last
record, so the next tick has rates. Counters continue across versions: the scrape shows each
counter series as the sum over the versions that counted it (its value when its version was
switched away from, plus what the active version counted since it became active).
"""

from __future__ import annotations

import logging
import signal
import threading

from vmpower.errors import InputError
from vmpower.serving import health
from vmpower.serving import versions as vs

log = logging.getLogger("vmpower.serving.reload")
VERSION_FAMILY = "kepler_vm_model_version"


def _counters(registry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() if m.type == "counter" for s in m.samples if s.name.endswith("_total")}


def _sum(metric) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def probe_problem(model, zones) -> str | None:
    """Outputs on the training data's per-feature min, middle and max: finite and not more than
    3 held-out MAEs (at least 1 W) below 0. None when the model passes."""
    import numpy as np

    if model.ranges is None:
        return None
    lo, hi = model.ranges
    X = np.vstack([lo, (lo + hi) / 2.0, hi])
    for zone in zones:
        try:
            w = model.predict_zone(zone, X)
        except Exception as exc:  # onnxruntime's own types
            return f"{model.name} {zone}: inference fails on a probe sample ({type(exc).__name__})"
        floor = -3.0 * max(1.0 / 3.0, float(model.metadata.get(f"{zone}_mae") or 0.0))
        if not np.isfinite(w).all():
            return f"{model.name} {zone}: non-finite output on a probe sample inside the training range"
        if (w < floor).any():
            return f"{model.name} {zone}: output {float(w.min()):.3g} W on a probe sample (below {floor:.3g} W)"
    return None


class Switch:
    """An Exporter-shaped front of the versions' Exporters (see the module's doc)."""

    def __init__(self, models, settings, node_name: str, *, store, exporter_cls, **kw):
        from prometheus_client import CollectorRegistry, Counter

        self.store, self.node_name, self.kw, self.exporter_cls = store, node_name, kw, exporter_cls
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.own = CollectorRegistry()
        self.rollbacks = Counter("kepler_vm_model_rollbacks", "Model versions refused or rolled back from "
                                 "(reason: check = failed the checks before serving, runtime = failed while serving)",
                                 ["version", "reason"], registry=self.own)
        health.gauges(self.own, enabled=True)
        self.registry.register(self)
        self.base: dict = {}  # counter series -> total counted by exporters while they were active
        self.start: dict = {}  # counter series -> the active exporter's value when it became active
        self.records: list = []  # the last two live records (dry ticks of new versions)
        self.bad_ticks = 0
        self.failed: dict[str, tuple] = {}  # version -> stamp it failed with
        self.sighup = False
        self.active_stamp = None
        self.stuck = False  # logged that a failing version has nothing to roll back to
        first = exporter_cls(models, settings, node_name, **kw)
        self.loaded = [(store.active if store else None, first)]  # active last; at most 2 kept
        self._activate(store.active if store else None, first)
        self.stamps = {v.name: v.stamp for v in vs.scan(store.root)} if store else {}

    # ------------------------------------------------------------ Exporter's interface
    @property
    def current(self):
        return self.loaded[-1][1]

    @property
    def active(self) -> str | None:
        return self.loaded[-1][0]

    @property
    def zones(self):
        return self.current.zones

    @property
    def models(self):
        return self.current.models

    @property
    def energy(self):
        return self

    def snapshot_joules(self) -> dict[str, float]:
        """Joules per zone as scraped (carried across versions): for the powercap tree."""
        name = "kepler_node_cpu_joules_total"
        with self.lock:
            raw = self.current.energy.snapshot_joules()
            carry = {}
            for table, sign in ((self.base, 1.0), (self.start, -1.0)):
                for k, v in table.items():
                    if k[0] == name:
                        z = dict(k[1]).get("zone")
                        carry[z] = carry.get(z, 0.0) + sign * v
            return {z: j + carry.get(z, 0.0) for z, j in raw.items()}

    def fail(self, exc=None) -> None:
        self.current.fail(exc)

    def update(self, record: dict, durations=None) -> dict:
        if self.store is not None:
            self.poll()
        cur = self.current
        errors0 = _sum(cur.inference_errors)
        out = cur.update(record, durations)
        self.records = [*self.records[-1:], record]
        if self.store is not None and len(self.records) == 2:
            self._watch(cur, errors0)
        return out

    # ------------------------------------------------------------ versions
    def _activate(self, name, exporter) -> None:
        """Make ``exporter`` the active one (between ticks); its counters start from here."""
        with self.lock:
            old = self.loaded[-1][1] if self.loaded and self.loaded[-1][1] is not exporter else None
            if old is not None:
                for k, v in _counters(old.registry).items():
                    self.base[k] = self.base.get(k, 0.0) + v - self.start.get(k, 0.0)
            self.start = _counters(exporter.registry)
            self.loaded = [e for e in self.loaded if e[1] is not exporter][-1:] + [(name, exporter)]
            self.bad_ticks = 0
            self.stuck = False

    def _load(self, v: vs.Version):
        """The version's Exporter after the checks; InputError naming the problem otherwise."""
        from vmpower.serving.energy import find_idle
        from vmpower.serving.live import load_settings

        models = self.store.filter(self.store.spec.for_model(v.path).load(
            use_perf=self.store.use_perf, level=logging.DEBUG, limits=self.store.limits), v.path)
        for m in models:
            problem = probe_problem(m, m.zones)
            if problem:
                raise InputError(v.path, problem)
        settings = [load_settings(self.store.spec.config, m.metadata) for m in models]
        kw = dict(self.kw, idle=find_idle(models, v.path)[0] or self.kw.get("idle"))
        exporter = self.exporter_cls(models, settings, self.node_name, **kw)
        if len(self.records) == 2:  # a dry tick on the last two live records: features available here
            exporter.update(self.records[0])
            got = exporter.update(self.records[1])
            lost = [z for z in self.current.energy.watts if z not in got]
            if lost:
                missing = sorted(s.labels["feature"] for m in exporter.errors.collect() for s in m.samples
                                 if s.name.endswith("_total") and s.value > 0)
                raise InputError(v.path, f"zone {lost[0]} gets no watts here (features not available: "
                                         f"{', '.join(missing[:5]) or 'none missing; confidence or inference'})")
        elif self.records:
            exporter.update(self.records[-1])
        return exporter

    def poll(self, force: bool = False) -> None:
        """Rescan the store; serve the newest version that passes the checks."""
        force, self.sighup = force or self.sighup, False
        try:
            found = vs.scan(self.store.root)
        except InputError as exc:
            log.warning("%s", exc)
            return
        stamps = {v.name: v.stamp for v in found}
        if stamps == self.stamps and not force:
            return
        self.stamps = stamps
        if force:
            self.failed.clear()
        for v in reversed(found):
            if v.name == self.active and self.loaded[-1][0] == v.name and not force and self.active_stamp == v.stamp:
                return  # the newest good version already serves
            if self.failed.get(v.name) == v.stamp:
                continue
            try:
                exporter = self._load(v)
            except InputError as exc:
                self._refuse(v, "check", exc.problem)
                continue
            was = self.active
            self._activate(v.name, exporter)
            self.active_stamp = v.stamp
            log.warning("model version %s serves (was %s)", v.name, was)
            vs.prune(self.store.root, self.store.keep, protect=[n for n, _ in self.loaded if n])
            return
        if self.active not in stamps:
            log.error("model version %s was removed and no other version passes the checks: it keeps serving",
                      self.active)

    def _refuse(self, v: vs.Version, reason: str, problem: str) -> None:
        self.failed[v.name] = v.stamp
        self.rollbacks.labels(v.name, reason).inc()
        log.error("model version %s refused (%s): %s; %s serves", v.name, reason, problem, self.active)

    def _watch(self, cur, errors0: float) -> None:
        """Runtime health of the active version: a bad tick has an inference error, or no zone
        with a confidence at or above validation.rollback_confidence (a collapse)."""
        conf = [s.value for m in cur.confidence.collect() for s in m.samples]
        bad = _sum(cur.inference_errors) > errors0 or (bool(conf) and max(conf) < self.store.collapse)
        self.bad_ticks = self.bad_ticks + 1 if bad else 0
        if self.bad_ticks < self.store.rollback_after:
            return
        self.bad_ticks = 0
        name, found = self.active, vs.scan(self.store.root)
        older = [v for v in reversed(found) if name is not None and vs.order_key(v.name) < vs.order_key(name)
                 and self.failed.get(v.name) != v.stamp]
        if len(self.loaded) < 2 and not older:
            if not self.stuck:
                log.error("model version %s fails at run time (%d ticks) and there is no older version to roll "
                          "back to: it keeps serving", name, self.store.rollback_after)
            self.stuck = True
            return
        self.failed[name] = next((v.stamp for v in found if v.name == name), None)
        self.rollbacks.labels(str(name), "runtime").inc()
        why = f"{self.store.rollback_after} ticks in a row with inference errors or confidence below {self.store.collapse:g}"
        if len(self.loaded) > 1:
            prev_name, prev = self.loaded[0]
            prev.update(self.records[-1])  # rates from the last record on
            self._activate(prev_name, prev)
            self.active_stamp = next((v.stamp for v in found if v.name == prev_name), None)
            log.error("model version %s failed (%s): rolled back to %s", name, why, prev_name)
            return
        for v in older:
            try:
                exporter = self._load(v)
            except InputError as exc:
                self._refuse(v, "check", exc.problem)
                continue
            self._activate(v.name, exporter)
            self.active_stamp = v.stamp
            log.error("model version %s failed (%s): rolled back to %s", name, why, v.name)
            return
        log.error("model version %s failed (%s) and no older version passes the checks: it keeps serving", name, why)

    # ------------------------------------------------------------ the scrape
    def describe(self):
        return []

    def collect(self):
        with self.lock:
            inner = list(self.current.registry.collect())
            base, start, active = dict(self.base), dict(self.start), self.active
        seen = set()
        for fam in inner:
            if fam.type == "counter":
                samples = []
                for s in fam.samples:
                    k = (s.name, tuple(sorted(s.labels.items())))
                    seen.add(k)
                    if k in base or k in start:
                        s = s._replace(value=s.value - start.get(k, 0.0) + base.get(k, 0.0))
                    samples.append(s)
                samples += [_sample(k, v) for k, v in base.items()
                            if k not in seen and k[0].removesuffix("_total") == fam.name]
                fam.samples = samples
            elif fam.name == VERSION_FAMILY and self.store is not None:
                fam.samples = _serving(fam.samples, active)
                fam.documentation = ("1 per zone for the model serving it (version: the name of the model_path "
                                     "version it belongs to)")
            yield fam
        yield from self.own.collect()


def _sample(key, value):
    from prometheus_client.samples import Sample

    return Sample(key[0], dict(key[1]), value)


def _serving(samples, version: str | None) -> list:
    """One series per zone, value 1: the model serving the zone (or its chain's head), with the
    store's version name as ``version``."""
    out, zones = [], {}
    for s in samples:
        z = s.labels["zone"]
        if z not in zones or (s.value == 1 and zones[z].value != 1):
            zones[z] = s
    for s in zones.values():
        out.append(s._replace(labels={**s.labels, "version": str(version)}, value=1.0))
    return out


class Store:
    """The versioned model store of one serve: where (``root``), how to load (``spec``: serve's
    chain options, a vmpower.serving.fallback.ChainSpec whose model is each version's path in
    turn; after ``first``, the serving version's) and the policies (``cfg``: vm-energy-config)."""

    def __init__(self, root, spec, cfg, limits, use_perf: bool):
        self.root, self.spec, self.limits, self.use_perf = root, spec, limits, use_perf
        self.keep = int(cfg.get("validation.keep_versions"))
        self.rollback_after = int(cfg.get("validation.rollback_after_ticks"))
        self.collapse = float(cfg.get("validation.rollback_confidence"))
        self.whitelist = list(cfg.get("feature_config.metrics_whitelist") or [])
        self.active = None

    def filter(self, models, path):
        """The chain without models needing a feature outside metrics_whitelist."""
        import fnmatch

        if not self.whitelist:
            return models
        keep = [m for m in models if all(any(fnmatch.fnmatchcase(f, p) for p in self.whitelist) for f in m.features)]
        for m in models:
            if m not in keep:
                log.warning("%s: %s needs features outside feature_config.metrics_whitelist: left out", path, m.name)
        if not keep:
            raise InputError(path, "no model of the version uses only features of feature_config.metrics_whitelist")
        return keep

    def first(self, probe_exporter_cls=None):
        """Startup: the newest version that loads and passes the probes (older ones in turn;
        each refused one is counted once serving starts). Returns (models, refused)."""
        refused = []
        for v in reversed(vs.scan(self.root)):
            spec = self.spec.for_model(v.path)
            try:
                models = self.filter(spec.load(use_perf=self.use_perf, limits=self.limits), v.path)
                problem = next((p for m in models if (p := probe_problem(m, m.zones))), None)
                if problem:
                    raise InputError(v.path, problem)
            except InputError as exc:
                log.error("model version %s refused (check): %s", v.name, exc.problem)
                refused.append(v)
                continue
            self.active, self.spec = v.name, spec
            vs.prune(self.root, self.keep, protect=[v.name])
            return models, refused
        raise InputError(self.root, "no model version passes the checks" if refused else "no model version")


def start(root, spec, cfg, limits, use_perf: bool):
    """serve's store under ``root`` (see Store): (models of the version that serves first,
    make_exporter for run_exporter, the chain spec of that version)."""
    from vmpower.serving.exporter import Exporter

    store = Store(root, spec, cfg, limits, use_perf)
    models, refused = store.first()

    def make(models_, settings, node_name, **kw):
        sw = Switch(models_, settings, node_name, store=store, exporter_cls=Exporter, **kw)
        sw.active_stamp = next((v.stamp for v in vs.scan(store.root) if v.name == store.active), None)
        for v in refused:
            sw.failed[v.name] = v.stamp
            sw.rollbacks.labels(v.name, "check").inc()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: setattr(sw, "sighup", True))
        return sw

    return models, make, store.spec


def static(**_):
    """serve without a store: the Switch only adds the health gauges (make_exporter)."""
    from vmpower.serving.exporter import Exporter

    def make(models_, settings, node_name, **kw):
        return Switch(models_, settings, node_name, store=None, exporter_cls=Exporter, **kw)

    return make
