"""engineer.py: lag estimate, hinge basis, causal windows, the dataset step."""

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower.errors import InputError
from vmpower.pipeline import engineer

CONFIG = yaml.safe_load(open("config.yaml"))


def test_estimate_lag_recovers_a_known_shift():
    rng = np.random.default_rng(4)
    t = np.arange(300.0)
    x = np.repeat(rng.uniform(0, 100, 60), 5)
    y = np.r_[np.full(3, x[0]), x[:-3]]  # y follows x by 3 s
    info = engineer.estimate_lag(t, x, y, 15.0)
    assert info["lag_seconds"] == 3.0 and info["correlation"] > 0.99


def test_rolling_means_are_causal_and_restart_per_run():
    df = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 3, "time": [0.0, 1, 2, 3, 0, 1, 2],
                       "x": [1.0, 2, 3, 4, 10, 20, 30]})
    out = engineer.rolling_means(df, ["x"], [2.0])
    assert out["x_mean2s"].tolist() == [1.0, 1.5, 2.5, 3.5, 10.0, 15.0, 25.0]


def test_names_round_trip():
    assert engineer.hinge_base(engineer.hinge_name("cpu", 70.0)) == ("cpu", 70.0)
    assert engineer.window_base(engineer.window_name("cpu", 3.0)) == ("cpu", 3.0)
    assert engineer.hinge_knots(["cpu_hinge50", "cpu_hinge60", "x"]) == {"cpu": [50.0, 60.0]}


def test_settings_come_from_the_config_only():
    s = engineer.settings_from(CONFIG)
    assert s == {k: CONFIG["features"][k] for k in engineer.KEYS}
    assert engineer.settings_from({"windows": [3]}) == {"windows": [3]}  # no defaults added
    with pytest.raises(InputError, match=r"^x: missing feature engineering setting\(s\) lag_correction, min_lag"):
        engineer.engineer_dataset(pd.DataFrame(), {}, {"windows": [], "window_features": []}, "x")


def test_engineer_dataset_off_leaves_the_data_and_on_adds_windows():
    df = pd.DataFrame({"run_id": ["a"] * 3, "time": [0.0, 1, 2], "t_rel": [0.0, 1, 2], "time_delta_seconds": 1.0,
                       "stress_workload": "x", "cpu": [1.0, 2, 3], "power_package": [5.0, 6, 7],
                       "n_host_samples": 1, "time_diff": 0.0})
    off = {"lag_correction": False, "windows": [], "window_features": ["*"], "min_lag_correlation": 0.5}
    same, report = engineer.engineer_dataset(df, {}, off)
    assert report is None and same is df
    on, report = engineer.engineer_dataset(df, {"a": {}}, {**off, "windows": [2]})
    assert list(on.columns)[-2:] == ["n_host_samples", "time_diff"] and on["cpu_mean2s"].tolist() == [1.0, 1.5, 2.5]
    assert report["windows_seconds"] == [2.0]
