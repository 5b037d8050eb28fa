"""The shared workload-sequence grammar (vmpower.workloads): the collector's and the demo's inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmpower import workloads
from vmpower.collect.stress import ALIASES, WORKLOADS, Phase, parse_sequence
from vmpower.demo.simulate import phases
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _config_sequences() -> list[str]:
    """Every run's workload in config.yaml and the legacy overlay (the demo's inputs today)."""
    out = []
    for name in ("config.yaml", "tests/data/legacy.yaml"):
        synth = yaml.safe_load((ROOT / name).read_text())["synth"]
        out += [r["workload"] for r in synth.get("runs", [])]
        out += [r["workload"] for nt in synth["node_types"].values() for r in nt.get("runs", [])]
    return out


def test_fixed_open_and_spaced_phases():
    assert workloads.parse("a:60,b:45", "x") == [("a", 60.0), ("b", 45.0)]
    assert workloads.parse("a,b", "x") == [("a", None), ("b", None)]
    assert workloads.parse(" a : 1.5 , b: .5 ", "x") == [("a", 1.5), ("b", 0.5)]
    assert workloads.parse("a:", "x") == [("a", None)]
    assert workloads.parse("cycle:10", "x", ALIASES) == [("cpu_cycling", 10.0)]


@pytest.mark.parametrize("spec, message", [
    ("", "needs a name"), ("a,,b", "needs a name"), (":30", "needs a name"), ("a b", "needs a name"),
    ("a:abc", "bad duration 'abc' for a"), ("a:inf", "bad duration"), ("a:1e3", "bad duration"),
    ("a:-5", "bad duration"), ("a:0", "duration for a must be > 0"),
])
def test_malformed_sequences_are_one_line_errors(spec, message):
    with pytest.raises(InputError, match=message) as err:
        workloads.parse(spec, "where.yaml")
    assert "\n" not in str(err.value) and "where.yaml" in str(err.value)


def test_resolve_shares_what_the_fixed_phases_leave():
    assert workloads.resolve([("a", None), ("b", None)], 480) == [("a", 240.0), ("b", 240.0)]
    assert workloads.resolve([("a", None), ("b", 120.0)], 800) == [("a", 680.0), ("b", 120.0)]
    assert workloads.resolve([("a", None)], None) == [("a", float("inf"))]
    assert workloads.resolve([("a", None), ("b", None)], None) == [("a", 60.0), ("b", 60.0)]
    assert workloads.resolve([("a", None), ("b", 50.0)], 40) == [("a", 20.0), ("b", 50.0)]  # total < fixed


def test_timeline_loops_until_the_end():
    assert workloads.timeline([("a", 60.0), ("b", 45.0)], 200) == [
        ("a", 0.0, 60.0), ("b", 60.0, 105.0), ("a", 105.0, 165.0), ("b", 165.0, 200.0)]


def test_every_demo_sequence_parses_and_fills_its_run():
    specs = _config_sequences()
    assert len(specs) >= 9
    for spec in specs:
        ph = phases(spec, 300.0)
        assert ph[0][1] == 0.0 and ph[-1][2] == 300.0
        assert all(b > a for _, a, b in ph)


def test_the_collectors_inputs():
    # docs/collect.md's examples
    assert parse_sequence("cpu_cycling:60,cpu_intensive:45", 600) == [Phase("cpu_cycling", 60),
                                                                      Phase("cpu_intensive", 45)]
    assert parse_sequence("cycle,cpu_intensive", 800, 120) == [Phase("cpu_cycling", 680), Phase("cpu_intensive", 120)]
    assert parse_sequence(None, None) == [Phase("none", float("inf"))]  # no --stress-workload
    for spec in _config_sequences():  # the demo's runs name stress-ng workloads the collector runs
        assert [p.workload for p in parse_sequence(spec, 600)] == [n for n, _ in workloads.parse(spec, "x")]
    with pytest.raises(InputError, match="unknown workload 'bogus'"):
        parse_sequence("cpu_intensive,bogus", 10)


def test_check_names_lists_the_known_ones():
    with pytest.raises(InputError, match=r"unknown workload 'x' \(known: a, b\)"):
        workloads.check_names([("a", None), ("x", 1.0)], ["a", "b"], "w")
    workloads.check_names([("idle", None)], WORKLOADS, "w")
