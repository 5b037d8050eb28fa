"""Parse Kepler's /metrics into per-VM, per-zone power.

Kepler >= 0.10: ``kepler_vm_cpu_watts{hypervisor,node_name,state,vm_id,vm_name,zone}`` (a gauge,
only ``state="running"`` counts). Kepler 0.7: ``kepler_vm_<zone>_joules_total{mode,source,vm_id}``
counters; watts come from the counter's rate (``JoulesRate``), ``mode="dynamic"`` only (0.10
attributes active power only, so idle joules would make the two versions disagree).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

ZONE_ORDER = ("core", "package", "dram", "uncore")
_JOULES = re.compile(r"^kepler_vm_(?P<zone>[a-z]+)_joules_total$")


class MetricsError(ValueError):
    """The endpoint answered, but not with usable Kepler VM metrics."""


@dataclass(frozen=True)
class VmReading:
    vm_id: str
    vm_name: str
    hypervisor: str
    node_name: str
    zone: str
    value: float  # watts (gauge) or joules (counter)
    state: str
    kind: str  # "watts" | "joules"


def parse(text: str, content_type: str = "") -> list[VmReading]:
    """All VM readings in one exposition (plain text or OpenMetrics, by Content-Type)."""
    openmetrics = "application/openmetrics-text" in (content_type or "").lower()
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    out: list[VmReading] = []
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "kepler_vm_cpu_watts":
                    kind, zone = "watts", s.labels.get("zone", "")
                else:
                    m = _JOULES.match(s.name)
                    if not m or (openmetrics and s.name.endswith("_created")):
                        continue
                    if s.labels.get("mode", "dynamic") != "dynamic":
                        continue
                    kind, zone = "joules", m.group("zone")
                labels = s.labels
                vm_id = labels.get("vm_id", "")
                out.append(VmReading(vm_id=vm_id, vm_name=labels.get("vm_name") or vm_id,
                                     hypervisor=labels.get("hypervisor", ""),
                                     node_name=labels.get("node_name", ""), zone=zone,
                                     value=float(s.value), state=labels.get("state", "running"), kind=kind))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MetricsError(f"unparsable exposition: {str(exc)[:200]}") from exc
    return out


def matches(reading: VmReading, patterns: list[str]) -> bool:
    """VM name (or, for 0.7 which has no vm_name, the libvirt vm_id ending in the name) vs globs."""
    for pat in patterns:
        if fnmatch.fnmatchcase(reading.vm_name, pat):
            return True
        if reading.vm_id and (fnmatch.fnmatchcase(reading.vm_id, pat) or
                              fnmatch.fnmatchcase(reading.vm_id, "*" + pat)):
            return True
    return False


class JoulesRate:
    """Watts from 0.7-style joules counters.

    Kepler updates its counters every few seconds, so a rate between two 0.1 s scrapes is
    mostly 0 with spikes. Instead each series' power is the rate between consecutive *changes*
    of its counter, held until the next change (the way 0.10 repeats its gauge). A counter that
    has not moved for ``still_after`` seconds is at 0 W.
    """

    def __init__(self, still_after: float = 10.0):
        self.still_after = still_after
        self._state: dict[tuple[str, str], tuple[float, float, float | None, float]] = {}

    def reset(self) -> None:
        self._state.clear()

    @property
    def any_rate(self) -> bool:
        """True once some series has moved: Kepler has refreshed since we started watching."""
        return any(st[2] is not None for st in self._state.values())

    def never_moved(self, key: tuple[str, str]) -> bool:
        st = self._state.get(key)
        return st is not None and st[2] is None

    def watts(self, key: tuple[str, str], joules: float, t: float) -> float | None:
        st = self._state.get(key)
        if st is None:
            self._state[key] = (joules, t, None, t)
            return None
        last_j, last_t, held, first_t = st
        if joules < last_j:  # counter reset (Kepler restarted)
            self._state[key] = (joules, t, None, t)
            return None
        if joules > last_j:
            held = (joules - last_j) / (t - last_t) if t > last_t else held
            self._state[key] = (joules, t, held, first_t)
            return held
        if held is None and t - last_t >= self.still_after:
            held = 0.0
            self._state[key] = (last_j, last_t, held, first_t)
        elif held is not None and t - last_t >= self.still_after:
            held = 0.0
            self._state[key] = (last_j, last_t, held, first_t)
        return held
