"""vmpower.serving.energy: Kepler's node CPU family integrated from the modelled watts."""

import math
from pathlib import Path

from prometheus_client import CollectorRegistry

from vmpower.serving.energy import NodeEnergy, find_idle

ZONES = ["package", "dram"]


def _value(registry, name, zone):
    return registry.get_sample_value(name, {"node_name": "n", "zone": zone, "path": _path(registry, name, zone)})


def _path(registry, name, zone):
    for m in registry.collect():
        for s in m.samples:
            if s.name == name and s.labels["zone"] == zone:
                return s.labels["path"]
    return None


def test_joules_are_watts_times_window_and_never_go_down():
    r = CollectorRegistry()
    e = NodeEnergy(ZONES, "n", {"package": 10.0}, registry=r)
    e.tick({"package": 30.0, "dram": 4.0}, 2.0, 0.25)
    e.tick({"package": -5.0}, 1.0)  # below 0 is clipped: no energy taken back
    e.tick({"package": 30.0}, None)  # no window: watts published, no energy
    e.tick({"package": 30.0}, math.nan)
    assert e.snapshot_joules() == {"package": 60.0, "dram": 8.0}
    assert _value(r, "kepler_node_cpu_joules_total", "package") == 60.0
    assert _value(r, "kepler_node_cpu_active_joules_total", "package") == 40.0
    assert _value(r, "kepler_node_cpu_idle_joules_total", "package") == 20.0
    assert _value(r, "kepler_node_cpu_watts", "package") == 30.0
    assert _value(r, "kepler_node_cpu_watts", "dram") is None  # not served on the last tick
    assert r.get_sample_value("kepler_node_cpu_usage_ratio", {"node_name": "n"}) == 0.25


def test_idle_is_capped_at_the_total():
    e = NodeEnergy(ZONES, "n", {"package": 10.0, "core": 3.0})
    assert e.split("package", 4.0) == (0.0, 4.0)
    assert e.split("package", 12.5) == (2.5, 10.0)
    assert e.split("dram", 4.0) is None and "core" not in e.idle  # only the served zones


class _Model:
    def __init__(self, meta, source="m"):
        self.metadata, self.source = meta, Path(source)


def test_find_idle_prefers_the_chains_dynpower_model():
    dyn = _Model({"output_type": "DynPower", "idle_power_watts": {"package": 7, "dram": "1.5"}}, "dyn")
    idle, where = find_idle([_Model({"output_type": "AbsPower"}), dyn])
    assert idle == {"package": 7.0, "dram": 1.5} and where == "dyn"
    idle, where = find_idle([_Model({"node_type": "x"})], None)
    assert idle is None and "no DynPower model" in where
