"""Kepler >= 0.10's node CPU metric family, from the modelled watts of ``vmpower serve``.

Names, types, labels and help texts follow Kepler's Prometheus power collector
(internal/exporter/prometheus/collector/power_collector.go on Kepler's main branch):
``kepler_node_cpu_{joules_total,watts}``, ``kepler_node_cpu_{active,idle}_{joules_total,watts}``
with labels ``zone`` and ``path`` (the RAPL zone's sysfs directory), ``kepler_node_cpu_usage_ratio``,
and ``node_name`` on every series (a constant label in Kepler).

Energy is integrated here: each tick's watts times the window they were computed over (the
collector record's ``time_delta_seconds``, measured on the monotonic clock). Watts are clipped
at 0, so the counters never go down, whichever model of the chain served the tick. A tick
without watts for a zone adds no energy to it (its counters stay, its watts series goes).

Idle and active differ from Kepler's own split (Kepler: active = total x CPU usage ratio):
idle is the node_type's isolated idle power per zone (``idle_power_watts`` that ``isolate``
measured and DynPower models record), capped at the total, and active = total - idle.
"""

from __future__ import annotations

import logging
import math
import threading
import zipfile
from pathlib import Path

from vmpower.serving.powercap import layout, sysfs_path

log = logging.getLogger("vmpower.serving.predict")
# Kepler's states: total, active (above idle), idle.
HELP = {None: "total", "active": "active (above the node_type's idle power)",
        "idle": "idle (the node_type's isolated idle power, at most the total)"}


class NodeEnergy:
    """A prometheus_client collector holding per-zone watts and joules. ``tick`` and
    ``collect`` share a lock, so one scrape's joules and watts belong to the same tick."""

    def __init__(self, zones, node_name: str, idle: dict[str, float] | None = None, registry=None):
        self.zones, self.node_name = list(zones), node_name
        self.idle = {z: max(0.0, float(w)) for z, w in (idle or {}).items() if z in self.zones}
        self.paths = {z: sysfs_path(d) for z, d in layout(self.zones).items()}
        self.joules = dict.fromkeys(self.zones, 0.0)
        self.active_joules = dict.fromkeys(self.idle, 0.0)
        self.idle_joules = dict.fromkeys(self.idle, 0.0)
        self.watts: dict[str, float] = {}  # zones served on the last tick only
        self.usage_ratio: float | None = None
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def split(self, zone: str, watts: float) -> tuple[float, float] | None:
        """(active, idle) watts of a total, or None without an idle power for the zone."""
        if zone not in self.idle:
            return None
        idle = min(self.idle[zone], watts)
        return watts - idle, idle

    def tick(self, watts: dict[str, float], seconds: float | None, usage_ratio: float | None = None) -> None:
        """Record one tick: ``watts`` per served zone (total power, W) over the last ``seconds``."""
        dt = seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else 0.0
        with self._lock:
            self.watts = {z: max(0.0, float(w)) for z, w in watts.items() if z in self.joules}
            for zone, w in self.watts.items():
                self.joules[zone] += w * dt
                parts = self.split(zone, w)
                if parts is not None:
                    self.active_joules[zone] += parts[0] * dt
                    self.idle_joules[zone] += parts[1] * dt
            if usage_ratio is not None and math.isfinite(usage_ratio):
                self.usage_ratio = min(1.0, max(0.0, usage_ratio))

    def snapshot_joules(self) -> dict[str, float]:
        with self._lock:
            return dict(self.joules)

    def describe(self):
        return []  # no registration-time collect (the registry would call collect otherwise)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["node_name", "zone", "path"]
        with self._lock:
            ratio = GaugeMetricFamily("kepler_node_cpu_usage_ratio", "Share of the node's CPU time that was "
                                      "neither idle nor iowait over the last tick (0 to 1)", labels=["node_name"])
            if self.usage_ratio is not None:
                ratio.add_metric([self.node_name], self.usage_ratio)
            yield ratio
            for state, joules, watts in (
                    (None, self.joules, self.watts),
                    ("active", self.active_joules, {z: self.split(z, w)[0] for z, w in self.watts.items() if z in self.idle}),
                    ("idle", self.idle_joules, {z: self.split(z, w)[1] for z, w in self.watts.items() if z in self.idle})):
                name = "cpu" if state is None else f"cpu_{state}"
                what = HELP[state]
                c = CounterMetricFamily(f"kepler_node_{name}_joules", f"Modelled {what} energy of the node's CPU "
                                        "by RAPL zone since serve started (J)", labels=labels)
                g = GaugeMetricFamily(f"kepler_node_{name}_watts", f"Modelled {what} power of the node's CPU by "
                                      "RAPL zone over the last tick (W)", labels=labels)
                for zone in self.zones:
                    if zone in joules:
                        c.add_metric([self.node_name, zone, self.paths[zone]], joules[zone])
                    if zone in watts:
                        g.add_metric([self.node_name, zone, self.paths[zone]], watts[zone])
                yield c
                yield g


def _idle_of(meta: dict) -> dict[str, float] | None:
    idle = meta.get("idle_power_watts")
    if isinstance(idle, dict) and idle:
        try:
            return {str(z): float(w) for z, w in idle.items()}
        except (TypeError, ValueError):
            return None
    return None


def find_idle(models, model_arg: str | Path | None = None) -> tuple[dict[str, float] | None, str]:
    """The node_type's isolated idle watts per zone and where they come from: a model of the
    chain that records them (DynPower), else a DynPower model of the same node_type in the
    directory serve selected from. (None, reason) when there is none."""
    for m in models:
        idle = _idle_of(m.metadata)
        if idle:
            return idle, f"{m.source}"
    node_type = models[0].metadata.get("node_type") if models else None
    root = Path(model_arg) if model_arg is not None else None
    if root is None or not root.is_dir() or (root / "metadata.json").exists():
        return None, "no DynPower model of the node_type given"
    dirs = sorted(p.parent for p in root.rglob("metadata.json"))
    zips = [p for p in sorted(root.rglob("*.zip")) if p.with_suffix("") not in dirs]
    for path in [*dirs, *zips]:
        from vmpower.errors import InputError
        from vmpower.serving.artifact import read_metadata

        try:
            meta = read_metadata(path)
        except (InputError, zipfile.BadZipFile):
            continue
        if meta.get("output_type") == "DynPower" and meta.get("node_type") == node_type:
            idle = _idle_of(meta)
            if idle:
                return idle, str(path)
    return None, f"no DynPower model of node_type {node_type} under {root}"
