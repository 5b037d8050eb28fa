"""demo.guest: the demo guest collector's columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmpower.demo.config import load_config
from vmpower.demo.guest import PERF_COUNTERS, PERF_RATIOS
from vmpower.demo.session import simulate_run

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(CONFIG)


def _cols(cfg, perf: bool) -> dict:
    nt_name, nt = next(iter(cfg["node_types"].items()))
    spec = {"id": "g", "workload": "cpu_intensive:60,idle:60", "duration": 120, "perf": perf}
    return simulate_run(cfg, nt_name, nt, spec, 0)["vm"]["cols"]


def test_cpu_split_sums_to_100_and_counters_are_cumulative(cfg):
    cols = _cols(cfg, True)
    parts = ("cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_irq", "cpu_softirq", "cpu_steal")
    np.testing.assert_allclose(sum(cols[k][1] for k in parts), cols["cpu_utilization"][1])
    np.testing.assert_allclose(cols["cpu_utilization"][1] + cols["cpu_iowait"][1] + cols["cpu_idle"][1], 100.0,
                               atol=0.5)
    for k in ("sys_cpu_user_seconds", "sys_context_switches", "sys_interrupts", "sys_forks",
              "node_process_cpu_seconds_total"):
        assert (np.diff(cols[k][1]) >= 0).all(), k
    assert (cols["cache_misses"][1] <= cols["cache_references"][1]).all()
    assert list(cols)[:len(PERF_COUNTERS)] == list(PERF_COUNTERS)


def test_perf_less_collectors_write_zeros(cfg):
    cols = _cols(cfg, False)
    for k in (*PERF_COUNTERS, *PERF_RATIOS):
        assert not cols[k][1].any(), k
    assert cols["cpu_utilization"][1].max() > 50
