"""A RAPL-shaped powercap tree of the modelled energy (``vmpower serve --powercap-dir DIR``).

DIR takes the place of ``/sys/class/powercap``. It is laid out as the kernel's intel_rapl
driver lays out sysfs, so unmodified RAPL readers inside the VM read vmpower's energy:

* ``intel-rapl/`` is the control type (``enabled``); the zones are nested directories under
  it (``intel-rapl/intel-rapl:0/intel-rapl:0:0``), which is where libpowercap
  (``powercap-info``) looks;
* ``intel-rapl:0``, ``intel-rapl:0:0``, ... are also links at the top of DIR, as in
  ``/sys/class/powercap``, which is what Kepler (prometheus/procfs ``GetRaplZones``) and
  Scaphandre list;
* each zone has ``name``, ``enabled``, ``energy_uj`` and ``max_energy_range_uj``; ``energy_uj``
  wraps to 0 at ``max_energy_range_uj`` as the hardware counter does.

Zone placement follows client Intel parts: package ``intel-rapl:0`` (``package-0``), then core,
uncore and dram as its subzones 0, 1 and 2. Every file is replaced atomically (temp file +
rename), so a reader never sees a partial value.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmpower.errors import InputError
from vmpower.io import write_text

log = logging.getLogger("vmpower.serving.powercap")

CONTROL_TYPE = "intel-rapl"
# What Intel parts report: 2^32 energy-status units of 61.035 uJ (the testdata of Kepler's RAPL reader has it too).
MAX_ENERGY_RANGE_UJ = 262143328850
SUBZONES = ("core", "uncore", "dram")  # intel-rapl:0:0, :0:1, :0:2


def layout(zones) -> dict[str, str]:
    """zone -> its directory name (``intel-rapl:0``, ``intel-rapl:0:1``, ...). Zones the RAPL
    layout does not know follow the known subzones, in the given order."""
    out, n = {}, len(SUBZONES)
    for zone in zones:
        if zone == "package":
            out[zone] = f"{CONTROL_TYPE}:0"
        elif zone in SUBZONES:
            out[zone] = f"{CONTROL_TYPE}:0:{SUBZONES.index(zone)}"
        else:
            out[zone] = f"{CONTROL_TYPE}:0:{n:x}"  # libpowercap names zones in hex
            n += 1
    return out


def sysfs_path(zone_dir: str) -> str:
    """The ``path`` label Kepler gives the zone when the tree is /sys/class/powercap."""
    return f"/sys/class/powercap/{zone_dir}"


def _nested(zone_dir: str) -> Path:
    """intel-rapl:0:1 -> intel-rapl/intel-rapl:0/intel-rapl:0:1 (the device hierarchy)."""
    parts = zone_dir.split(":")[1:]
    return Path(CONTROL_TYPE, *(":".join([CONTROL_TYPE, *parts[:i + 1]]) for i in range(len(parts))))


def _read_uint(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class PowercapTree:
    """Writes the modelled energy of each zone into DIR after every tick.

    Restarts continue the counters found in an existing tree (a counter that fell back to 0
    would look like a wrap to readers, who would then add a whole counter range)."""

    def __init__(self, root: str | os.PathLike, zones, *, max_range_uj: int = MAX_ENERGY_RANGE_UJ):
        self.root, self.max_range = Path(root), int(max_range_uj)
        self.dirs = layout(zones)
        if "package" not in self.dirs:
            raise InputError(self.root, f"a RAPL tree needs a package zone; the models have {', '.join(zones)}")
        self.offset_uj: dict[str, int] = {}
        try:
            self._create()
        except OSError as exc:
            raise InputError(self.root, f"cannot write the powercap tree ({exc.strerror or exc})") from None
        log.info("powercap tree in %s: %s", self.root, ", ".join(f"{z}={d}" for z, d in self.dirs.items()))

    def _create(self) -> None:
        top = self.root / CONTROL_TYPE
        top.mkdir(parents=True, exist_ok=True)
        write_text("1\n", top / "enabled")
        for zone, zdir in self.dirs.items():
            path = self.root / _nested(zdir)
            path.mkdir(parents=True, exist_ok=True)
            old = _read_uint(path / "energy_uj")
            self.offset_uj[zone] = old if old is not None and 0 <= old < self.max_range else 0
            name = "package-0" if zone == "package" else zone
            for fname, text in (("name", name), ("enabled", "1"), ("max_energy_range_uj", str(self.max_range))):
                write_text(text + "\n", path / fname)
            write_text(f"{self.offset_uj[zone]}\n", path / "energy_uj")
            link = self.root / zdir
            target = _nested(zdir)
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            if link.is_symlink() or link.exists():
                raise InputError(link, "exists and is not this tree's link to its zone")
            link.symlink_to(target, target_is_directory=True)

    def energy_uj(self, zone: str, joules: float) -> int:
        """The counter value of ``joules`` modelled since the start, wrapped like RAPL's."""
        return (self.offset_uj[zone] + int(round(joules * 1e6))) % self.max_range

    def write(self, joules: dict[str, float]) -> None:
        for zone, j in joules.items():
            if zone in self.dirs:
                write_text(f"{self.energy_uj(zone, j)}\n", self.root / _nested(self.dirs[zone]) / "energy_uj")
