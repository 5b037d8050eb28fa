"""demo.legacy and demo.legacy_model: the seed collectors' files and arithmetic (unit level;
tests/test_synth.py checks the generated data set, tests/test_legacy_build.py builds on it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmpower.demo import legacy, legacy_model
from vmpower.demo.config import load_config

ROOT = Path(__file__).resolve().parent.parent
NT = "demo-legacy-kvm"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config([ROOT / "config.yaml", ROOT / "tests" / "data" / "legacy.yaml"])


@pytest.fixture(scope="module")
def runs(cfg) -> list[tuple[dict, dict, dict]]:
    """(spec, files, run) of every legacy run."""
    nt = cfg["node_types"][NT]
    return [(spec, *legacy.run_files(cfg, NT, nt, spec, i)) for i, spec in enumerate(nt["runs"])]


def test_vm_file_has_the_collectors_fields_in_order(runs):
    for spec, files, run in runs:
        (vm_name,) = [n for n in files if n.startswith("vm_features_")]
        rows = json.loads(files[vm_name])
        extra = ["core_count"] if spec.get("collector_version", 2) == 2 else []
        assert list(rows[0]) == [*legacy.VM_FIELDS, *extra]
        assert len(rows) == run["vm"]["abs"].size
        assert all(r[k] == 0 for r in rows for k in legacy.PERF_INTS)  # no perf access


def test_host_files(runs, cfg):
    for spec, files, run in runs:
        (name,) = [n for n in files if n.startswith("bm_power_")]
        text = files[name]
        absent = run["host"]["absent"]
        if name.endswith(".csv"):
            assert text.endswith("\r\n") and text.count("\r\n") == absent.size + 1
            df = pd.read_csv(io.StringIO(text))
            assert tuple(df.columns) == legacy.HOST_CSV_COLUMNS
            assert (df["vm_count"].to_numpy() == np.where(absent, 0, 1)).all()
        else:
            rows = json.loads(text)
            assert [len(r["vms"]) for r in rows] == [0 if a else 2 for a in absent]
            assert {r["kepler_endpoint"] for r in rows} == {cfg["legacy"]["kepler_endpoint"]}


def test_run_files_are_deterministic(cfg, runs):
    spec, files, _ = runs[0]
    again, _ = legacy.run_files(cfg, NT, cfg["node_types"][NT], spec, 0)
    assert again == files


def test_loadavg_is_the_kernels_fixed_point_recursion():
    for seed in range(5):
        busy = legacy_model._loadavg(np.random.default_rng(seed), np.ones(60), 60, 2)
        idle = legacy_model._loadavg(np.random.default_rng(seed), np.zeros(60), 60, 2)
        assert (busy * 2048 == np.round(busy * 2048)).all()  # sysinfo: multiples of 1/2048
        assert 1.9 <= busy[-1, 0] <= 2.2 and idle[-1, 0] < 0.2  # 5 min: the 1-min load has followed
        assert (np.abs(np.diff(idle[:, 2])) < 0.05).all()  # the 15-min one moves slowly


def test_noise_floor_has_the_two_host_zones(cfg, runs):
    floor = legacy.noise_floor(cfg, NT, cfg["node_types"][NT], [r for _, _, r in runs])
    assert floor["profile"] == "legacy" and set(floor["zones"]) == {"package", "core"}
    sigma = floor["zones"]["core"]["sigma_watts"]
    assert floor["zones"]["core"]["empirical_noise_mae_watts"] == pytest.approx(sigma * 0.7979, rel=0.3)
