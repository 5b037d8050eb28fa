"""demo.generate: the driver (profiles, unchanged files kept, stale ones removed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from vmpower.demo.config import load_config
from vmpower.demo.generate import PROFILES, generate

ROOT = Path(__file__).resolve().parent.parent


def _small(cfg: dict) -> dict:
    nt_name, nt = next(iter(cfg["node_types"].items()))
    return dict(cfg, node_types={nt_name: nt}, runs=[{"id": "r1", "workload": "idle:30,cpu_intensive:30",
                                                      "duration": 60}])


def test_profiles_are_the_schemas():
    schema = yaml.safe_load((ROOT / "schemas" / "synth.schema.yaml").read_text())
    assert set(PROFILES) == set(schema["properties"]["node_types"]["additionalProperties"]["properties"]["profile"]["enum"])


def test_generate_writes_once_and_removes_stale_files(tmp_path):
    cfg = _small(load_config(ROOT / "config.yaml"))
    first = generate(cfg, tmp_path)
    nt = next(iter(cfg["node_types"]))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert first["written"] == len(files) == 4 and first["runs"] == 1  # vm, host, machine_spec, noise floor
    assert f"{nt}/synth_noise_floor.json" in files
    stale = tmp_path / nt / "r1" / f"vm_features_{cfg['output_prefix']}_old.json"
    stale.write_text("[]")
    mine = tmp_path / nt / "r1" / "notes.txt"
    mine.write_text("kept")
    second = generate(cfg, tmp_path)
    assert (second["written"], second["unchanged"], second["removed"]) == (0, 4, 1)
    assert not stale.exists() and mine.exists()
