"""demo/pinning_variant.py: what the guest sees of a run under each CPU pinning variant."""

from __future__ import annotations

import numpy as np
import pytest

from vmpower.demo import pinning_variant as pv

UNPINNED = {"steal_percent": 8.0, "steal_burst_std": 6.0, "tau_seconds": 3.0, "counter_noise": 0.08,
            "context_switch_noise": 0.35}


def cfg(variant="none"):
    return {"pinning": {"variant": variant, "unpinned": dict(UNPINNED)}}


def columns(n=400, perf=True):
    r = np.random.default_rng(7)
    util = r.uniform(10, 80, n)
    steal = np.full(n, 2.0)
    inc = r.integers(1000, 5000, n)
    zero = np.zeros(n, dtype=np.int64)
    cycles = (r.integers(10**8, 10**9, n) if perf else zero)
    cols = {
        "cpu_utilization": ("float", util), "cpu_steal": ("float", steal), "cpu_idle": ("float", 100 - util - steal),
        "cpu_efficiency": ("float", util / 100),
        "cpu_cycles": ("int", cycles), "instructions": ("int", cycles * 2 if perf else zero),
        "cache_references": ("int", cycles // 100), "cache_misses": ("int", cycles // 1000),
        "branches": ("int", cycles // 10), "branch_misses": ("int", cycles // 500),
        "instructions_per_cycle": ("float", np.full(n, 2.0 if perf else 0.0)),
        "cache_miss_ratio": ("float", np.full(n, 0.1 if perf else 0.0)),
        "branch_miss_ratio": ("float", np.full(n, 0.02 if perf else 0.0)),
        "context_switches": ("int", r.integers(100, 1000, n) if perf else zero),
        "sys_context_switches": ("int", np.cumsum(inc) + 10**6),
        "sys_cpu_user_seconds": ("float", np.round(np.cumsum(r.uniform(0.5, 1.5, n)) + 100, 2)),
        "sys_cpu_system_seconds": ("float", np.round(np.cumsum(r.uniform(0.1, 0.3, n)) + 50, 2)),
    }
    return cols


def dt(n=400):
    return np.ones(n)


def test_variant_of_node_type_overrides_the_config_and_defaults_to_none():
    assert pv.variant_of({}, {}) == "none"
    assert pv.variant_of(cfg("pinned"), {}) == "pinned"
    assert pv.variant_of(cfg("pinned"), {"pinning": "unpinned"}) == "unpinned"
    assert pv.variant_of({"pinning": None}, {"pinning": None}) == "none"


def test_none_returns_the_columns_unchanged():
    cols = columns()
    assert pv.apply(cfg("none"), {}, cols, dt(), np.random.default_rng(0)) is cols


def test_pinned_has_zero_steal_moved_to_idle_and_the_rest_untouched():
    cols = columns()
    out = pv.apply(cfg("pinned"), {}, cols, dt(), np.random.default_rng(0))
    assert (out["cpu_steal"][1] == 0).all()
    np.testing.assert_allclose(out["cpu_idle"][1], cols["cpu_idle"][1] + 2.0)
    # busy = utilization + delta (delta = -old steal): the utilisation includes steal here
    np.testing.assert_allclose(out["cpu_utilization"][1], cols["cpu_utilization"][1] - 2.0)
    np.testing.assert_allclose(out["cpu_efficiency"][1], out["cpu_utilization"][1] / 100)
    for name in ("cpu_cycles", "instructions", "context_switches", "sys_context_switches", "sys_cpu_user_seconds"):
        assert out[name][1] is cols[name][1]
    assert cols["cpu_steal"][1][0] == 2.0  # the input mapping is not modified


def test_unpinned_steal_is_bursty_around_steal_percent_and_bounded():
    cols = columns(4000)
    out = pv.apply(cfg("unpinned"), {}, cols, dt(4000), np.random.default_rng(1))
    steal = out["cpu_steal"][1]
    assert (steal >= 0).all() and (steal <= cols["cpu_steal"][1] + cols["cpu_idle"][1] + 1e-9).all()
    assert abs(np.median(steal) - UNPINNED["steal_percent"]) < 1.5
    assert steal.std() > 3.0
    # AR(1) with tau = 3 windows: neighbouring windows are correlated (exp(-1/3) ~ 0.72)
    assert np.corrcoef(steal[:-1], steal[1:])[0, 1] > 0.5
    total = out["cpu_steal"][1] + out["cpu_idle"][1] + cols["cpu_utilization"][1] - cols["cpu_steal"][1]
    np.testing.assert_allclose(out["cpu_efficiency"][1], out["cpu_utilization"][1] / 100)
    assert (out["cpu_idle"][1] >= 0).all() and np.isfinite(total).all()


def test_unpinned_counters_jitter_keep_misses_below_totals_and_ratios_consistent():
    cols = columns()
    out = pv.apply(cfg("unpinned"), {}, cols, dt(), np.random.default_rng(2))
    ratio = out["cpu_cycles"][1] / cols["cpu_cycles"][1]
    assert 0.02 < np.log(ratio).std() < 0.15  # counter_noise 0.08 (log-normal)
    assert abs(ratio.mean() - 1) < 0.02  # mean-preserving
    assert out["cpu_cycles"][1].dtype == np.int64
    assert (out["cache_misses"][1] <= out["cache_references"][1]).all()
    assert (out["branch_misses"][1] <= out["branches"][1]).all()
    np.testing.assert_allclose(out["instructions_per_cycle"][1], out["instructions"][1] / out["cpu_cycles"][1])
    # cumulative counters stay cumulative and on the USER_HZ grid
    for name in ("sys_cpu_user_seconds", "sys_cpu_system_seconds"):
        v = out[name][1]
        assert (np.diff(v) >= -1e-9).all()
        np.testing.assert_allclose(v * 100, np.round(v * 100), atol=1e-6)
    assert (np.diff(out["sys_context_switches"][1]) >= 0).all()
    assert out["sys_context_switches"][1][0] == cols["sys_context_switches"][1][0]
    assert not np.array_equal(out["context_switches"][1], cols["context_switches"][1])


def test_unpinned_perfless_run_keeps_its_zeros():
    cols = columns(perf=False)
    out = pv.apply(cfg("unpinned"), {}, cols, dt(), np.random.default_rng(3))
    for name in ("cpu_cycles", "instructions", "context_switches", "instructions_per_cycle", "cache_miss_ratio"):
        assert not out[name][1].any(), name
    assert not np.array_equal(out["sys_context_switches"][1], cols["sys_context_switches"][1])


def test_unpinned_is_deterministic_by_rng():
    def run(seed):
        return pv.apply(cfg("unpinned"), {}, columns(), dt(), np.random.default_rng(seed))

    a, b, c = run(5), run(5), run(6)
    for name in a:
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert not np.array_equal(a["cpu_steal"][1], c["cpu_steal"][1])


@pytest.mark.parametrize("variant", pv.VARIANTS)
def test_every_variant_keeps_every_column_and_length(variant):
    cols = columns()
    out = pv.apply(cfg(variant), {}, cols, dt(), np.random.default_rng(0))
    assert set(out) == set(cols)
    assert all(len(v) == 400 for _, v in out.values())
