"""demo.config: the synth: section, overlaid and checked (one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmpower.demo.config import load_config, overlay
from vmpower.demo.synth import select
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.yaml"


def test_overlay_merges_dicts_and_replaces_the_rest():
    assert overlay({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2], "n": 0}) == {
        "a": {"x": 1, "y": 3}, "l": [2], "n": 0}


def test_overlays_later_files_win(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("synth:\n  seed: 99\n")
    cfg = load_config([CONFIG, over])
    assert cfg["seed"] == 99 and cfg["runs"] == load_config(CONFIG)["runs"]


@pytest.mark.parametrize("over, message", [
    ({"runs": [{"id": "r", "workload": "idle:30,nosuch:10", "duration": 60}]}, "synth.runs.r: unknown workload 'nosuch'"),
    ({"runs": [{"id": "r", "workload": "idle:x", "duration": 60}]}, "bad duration 'x' for idle"),
    ({"runs": [{"id": "r", "workload": "idle", "duration": 5}]}, "5 is less than the minimum of 30"),
    ({"node_types": {"demo-xeon-gold": {"profile": "legacy"}}}, "needs a synth.legacy section"),
])
def test_bad_synth_sections_are_one_line(tmp_path, over, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"synth": over}))
    with pytest.raises(InputError, match=message) as err:
        load_config([CONFIG, path])
    assert "\n" not in str(err.value)


def test_legacy_runs_must_be_perf_less_json(tmp_path):
    path = tmp_path / "leg.yaml"
    legacy = yaml.safe_load((ROOT / "tests/data/legacy.yaml").read_text())
    legacy["synth"]["node_types"]["demo-legacy-kvm"]["runs"][0]["perf"] = True
    path.write_text(yaml.safe_dump(legacy))
    with pytest.raises(InputError, match="perf-less JSON arrays only"):
        load_config([CONFIG, path])


def test_select_seed_and_node_types():
    cfg = load_config(CONFIG)
    one = select(cfg, 3, ["demo-epyc"], "c.yaml")
    assert one["seed"] == 3 and list(one["node_types"]) == ["demo-epyc"]
    assert len(cfg["node_types"]) == 3  # the loaded config is not modified
    with pytest.raises(InputError, match="--seed must be >= 0"):
        select(cfg, -1, None, "c.yaml")
    with pytest.raises(InputError, match="no such synth.node_types entry: nope"):
        select(cfg, None, ["nope"], "c.yaml")
