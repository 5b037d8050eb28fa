"""demo.simulate: the latent load and true-power model of the demo data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmpower.demo import simulate
from vmpower.demo.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(CONFIG)


def test_ema_is_the_first_order_recursion():
    x = np.random.default_rng(1).standard_normal(2000)
    alpha, y0 = 0.01, 3.0
    want, prev = np.empty_like(x), y0
    for i, v in enumerate(x):  # the definition, one step at a time
        prev = alpha * v + (1 - alpha) * prev
        want[i] = prev
    np.testing.assert_allclose(simulate.ema(x, alpha, y0), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(simulate.ema(x, 1.0, y0), x)


def test_rng_for_is_stable_and_keyed():
    a = simulate.rng_for(7, "nt", "run1", "run").standard_normal(4)
    np.testing.assert_array_equal(a, simulate.rng_for(7, "nt", "run1", "run").standard_normal(4))
    assert not np.array_equal(a, simulate.rng_for(7, "nt", "run2", "run").standard_normal(4))
    assert not np.array_equal(a, simulate.rng_for(8, "nt", "run1", "run").standard_normal(4))


def test_window_means_are_exact_for_piecewise_constant_signals():
    step = 0.5
    edges = np.arange(0.0, 5.5, step)
    v = np.arange(10.0)  # value i on [i*step, (i+1)*step)
    got = simulate.window_means(edges, step, {"v": v}, np.array([0.0, 1.25]), np.array([1.0, 2.0]))["v"]
    np.testing.assert_allclose(got, [0.5, (0.25 * 2 + 0.5 * 3) / 0.75])


def test_phases_follow_the_sequence(cfg):
    assert simulate.phases("idle:30,cpu_intensive:20", 70) == [
        ("idle", 0.0, 30.0), ("cpu_intensive", 30.0, 50.0), ("idle", 50.0, 70.0)]
    assert simulate.phases("idle,cpu_intensive", 60) == [("idle", 0.0, 30.0), ("cpu_intensive", 30.0, 60.0)]


def test_latent_load_and_power(cfg):
    step = float(cfg["latent_step_seconds"])
    grid = np.arange(0.0, 200.0, step)
    lat = simulate.latent(cfg, simulate.phases("idle:100,cpu_intensive:100", 200), grid, 0.0, simulate.rng_for(1, "t"))
    assert ((lat["u"] >= 0) & (lat["u"] <= 1)).all()
    idle, busy = grid < 100, grid >= 100
    assert lat["uw"][idle].max() == 0.0 and lat["uw"][busy].mean() > 0.5  # only background while idle
    names = list(cfg["workloads"])
    assert set(lat["widx"][busy]) == {names.index("cpu_intensive")}
    nt = next(iter(cfg["node_types"].values()))
    p = simulate.true_power(lat, nt["power"])
    pw = nt["power"]
    np.testing.assert_allclose(p["package"], p["core"] + p["uncore"] + pw["other_base_w"] + pw["other_w"] * lat["u"])
    assert p["core"][busy].mean() > 3 * p["core"][idle].mean()
