"""Parse Kepler's /metrics into per-VM, per-zone power.

Kepler >= 0.10: ``kepler_vm_cpu_watts{hypervisor,node_name,state,vm_id,vm_name,zone}`` (a gauge,
only ``state="running"`` counts). It also serves ``kepler_vm_cpu_joules_total`` with the same
labels: when the watts gauge is there, only the gauge is used. Kepler 0.7:
``kepler_vm_<zone>_joules_total{mode,source,vm_id}`` counters for package, core, dram and
uncore (its platform, other and gpu counters are not CPU zones); watts come from the counter's
rate (``JoulesRate``), ``mode="dynamic"`` only (0.10 attributes active power only, so idle
joules would make the two versions disagree).

VM selection is by exact name (``vm_name``; 0.7 has none, so the name inside its libvirt id
``machine-qemu-<n>-<name>``) or exact ``vm_id``; glob patterns only when asked for explicitly.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from vmpower.names import ZONES

ZONE_ORDER = ("core", "package", "dram", "uncore")
WATTS_010 = "kepler_vm_cpu_watts"
_JOULES_07 = re.compile(rf"^kepler_vm_(?P<zone>{'|'.join(ZONES)})_joules_total$")
# 0.7 ids: the libvirt scope "machine-qemu\x2d<n>\x2d<name>", with \x2d turned into "-" since 0.7.5
_LIBVIRT_ID = re.compile(r"^machine-qemu(?:-|\\x2d)\d+(?:-|\\x2d)(?P<name>.+?)(?:\.scope)?$")


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


def libvirt_name(vm_id: str) -> str:
    """The VM name inside a Kepler 0.7 libvirt id (``machine-qemu-3-fedora40`` -> ``fedora40``);
    the id itself when it is not one."""
    m = _LIBVIRT_ID.match(vm_id)
    return m.group("name").replace("\\x2d", "-") if m else vm_id


def parse(text: str, content_type: str = "") -> list[VmReading]:
    """All VM readings in one exposition (plain text or OpenMetrics, by Content-Type)."""
    openmetrics = "application/openmetrics-text" in (content_type or "").lower()
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    watts: list[VmReading] = []
    joules: list[VmReading] = []
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == WATTS_010:
                    kind, zone, out = "watts", s.labels.get("zone", ""), watts
                else:
                    m = _JOULES_07.match(s.name)
                    if not m or s.labels.get("mode", "dynamic") != "dynamic":
                        continue
                    kind, zone, out = "joules", m.group("zone"), joules
                labels = s.labels
                vm_id = labels.get("vm_id", "")
                out.append(VmReading(vm_id=vm_id, vm_name=labels.get("vm_name") or libvirt_name(vm_id),
                                     hypervisor=labels.get("hypervisor", ""),
                                     node_name=labels.get("node_name", ""), zone=zone,
                                     value=float(s.value), state=labels.get("state", "running"), kind=kind))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MetricsError(f"unparsable exposition: {str(exc)[:200]}") from exc
    # 0.10 serves kepler_vm_cpu_joules_total beside the gauge; the gauge is what it attributes
    return watts or joules


@dataclass(frozen=True)
class VmFilter:
    """Which VMs to sum: exact names (or vm_ids), plus glob patterns on the name; empty = all."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    @classmethod
    def of(cls, names=None, patterns=None) -> "VmFilter":
        def clean(values):  # exact: no stripping (the CLI strips what it splits)
            return tuple(sorted({v for v in (values or []) if v}))

        return cls(clean(names), clean(patterns))

    @property
    def everything(self) -> bool:
        return not self.names and not self.patterns

    def matches(self, reading: VmReading) -> bool:
        if self.everything:
            return True
        if reading.vm_name in self.names or (reading.vm_id and reading.vm_id in self.names):
            return True
        return any(fnmatch.fnmatchcase(reading.vm_name, p) for p in self.patterns)

    def __str__(self) -> str:
        """Python set repr (``{'fedora40'}``) of names and patterns, sorted so files are deterministic;
        ``{'*'}`` when every VM counts (as older collectors wrote)."""
        values = sorted(set(self.names) | set(self.patterns)) or ["*"]
        return "{" + ", ".join(repr(v) for v in values) + "}"


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
