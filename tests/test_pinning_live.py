"""serving/pinning_live.py: the three pinning gauges from live records."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from vmpower.pipeline.pinning import recommend, window_metrics
from vmpower.serving.pinning_live import PinningMonitor, isolation_ratio, parse_cpu_list


def _value(registry, name):
    return registry.get_sample_value(name)


def _records(n, steal, seed=0):
    rng = np.random.default_rng(seed)
    util = 50 + 20 * np.sin(np.arange(n) / 5)
    cs = 1000 * np.exp(rng.normal(0, 0.4 if steal else 0.01, n))
    st = np.abs(rng.normal(0, 3, n)) * 5 if steal else np.zeros(n)
    return [{"cpu_steal": float(s), "cpu_utilization": float(u), "sys_context_switches_rate": float(c)}
            for s, u, c in zip(st, util, cs)]


def test_cpu_list_and_isolation_ratio(tmp_path):
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11} and parse_cpu_list("\n") == set()
    f = tmp_path / "isolated"
    f.write_text("2-3\n")
    assert isolation_ratio(None, f, online=8) == 0.25
    assert isolation_ratio([0, 1, 2, 3], f, online=8) == 0.5  # the configured list wins
    assert isolation_ratio(None, tmp_path / "absent", online=8) == 0.0


@pytest.mark.parametrize("steal,pinned", [(False, 1.0), (True, 0.0)])
def test_detected_pinning_and_the_live_score(tmp_path, steal, pinned):
    reg = CollectorRegistry()
    mon = PinningMonitor(reg, window=30, min_samples=10, isolated_file=tmp_path / "none")
    records = _records(40, steal)
    for r in records[:9]:
        mon.update(r)
    assert _value(reg, "kepler_vm_cpu_pinning_enabled") is None  # too few samples to tell
    for r in records[9:]:
        mon.update(r)
    assert _value(reg, "kepler_vm_cpu_pinning_enabled") == pinned
    window = records[-30:]
    expect = recommend(window_metrics([r["cpu_steal"] for r in window], [r["cpu_utilization"] for r in window],
                                      [r["sys_context_switches_rate"] for r in window]))["confidence"]
    assert _value(reg, "kepler_vm_pinning_recommendation_score") == pytest.approx(expect)
    assert (expect > 0.5) == steal  # noisy steal and scheduling: the EP recommends pinning


def test_the_config_setting_wins_and_no_steal_field_publishes_nothing(tmp_path):
    reg = CollectorRegistry()
    mon = PinningMonitor(reg, enabled=False, isolated_cpus=[1], min_samples=2, isolated_file=tmp_path / "x")
    for r in _records(5, steal=False):
        mon.update(r)
    assert _value(reg, "kepler_vm_cpu_pinning_enabled") == 0.0
    reg2 = CollectorRegistry()
    mon2 = PinningMonitor(reg2, min_samples=2, isolated_file=tmp_path / "x")
    for _ in range(5):
        mon2.update({"cpu_utilization": 10.0})
    assert _value(reg2, "kepler_vm_cpu_pinning_enabled") is None
