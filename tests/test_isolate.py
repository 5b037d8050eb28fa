"""isolate.py: idle power per zone and DynPower."""

import json

import pandas as pd
import pytest

from vmpower import cli
from vmpower.pipeline import isolate


def dataset():
    return pd.DataFrame({"run_id": ["idle1", "idle1", "busy", "busy"], "stress_workload": ["idle", "idle", "cpu", "cpu"],
                         "power_package": [10.0, 12.0, 30.0, 9.0], "power_core": [4.0, 6.0, 20.0, 3.0]})


def test_profile_uses_idle_runs_and_clips_below_idle():
    s = isolate.IsolateSettings(method="profile", idle_workloads=["idle"], idle_runs={})
    dyn, info = isolate.isolate(dataset(), "nt", s)
    assert info["idle_power_watts"] == {"package": 11.0, "core": 5.0} and info["idle_runs"] == ["idle1"]
    assert dyn["power_package"].tolist() == [0.0, 1.0, 19.0, 0.0]
    assert info["dyn_clipped_fraction"]["package"] == 0.5


def test_profile_without_idle_run_falls_back_to_min_and_listed_runs_count():
    s = isolate.IsolateSettings(method="profile", idle_workloads=["none"], idle_runs={})
    _, info = isolate.isolate(dataset(), "nt", s)
    assert info["method"] == "min" and info["fallback_reason"] and info["idle_power_watts"]["package"] == 9.0
    listed = isolate.IsolateSettings(method="profile", idle_workloads=["none"], idle_runs={"nt": ["busy"]})
    _, info = isolate.isolate(dataset(), "nt", listed)
    assert info["idle_runs"] == ["busy"] and info["idle_power_watts"]["package"] == 19.5


def test_cli_missing_setting_is_one_line(tmp_path, capsys):
    data = tmp_path / "d.parquet"
    dataset().to_parquet(data)
    args = ["isolate", "--dataset", str(data), "--node-type", "nt", "--abs-output", str(tmp_path / "a.parquet"),
            "--dyn-output", str(tmp_path / "b.parquet"), "--info", str(tmp_path / "i.json")]
    assert cli.main(args + ["--settings", json.dumps({"method": "min", "idle_workloads": []})]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing setting(s) for IsolateSettings: idle_runs" in err
    assert not (tmp_path / "a.parquet").exists()
    assert cli.main(args + ["--config", "config.yaml"]) == 0
    assert json.loads((tmp_path / "i.json").read_text())["requested_method"] == "profile"
