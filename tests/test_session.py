"""demo.session: one demo collection session (schedule, Kepler, host and guest rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmpower.demo.config import load_config
from vmpower.demo.session import simulate_run
from vmpower.demo.simulate import HOST_ZONE_ORDER, US

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(CONFIG)


def _run(cfg, **spec):
    nt_name, nt = next(iter(cfg["node_types"].items()))
    return simulate_run(cfg, nt_name, nt, {"id": "r", "workload": "idle:60,cpu_intensive:60", "duration": 240, **spec}, 0)


def test_host_and_guest_rows(cfg):
    run = _run(cfg)
    host, vm = run["host"], run["vm"]
    assert host["rel_us"][0] == 0 and (np.diff(host["rel_us"]) >= 0).all()
    assert (np.diff(vm["abs_us"]) > 0).all()
    # the guest starts `lead` after the host (plus its clock skew) and runs its duration
    assert vm["abs_us"][0] - host["abs_us"][0] == pytest.approx((run["lead"] + run["skew"]) * US, abs=2 * US)
    assert 230 < vm["timestamp_us"][-1] / US <= 240
    assert set(vm["workload"]) == {"idle", "cpu_intensive"}
    for z in HOST_ZONE_ORDER:
        assert (host["vals"][z] >= 0).all() and host["vals"][z].size == host["rel_us"].size
    assert vm["cols"]["cpu_utilization"][1][vm["workload"] == "cpu_intensive"].mean() > 50


def test_killed_runs_stop_early_and_runs_are_deterministic(cfg):
    full, killed = _run(cfg), _run(cfg, killed=True)
    assert killed["vm"]["timestamp_us"][-1] < full["vm"]["timestamp_us"][-1] * (cfg["killed_fraction"] + 0.01)
    again = _run(cfg)
    np.testing.assert_array_equal(again["host"]["vals"]["package"], full["host"]["vals"]["package"])
    np.testing.assert_array_equal(again["vm"]["abs_us"], full["vm"]["abs_us"])
