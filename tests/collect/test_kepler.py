"""vmpower.collect.kepler: parsing Kepler's exposition (0.10 gauge, 0.7 CPU zones) and the VM filter."""

from __future__ import annotations

from kepler_server import Vm
from vmpower.collect.kepler import VmFilter, parse

FIXED = {"package": 40.0, "core": 30.0, "dram": 4.0}
VMS = [Vm("2b7f0a52-8c1e-4d4e-9f3a-6c0e5d1a9b40", "fedora40", share=0.6),
       Vm("7d41c9e3-1f0b-4a57-8e2d-3b9c6a0f5e41", "fedora41", share=0.3)]


def test_parse_uses_only_the_010_gauge_and_the_07_cpu_zones(kepler):
    """0.10 serves kepler_vm_cpu_joules_total beside kepler_vm_cpu_watts; 0.7 serves platform,
    other and gpu counters beside the CPU zones. Only the gauge, and only the CPU zones, count."""
    for openmetrics in (False, True):
        k10 = kepler(VMS[:2], version="0.10", openmetrics=openmetrics, update_interval=0.2, fixed_watts=FIXED)
        text, ctype = k10.exposition()
        assert b"kepler_vm_cpu_joules_total{" in text and b"kepler_vm_cpu_watts{" in text
        readings = parse(text.decode(), ctype)
        assert {(r.kind, r.zone) for r in readings} == {("watts", z) for z in FIXED}
        k07 = kepler(VMS[:2], version="0.7", openmetrics=openmetrics, update_interval=0.2, fixed_watts=FIXED,
                     gpu=True)
        text, ctype = k07.exposition()
        for zone in ("platform", "other", "gpu"):
            assert f"kepler_vm_{zone}_joules_total{{".encode() in text
        readings = parse(text.decode(), ctype)
        assert {r.zone for r in readings} == {"package", "core", "dram", "uncore"}
        assert {r.vm_name for r in readings} == {"fedora40", "fedora41"}  # from machine-qemu-<n>-<name>


def _readings(k):
    return [r for r in parse(*[x.decode() if isinstance(x, bytes) else x for x in k.exposition()])]


def test_vm_names_match_exactly_not_as_suffix_or_glob(kepler):
    vms = [Vm("0e0f4c8e-6d55-4bb1-9a3e-5f2f9c1d77aa", "fedora40"),
           Vm("3c1d2e4f-0a9b-4c8d-8e7f-6a5b4c3d20db", "web"),  # its uuid ends in "db"
           Vm("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "db"),
           Vm("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", "web[1]"),
           Vm("1a2b3c4d-5e6f-4789-8abc-def012345678", "myfedora40", libvirt_id="machine-qemu\\x2d7\\x2dmyfedora40")]
    for version in ("0.10", "0.7"):
        k = kepler(vms, version=version, update_interval=0.2, fixed_watts=FIXED)
        readings = _readings(k)

        def chosen(flt, readings=readings):
            return sorted({r.vm_name for r in readings if flt.matches(r)})

        assert chosen(VmFilter.of(["fedora40"])) == ["fedora40"]  # not myfedora40 (0.7: ...x2dmyfedora40)
        assert chosen(VmFilter.of(["db"])) == ["db"]  # not the VM whose id ends in "db"
        assert chosen(VmFilter.of(["web[1]"])) == ["web[1]"]  # a name, not a character class
        assert chosen(VmFilter.of(["web"])) == ["web"]
        assert chosen(VmFilter.of([], ["*fedora4?"])) == ["fedora40", "myfedora40"]  # globs when asked for
        assert chosen(VmFilter.of(["fedora40"], ["web*"])) == ["fedora40", "web", "web[1]"]
        assert len(chosen(VmFilter.of())) == 5
        # the full vm_id works as a name too
        some = next(r for r in readings if r.vm_name == "db")
        assert chosen(VmFilter.of([some.vm_id])) == ["db"]
    assert str(VmFilter.of(["web[1]", "db"], ["fedora*"])) == "{'db', 'fedora*', 'web[1]'}"
