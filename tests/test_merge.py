import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import host_frame, vm_records, write_host_csv, write_host_json, write_vm
from vmpower import merge
from vmpower.errors import InputError

CONFIG = yaml.safe_load(open("config.yaml"))


def settings(**over):
    s = merge.MergeSettings.from_config(CONFIG)
    for k, v in over.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def run(tmp_path):
    vm = write_vm(tmp_path / "vm_features_t.json", vm_records())
    host_df = host_frame()
    bm = write_host_csv(tmp_path / "bm_power_t.csv", host_df)
    return vm, bm, host_df


def brute_window(t_vm, dt, t_host, p):
    out = []
    for t, d in zip(t_vm, dt):
        sel = (t_host > t - d) & (t_host <= t)
        out.append(p[sel].mean() if sel.any() else np.nan)
    return np.array(out)


def test_window_alignment_matches_brute_force():
    rng = np.random.default_rng(1)
    t_host = np.sort(rng.uniform(0, 100, 3000))
    p = rng.uniform(0, 50, (3000, 2))
    t_vm = np.sort(rng.uniform(1, 99, 200))
    dt = rng.uniform(0.5, 1.5, 200)
    mean, count = merge.align_window(t_vm, dt, t_host, p)
    np.testing.assert_allclose(mean[:, 1], brute_window(t_vm, dt, t_host, p[:, 1]), rtol=1e-12)
    assert (count > 0).all()


def seed_nearest(t_vm, t_host, p, tol):
    """The original merge_datasets.py method: scan for the nearest host sample within tolerance."""
    out = []
    for t in t_vm:
        best, best_d = None, None
        for j, th in enumerate(t_host):
            d = abs(th - t)
            if d <= tol and (best_d is None or d < best_d):
                best, best_d = j, d
        out.append(p[best] if best is not None else np.nan)
    return np.array(out)


def test_nearest_alignment_matches_seed_method():
    rng = np.random.default_rng(2)
    t_host = np.sort(rng.uniform(0, 50, 400))
    p = rng.uniform(0, 50, (400, 1))
    t_vm = np.sort(rng.uniform(-1, 51, 80))
    values, ok = merge.align_nearest(t_vm, t_host, p, 0.05)
    ref = seed_nearest(t_vm, t_host, p[:, 0], 0.05)
    np.testing.assert_array_equal(np.isnan(values[:, 0]), np.isnan(ref))
    np.testing.assert_allclose(values[ok > 0, 0], ref[~np.isnan(ref)])


def test_merge_csv_uses_naive_local_times(run):
    vm, bm, host_df = run
    data, q = merge.merge_run(vm, bm, settings())
    assert q["time_base"] == "naive"  # host CSV has only naive local ISO times
    assert q["vm_utc_offset_seconds"] == 7200.0
    # Expected power: window mean of the host's linear ramp, computed on epoch seconds.
    t_host = host_df.attrs["epoch"]
    recs = vm_records()
    t_vm = np.array([r["timestamp_absolute"] for r in recs])
    expect = brute_window(t_vm, np.ones_like(t_vm), t_host, host_df["total_cpu_watts_package"].to_numpy())
    # first sample has no rate for the cumulative counter
    assert q["rows_dropped"] == {"rate_warmup": 1}
    np.testing.assert_allclose(data["power_package"].to_numpy(), expect[1:], rtol=1e-6)
    assert "sys_context_switches_rate" in data and np.allclose(data["sys_context_switches_rate"], 1000.0)
    assert q["match_rate"] == 1.0 and q["time_diff_max"] < 0.06


def test_merge_host_json_uses_epoch_and_same_result(tmp_path, run):
    vm, bm, host_df = run
    bj = write_host_json(tmp_path / "bm_power_t.json", host_df)
    a, qa = merge.merge_run(vm, bm, settings())
    b, qb = merge.merge_run(vm, bj, settings())
    assert qb["time_base"] == "epoch"
    np.testing.assert_allclose(a["power_core"], b["power_core"], rtol=1e-9)


def test_jsonl_with_cut_last_line_is_read(tmp_path, run):
    _, bm, _ = run
    path = write_vm(tmp_path / "vm_features_k.json", vm_records(), form="lines")
    path.write_bytes(path.read_bytes()[:-40])  # killed mid-write
    data, q = merge.merge_run(path, bm, settings())
    assert q["vm_incomplete_last_line"] == 1
    assert q["vm_samples"] == 59


def test_perf_zero_for_whole_run_becomes_absent(tmp_path, run):
    _, bm, _ = run
    vm = write_vm(tmp_path / "vm_features_p.json", vm_records(perf=False))
    data, q = merge.merge_run(vm, bm, settings())
    assert q["vm_perf_available"] is False
    assert data["cpu_cycles"].isna().all() and data["instructions"].isna().all()


def test_clock_offset_setting_shifts_guest_time(tmp_path):
    # Guest clock 3 s ahead: without the offset the windows read the wrong host samples.
    vm = write_vm(tmp_path / "vm_features_s.json", vm_records(skew=3.0))
    step = host_frame(watts=lambda t: np.where(t < 1_741_600_030.0, 10.0, 90.0))
    bm = write_host_csv(tmp_path / "bm_power_s.csv", step)
    fixed, _ = merge.merge_run(vm, bm, settings(vm_clock_offset_seconds=-3.0))
    raw, _ = merge.merge_run(vm, bm, settings())
    t_true = fixed["time"].to_numpy()
    assert np.all(fixed["power_package"][t_true <= 1_741_600_029.9] == 10.0)
    assert (raw["power_package"] != fixed["power_package"]).sum() >= 3


BAD = {
    "truncated array": lambda p: p.write_text(json.dumps(vm_records())[:-300]),
    "empty": lambda p: p.write_text(""),
    "no absolute time": lambda p: p.write_text(
        json.dumps([{k: v for k, v in r.items() if k not in ("timestamp_absolute", "timestamp_iso")} for r in vm_records()])
    ),
    "NaN feature": lambda p: p.write_text(
        json.dumps([{**r, "cpu_utilization": None if i == 7 else r["cpu_utilization"]} for i, r in enumerate(vm_records())])
    ),
    "no overlap": lambda p: p.write_text(json.dumps(vm_records(start=1_741_700_000.0))),
}
EXPECT = {
    "truncated array": "truncated JSON array",
    "empty": "empty file",
    "no absolute time": "no absolute time",
    "NaN feature": "feature cpu_utilization has 1 NaN",
    "no overlap": "no time overlap",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_vm_file_gives_one_line_error(tmp_path, run, case):
    _, bm, _ = run
    vm = tmp_path / "vm_features_bad.json"
    BAD[case](vm)
    with pytest.raises(InputError) as err:
        merge.merge_run(vm, bm, settings())
    assert str(err.value).startswith(str(vm))
    assert EXPECT[case] in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_host_files(tmp_path, run):
    vm, _, host_df = run
    no_core = write_host_csv(tmp_path / "bm_power_nocore.csv", host_df.drop(columns=["total_cpu_watts_core"]))
    with pytest.raises(InputError, match="missing zone column.*total_cpu_watts_core"):
        merge.merge_run(vm, no_core, settings())
    nan = host_df.copy()
    nan.loc[5, "total_cpu_watts_package"] = np.nan
    with pytest.raises(InputError, match=r"total_cpu_watts_package has 1 NaN.*row 5"):
        merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_nan.csv", nan), settings())
    back = host_df.copy()
    back.loc[100, "timestamp_iso"] = back.loc[10, "timestamp_iso"]
    with pytest.raises(InputError, match="go backwards"):
        merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_back.csv", back), settings())
    optional = write_host_csv(tmp_path / "bm_power_nodram.csv", host_df.drop(columns=["total_cpu_watts_dram"]))
    data, q = merge.merge_run(vm, optional, settings())
    assert q["zones"] == ["package", "core", "uncore"]


def test_cli_keeps_seed_options_and_leaves_nothing_on_error(tmp_path, run):
    vm, bm, _ = run
    out = tmp_path / "training_dataset.csv"
    cmd = [sys.executable, "-m", "vmpower", "merge", "--vm-features", str(vm), "--bm-power", str(bm),
           "--output", str(out), "--time-tolerance", "0.5", "--min-power-threshold", "0.001", "--power-zone", "core"]
    subprocess.run(cmd, check=True, capture_output=True)
    df = pd.read_csv(out)
    assert {"power_watts", "time_diff", "cpu_utilization"} <= set(df.columns)
    np.testing.assert_allclose(df["power_watts"], df["power_core"])

    bad = tmp_path / "vm_features_bad.json"
    bad.write_text("[{\"timestamp\": 1")
    out2 = tmp_path / "never.parquet"
    res = subprocess.run(cmd[:5] + [str(bad)] + cmd[6:8] + ["--output", str(out2)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and str(bad) in res.stderr
    assert not out2.exists() and not list(tmp_path.glob(".never*"))
