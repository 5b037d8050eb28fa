"""serving/validate_align.py: interpolation without bridging gaps, bin means, clock-skew search, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vmpower.serving import validate_align as va

CFG = va.ValidateSettings(max_mape_percent=10.0, max_abs_bias_watts=1.0, min_samples=3, mape_min_watts=0.5,
                          bin_seconds=5.0, max_clock_skew_seconds=2.0, exporter_series="joules",
                          window_seconds=300.0, scrape_interval_seconds=1.0)


def frame(t, **zones):
    return pd.DataFrame({"t": np.asarray(t, dtype="float64"), **{z: np.asarray(v, dtype="float64") for z, v in zones.items()}})


def test_on_grid_interpolates_and_never_bridges_a_gap():
    f = frame([0, 1, 2, 3, 20, 21], package=[0, 10, 20, 30, 40, 50])
    got = va.on_grid(f, ["package"], np.array([0.5, 3.0, 10.0, 20.5, -1.0, 22.0]))[:, 0]
    assert got[:2].tolist() == [5.0, 30.0]
    assert np.isnan(got[2]) and got[3] == 45.0 and np.isnan(got[4]) and np.isnan(got[5])


def test_on_grid_zone_with_fewer_than_two_readings_is_nan():
    f = frame([0, 1, 2], package=[1, 2, 3], core=[np.nan, 5, np.nan])
    got = va.on_grid(f, ["package", "core"], np.array([1.5]))
    assert got[0, 0] == 2.5 and np.isnan(got[0, 1])


def test_bin_means_of_a_line_are_its_bin_centres():
    f = frame(np.arange(0, 31), package=2 * np.arange(0, 31))
    got = va.bin_means(f, ["package"], 0.0, 3, 10.0)
    np.testing.assert_allclose(got["package"], [10.0, 30.0, 50.0])
    half = va.bin_means(f, ["package"], 25.0, 2, 10.0)  # second bin [35, 45) has no data
    assert half["package"].iloc[0] == pytest.approx(55.0) and np.isnan(half["package"].iloc[1])


def test_pair_counts_the_common_window():
    e = frame(np.arange(0, 60, 1.0), package=np.full(60, 5.0))
    h = frame(np.arange(10, 100, 0.5), package=np.full(180, 5.0))
    e_bins, h_bins, counts = va.pair(e, h, ["package"], 5.0, 0.0)
    assert counts["bins"] == 9 and counts["matched_bins"] == 9 and counts["window_start"] == 10.0
    assert counts["overlap_seconds"] == 45.0
    assert counts["exporter_readings_outside_window"] == 10 + 4  # t < 10 and t > 55
    assert counts["host_readings_outside_window"] == int((np.arange(10, 100, 0.5) > 55).sum())
    assert va.pair(e, frame([100, 101], package=[1, 1]), ["package"], 5.0, 0.0) is None


def signal(t):
    return 20 + 10 * np.sin(t / 7.0) + 3 * np.sin(t / 2.3)


def test_best_shift_recovers_a_clock_offset_and_is_zero_without_skew():
    th = np.arange(0, 200, 0.1)
    te = np.arange(0, 200, 1.0)
    host = frame(th, package=signal(th))
    exp = frame(te - 0.7, package=signal(te))  # exporter clock 0.7 s behind
    assert va.best_shift(exp, host, ["package"], 5.0, 2.0) == pytest.approx(0.7)
    assert va.best_shift(exp, host, ["package"], 5.0, 0.0) == 0.0
    same = frame(te, package=signal(te))
    assert va.best_shift(same, host, ["package"], 5.0, 2.0) == 0.0  # ties and equal fits: the smallest offset


def test_score_verdicts_ok_drift_and_insufficient():
    h = pd.DataFrame({"package": [10.0, 10.0, 10.0, 10.0], "core": [0.1, 0.2, 4.0, np.nan], "dram": [1.0, np.nan, np.nan, np.nan]})
    e = pd.DataFrame({"package": [10.5, 9.5, 10.5, 9.5], "core": [0.3, 0.4, 6.0, 1.0], "dram": [1.0, 1.0, 1.0, 1.0]})
    got = va.score(e, h, CFG)
    p = got["package"]
    assert (p["verdict"], p["samples"], p["mae_watts"], p["bias_watts"], p["mape_percent"]) == ("ok", 4, 0.5, 0.0, 5.0)
    c = got["core"]
    assert c["samples"] == 3 and c["mape_samples"] == 1 and c["mape_percent"] == pytest.approx(50.0)
    assert c["bias_watts"] == pytest.approx(0.8) and c["verdict"] == "drift"
    assert c["reasons"] == ["MAPE 50.0 % > 10 %"]
    d = got["dram"]
    assert d["verdict"] == "insufficient" and d["reasons"] == ["1 matched samples < min_samples 3"]


def test_score_bias_reason_and_no_mape_below_the_floor():
    h = pd.DataFrame({"core": [0.1, 0.2, 0.3]})
    e = pd.DataFrame({"core": [1.4, 1.5, 1.6]})
    c = va.score(e, h, CFG)["core"]
    assert c["mape_percent"] is None and c["mape_samples"] == 0
    assert c["reasons"] == ["|bias| 1.30 W > 1 W"] and c["verdict"] == "drift"
    empty = va.score(pd.DataFrame({"core": [np.nan]}), pd.DataFrame({"core": [1.0]}), CFG)["core"]
    assert empty["samples"] == 0 and empty["mae_watts"] is None and empty["verdict"] == "insufficient"
