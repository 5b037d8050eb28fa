"""``vmpower serve --powercap-dir``: a RAPL-shaped powercap tree, read by an independent reader
(Debian's powercap-utils, ``powercap-info``) with the tree bind-mounted over /sys/class/powercap
in a private mount namespace."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from bench.predict_artifacts import NODE_TYPE, build
from exporter_helpers import Serve, need, parse, series
from vmpower.errors import InputError
from vmpower.serving.powercap import MAX_ENERGY_RANGE_UJ, PowercapTree

ZONES = ["package", "core", "dram", "uncore"]
RAPL = {"0": ("package-0", "package"), "0:0": ("core", "core"), "0:1": ("uncore", "uncore"), "0:2": ("dram", "dram")}
# Inside the namespace only: a machine without RAPL has no /sys/class/powercap to mount over,
# so a tmpfs over /sys/class gives it one there.
MOUNT = ('[ -d /sys/class/powercap ] || { mount -t tmpfs tmpfs /sys/class && mkdir /sys/class/powercap; }; '
         'mount --bind "$1" /sys/class/powercap && shift && exec powercap-info "$@"')


def powercap_info(tree: Path, *args: str) -> str:
    need("powercap-info")
    unshare = need("unshare")
    if os.geteuid() != 0:
        msg = "reading the tree as /sys/class/powercap needs root (a private mount namespace)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", MOUNT, "sh", str(tree), *args],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"powercap-info {' '.join(args)}: exit {res.returncode}: {res.stderr}"
    return res.stdout


def zones_read(text: str) -> dict[str, dict[str, str]]:
    """powercap-info's full dump -> {"0:1": {"name": ..., "energy_uj": ...}}."""
    out, zone = {}, None
    for line in text.splitlines():
        if m := re.match(r"\s*Zone (\S+)$", line):
            zone = out.setdefault(m.group(1), {})
        elif zone is not None and (m := re.match(r"\s*(\w+): (.*)$", line)):
            zone[m.group(1)] = m.group(2)
    return out


def test_tree_layout_wraps_and_continues_after_a_restart(tmp_path):
    tree = PowercapTree(tmp_path, ZONES, max_range_uj=1_000_000)
    assert (tmp_path / "intel-rapl" / "enabled").read_text() == "1\n"
    for zdir, (name, zone) in RAPL.items():
        link = tmp_path / f"intel-rapl:{zdir}"  # flat entries, as /sys/class/powercap lists them
        assert link.is_symlink() and (link / "name").read_text() == f"{name}\n"
        assert (link / "enabled").read_text() == "1\n" and (link / "max_energy_range_uj").read_text() == "1000000\n"
        assert (link / "energy_uj").read_text() == "0\n"
    assert (tmp_path / "intel-rapl/intel-rapl:0/intel-rapl:0:2/name").read_text() == "dram\n"  # nested, as sysfs
    tree.write({"package": 2.5, "core": 0.25, "dram": 0.0, "uncore": 0.999999})
    assert (tmp_path / "intel-rapl:0/energy_uj").read_text() == "500000\n"  # 2.5 J wrapped at 1 J
    assert (tmp_path / "intel-rapl:0:0/energy_uj").read_text() == "250000\n"
    assert (tmp_path / "intel-rapl:0:1/energy_uj").read_text() == "999999\n"
    assert not [p for p in tmp_path.rglob(".*")]  # no temp file left behind
    again = PowercapTree(tmp_path, ZONES, max_range_uj=1_000_000)  # serve restarted: counters go on
    again.write({"package": 0.1, "core": 0.0, "dram": 0.0, "uncore": 0.000002})
    assert (tmp_path / "intel-rapl:0/energy_uj").read_text() == "600000\n"
    assert (tmp_path / "intel-rapl:0:1/energy_uj").read_text() == "1\n"
    with pytest.raises(InputError, match="needs a package zone"):
        PowercapTree(tmp_path / "x", ["core", "dram"])
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "intel-rapl:0").write_text("not ours")
    with pytest.raises(InputError, match="not this tree's link"):
        PowercapTree(tmp_path / "y", ZONES)


def test_powercap_info_reads_the_tree(tmp_path):
    tree = PowercapTree(tmp_path, ZONES)
    tree.write({"package": 1234.5, "core": 1.0, "dram": 2.0, "uncore": 3.0})
    got = zones_read(powercap_info(tmp_path, "intel-rapl"))
    assert {z: v["name"] for z, v in got.items()} == {z: n for z, (n, _) in RAPL.items()}
    assert all(v["enabled"] == "1" and v["max_energy_range_uj"] == str(MAX_ENERGY_RANGE_UJ) for v in got.values())
    assert got["0"]["energy_uj"] == "1234500000" and got["0:2"]["energy_uj"] == "2000000"
    assert powercap_info(tmp_path, "intel-rapl", "-z", "0:1", "-j").strip() == "3000000"
    assert powercap_info(tmp_path, "intel-rapl", "-n").strip() == "1"  # one package zone
    assert powercap_info(tmp_path, "intel-rapl", "-z", "0", "-n").strip() == "3"  # core, uncore, dram


def test_powercap_info_energy_matches_the_exporters_joules(tmp_path):
    """Live serve with --powercap-dir: over a window, the energy powercap-info reads per zone
    equals the rise of kepler_node_cpu_joules_total (each reading is bracketed by two scrapes of
    the same tick, so both describe the same moment)."""
    need("powercap-info")
    art = build(tmp_path / "art")
    tree = tmp_path / "powercap"

    def reading(srv):
        for _ in range(50):
            before = series(parse(srv.text()), "kepler_node_cpu_joules_total")
            energy = {RAPL[z][1]: int(v["energy_uj"]) for z, v in zones_read(powercap_info(tree, "intel-rapl")).items()}
            if series(parse(srv.text()), "kepler_node_cpu_joules_total") == before:
                return before, energy
        raise AssertionError("no powercap-info reading between two ticks")

    with Serve(art["results"], art["config"], "--node-type", NODE_TYPE, "--interval", "0.2",
               "--powercap-dir", tree) as srv:
        srv.wait_for(lambda m: all(v > 0 for v in series(m, "kepler_node_cpu_joules_total").values()))
        j1, e1 = reading(srv)
        time.sleep(5)
        j2, e2 = reading(srv)
    assert set(j1) == set(e1) == set(ZONES)
    for zone in ZONES:
        counted, read = j2[zone] - j1[zone], (e2[zone] - e1[zone]) / 1e6
        print(f"{zone}: exporter {counted:.6f} J, powercap-info {read:.6f} J")
        assert counted > 1 and abs(read - counted) <= 0.01 * counted
        assert abs(read - counted) <= 2e-6  # in fact the same number, to the microjoule
        assert e1[zone] == round(j1[zone] * 1e6)  # a fresh tree starts at 0
