"""vmpower.demo.legacy_model.simulate_run: what the seed's collectors make of one simulated session
(the files written from it: tests/test_legacy.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmpower.demo import legacy_model
from vmpower.demo.config import load_config
from vmpower.demo.legacy import HOST_ZONES, PERF_INTS, VM_FIELDS

ROOT = Path(__file__).resolve().parent.parent
NT = "demo-legacy-kvm"
PCT = ("cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq", "cpu_softirq", "cpu_steal",
       "cpu_idle")


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config([ROOT / "config.yaml", ROOT / "tests" / "data" / "legacy.yaml"])


@pytest.fixture(scope="module")
def runs(cfg) -> list[tuple[dict, dict]]:
    nt = cfg["node_types"][NT]
    return [(spec, legacy_model.simulate_run(cfg, NT, nt, spec, i)) for i, spec in enumerate(nt["runs"])]


def _same(a: dict, b: dict) -> bool:
    """Deep equality of two runs (arrays compared element-wise, NaN equal to NaN)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def test_columns_are_the_collectors_in_its_order_with_its_types(runs):
    for _, run in runs:
        cols = run["vm"]["cols"]
        assert tuple(cols) == VM_FIELDS[3:-3]
        n = run["vm"]["abs"].size
        for name, (kind, values) in cols.items():
            assert values.shape == (n,), name
            assert values.dtype == (np.int64 if kind == "int" else np.float64), name
            assert np.isfinite(values).all(), name
        assert all((cols[k][1] == 0).all() for k in PERF_INTS)  # no perf in the VM


def test_psutil_shares_add_up_like_psutil(runs):
    for _, run in runs:
        cols = {k: v for k, (_, v) in run["vm"]["cols"].items()}
        assert np.allclose(sum(cols[k] for k in PCT), 100.0)
        assert np.allclose(cols["cpu_utilization"], 100.0 - cols["cpu_idle"])
        assert all((cols[k] >= 0).all() and (cols[k] <= 100).all() for k in PCT)
        assert np.allclose(cols["cpu_efficiency"], (cols["cpu_user_time"] + cols["cpu_system_time"]) / 100.0)


def test_kernel_granularity(runs):
    for _, run in runs:
        cols = {k: v for k, (_, v) in run["vm"]["cols"].items()}
        for k in ("sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_total_seconds"):
            assert np.allclose(cols[k] * legacy_model.HZ, np.round(cols[k] * legacy_model.HZ)), k  # whole jiffies
        assert np.allclose(cols["sys_cpu_total_seconds"], cols["sys_cpu_user_seconds"] + cols["sys_cpu_system_seconds"])
        for k in ("load_average_1min", "load_average_5min", "load_average_15min"):
            assert (cols[k] * 2048 == np.round(cols[k] * 2048)).all() and (cols[k] >= 0).all(), k
        assert (np.round(cols["memory_usage_percent"], 1) == cols["memory_usage_percent"]).all()
        pages = cols["memory_available_gb"] * 1024 ** 3 / 4096
        assert np.allclose(pages, np.round(pages))  # whole pages
        for k in ("sys_context_switches", "sys_processes_created", "process_count", "network_bytes_recv"):
            assert (cols[k] >= 0).all(), k
        assert (cols["sys_procs_running"] >= 1).all()  # the collector itself runs


def test_cpu_counters_never_go_back():
    """The /proc/stat counters behind the shares: each window starts where the last ended, or later."""
    rng = np.random.default_rng(1)
    n = 50
    wm = {"u": rng.uniform(0, 1, n), "system": rng.uniform(0, 0.1, n), "io": rng.uniform(0, 1, n),
          "net": rng.uniform(0, 1, n)}
    leg = {"guest": {"system_scale": 0.1, "iowait_share": 0.02, "irq_share": 0.004, "softirq_share": 0.0004,
                     "steal_share": 0.0025}}
    dt = np.full(n, 1.0)
    counts, begin, end = legacy_model._cpu_times(leg, rng, wm, dt, np.full(n, 0.003), 4)
    assert (counts >= 0).all() and (end - begin == counts).all()
    assert (begin[1:] >= end[:-1]).all()
    # ~HZ ticks per vCPU and second, plus up to 2 of the timer's slack
    assert ((counts.sum(axis=1) >= 400) & (counts.sum(axis=1) <= 402)).all()


def test_timing_of_both_collectors(runs, cfg):
    leg = cfg["legacy"]
    iv = float(leg["interval"])
    for spec, run in runs:
        vm, host = run["vm"], run["host"]
        assert run["version"] == spec.get("collector_version", 2)
        assert (np.diff(vm["abs"]) > 0).all() and (np.diff(host["abs"]) > 0).all()
        assert (vm["delta"] >= iv + float(leg["window_seconds"]["min_extra"]) - 1e-9).all()
        assert vm["rel"][-1] < spec["duration"] + iv and host["rel"][-1] < spec["duration"] + iv
        if run["version"] == 2:  # v2 stamps each sample with its target time on the interval grid
            assert np.allclose(vm["rel"], iv * np.arange(vm["rel"].size))
            # ... on the guest's clock, which is off the orchestrator's by the configured skew
            lo, hi = leg["clock_skew_seconds"]
            skew = vm["iso_t"][0] - vm["rel"][0] - run["start"]
            assert lo - 1e-6 <= abs(skew) <= hi + 1e-6
            assert (vm["abs"] > vm["iso_t"]).all()  # a window ends after its target time
        else:  # v1: measured times; the first two samples are one interval further apart
            assert vm["rel"][0] == 0.0 and np.diff(vm["rel"])[0] > 1.9 * iv
            assert np.array_equal(vm["iso_t"], vm["abs"])


def test_host_readings(runs, cfg):
    lo, hi = cfg["legacy"]["host_vm_absent_samples"]
    for _, run in runs:
        host = run["host"]
        assert set(host["vals"]) == set(HOST_ZONES)
        assert lo <= host["absent"].sum() <= hi
        for z in HOST_ZONES:
            assert host["vals"][z].shape == host["abs"].shape
            truth = run["truth_at_host"][z]
            assert (host["vals"][z] > 0).all() and (host["vals"][z] >= 0.1 * truth - 1e-12).all()  # Kepler: a share of a positive power
        assert (host["vals"]["package"] > host["vals"]["core"]).mean() > 0.9


def test_start_time_follows_the_run_index_and_seed_format(runs, cfg):
    for i, (_, run) in enumerate(runs):
        first = cfg["start_epoch"] + i * cfg["run_spacing_seconds"]
        assert first <= run["start"] < first + cfg["start_jitter_seconds"] + 1
    nt = cfg["node_types"][NT]
    spec = nt["runs"][0]
    a, b = (legacy_model.simulate_run(cfg, NT, nt, spec, i) for i in (0, 3))
    # the run index only moves the session: same draws, start later by the spacing
    assert b["start"] - a["start"] == pytest.approx(3 * cfg["run_spacing_seconds"], abs=1e-6)
    assert _same(a["vm"]["cols"], b["vm"]["cols"]) and _same(a["host"]["vals"], b["host"]["vals"])


def test_deterministic_by_seed(runs, cfg):
    nt = cfg["node_types"][NT]
    spec, run = runs[0]
    assert _same(legacy_model.simulate_run(cfg, NT, nt, spec, 0), run)
    other = legacy_model.simulate_run({**cfg, "seed": cfg["seed"] + 1}, NT, nt, spec, 0)
    assert not np.array_equal(other["vm"]["cols"]["sys_context_switches"][1], run["vm"]["cols"]["sys_context_switches"][1])
    assert other["start"] != run["start"]
    renamed = legacy_model.simulate_run(cfg, NT, nt, {**spec, "id": spec["id"] + "-b"}, 0)
    assert renamed["start"] != run["start"]  # each run of a node type has its own stream
