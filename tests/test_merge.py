import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from test_align import brute_window
from helpers import host_frame, merge_settings, vm_records, write_host_csv, write_host_json, write_vm
from vmpower.pipeline import align, merge
from vmpower.errors import InputError

CONFIG = yaml.safe_load(open("config.yaml"))


def settings(**over):
    return merge_settings(CONFIG, **over)


@pytest.fixture
def run(tmp_path):
    vm = write_vm(tmp_path / "vm_features_t.json", vm_records())
    host_df = host_frame()
    bm = write_host_csv(tmp_path / "bm_power_t.csv", host_df)
    return vm, bm, host_df


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
    # (a NaN feature cell is tolerated and counted since issue 14: tests/test_ingest.py)
    "required feature not numeric": lambda p: p.write_text(
        json.dumps([{**r, "cpu_utilization": "n/a"} for r in vm_records()])
    ),
    "no overlap": lambda p: p.write_text(json.dumps(vm_records(start=1_741_700_000.0))),
}
EXPECT = {
    "truncated array": "truncated JSON array",
    "empty": "empty file",
    "no absolute time": "no absolute time",
    "required feature not numeric": "required feature cpu_utilization is not numeric",
    "no overlap": "no time overlap",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_vm_file_gives_one_line_error(tmp_path, run, case):
    _, bm, _ = run
    vm = tmp_path / "vm_features_bad.json"
    BAD[case](vm)
    with pytest.raises(InputError) as err:
        merge.merge_run(vm, bm, settings(required_features=["cpu_utilization"]))
    assert str(err.value).startswith(str(vm))
    assert EXPECT[case] in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_host_files(tmp_path, run):
    # Since issue 14 only package is required, a NaN power cell skips its host sample and a
    # repeated time with other values drops both rows (all counted); they used to be errors.
    vm, _, host_df = run
    no_package = write_host_csv(tmp_path / "bm_power_nopkg.csv", host_df.drop(columns=["total_cpu_watts_package"]))
    with pytest.raises(InputError, match="missing zone column.*total_cpu_watts_package"):
        merge.merge_run(vm, no_package, settings())
    no_core = write_host_csv(tmp_path / "bm_power_nocore.csv", host_df.drop(columns=["total_cpu_watts_core"]))
    assert merge.merge_run(vm, no_core, settings())[1]["zones"] == ["package", "dram", "uncore"]
    nan = host_df.copy()
    nan.loc[5, "total_cpu_watts_package"] = np.nan
    _, q = merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_nan.csv", nan), settings())
    assert q["host_nan_power_rows"] == 1 and q["host_samples"] == len(host_df) - 1
    back = host_df.copy()
    back.loc[100, "timestamp_iso"] = back.loc[10, "timestamp_iso"]
    _, q = merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_back.csv", back), settings())
    assert q["host_conflicting_rows"] == 2 and q["host_unsorted_rows"] == 1
    assert q["host_samples"] == len(host_df) - 2
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


# ---------------------------------------------------------------- lag + engineering (issue 8)


def test_quality_records_the_lag_between_load_and_power(tmp_path):
    """Host power follows the guest's utilisation 3 s late: the merge reports a ~3 s lag."""
    rng = np.random.default_rng(4)
    n = 240
    util = np.repeat(rng.uniform(5, 95, n // 8), 8)
    start = 1_741_600_000.0
    recs = vm_records(n=n, start=start, util=util)
    vm = write_vm(tmp_path / "vm_features_t.json", recs)
    t_vm = np.array([r["timestamp_absolute"] for r in recs])
    host = host_frame(start=start - 5, seconds=n + 10, watts=lambda t: 10 + 0.5 * np.interp(t - 3.0, t_vm, util))
    bm = write_host_csv(tmp_path / "bm_power_t.csv", host)
    _, q = merge.merge_run(vm, bm, settings())
    assert q["lag"]["feature"] == "cpu_utilization" and q["lag"]["zone"] == "package"
    assert q["lag"]["lag_seconds"] == pytest.approx(3.0, abs=0.6)
    assert q["lag"]["correlation"] > q["lag"]["correlation_at_zero"]


def test_merge_dataset_engineers_windows_and_lag_per_run(tmp_path):
    from vmpower import cli

    rng = np.random.default_rng(5)
    paths, quals = [], []
    for r in ("runA", "runB"):
        n = 120
        util = np.repeat(rng.uniform(5, 95, n // 6), 6)
        t = 1_741_600_000.0 + np.arange(n, dtype=float)
        df = pd.DataFrame({"time": t, "t_rel": t - t[0], "time_delta_seconds": 1.0, "stress_workload": "x",
                           "cpu_utilization": util, "power_package": 10 + np.r_[np.full(2, util[0]), util[:-2]],
                           "power_core": 5.0 + util, "n_host_samples": 10, "time_diff": 0.01})
        p = tmp_path / f"{r}.parquet"
        df.to_parquet(p)
        q = tmp_path / f"{r}.quality.json"
        q.write_text(json.dumps({"lag": {"lag_seconds": 2.0, "correlation": 0.9}}))
        paths.append(str(p))
        quals.append(str(q))
    out, summary = tmp_path / "ds.parquet", tmp_path / "ds.json"
    eng = {"zones": ["package", "core"], "lag_correction": True, "windows": [3], "window_features": ["cpu_*"],
           "min_lag_correlation": 0.5}
    assert cli.main(["merge-dataset", "--inputs", *paths, "--quality-inputs", *quals, "--output", str(out),
                     "--summary", str(summary), "--settings", json.dumps(eng)]) == 0
    data = pd.read_parquet(out)
    rep = json.loads(summary.read_text())["engineering"]
    assert rep["run_lags_seconds"] == {"runA": 2.0, "runB": 2.0} and rep["rows_dropped"] == {"runA": 2, "runB": 2}
    assert "cpu_utilization_mean3s" in data and len(data) == 2 * 118
    for r, g in data.groupby("run_id"):
        # labels now line up with the features; windows restart at each run
        np.testing.assert_allclose(g["power_package"], 10 + g["cpu_utilization"])
        assert g["cpu_utilization_mean3s"].iloc[0] == g["cpu_utilization"].iloc[0]
    # Engineering off: the runs stacked as they are.
    off = {**eng, "lag_correction": False, "windows": []}
    assert cli.main(["merge-dataset", "--inputs", *paths, "--output", str(out), "--summary", str(summary),
                     "--settings", json.dumps(off)]) == 0
    assert len(pd.read_parquet(out)) == 240 and "engineering" not in json.loads(summary.read_text())


# ---------------------------------------------------------------- kepler_interval alignment


def kepler_pair(tmp_path, skew=0.4, n=240, power=lambda u: 2.0 * u):
    """A run where Kepler publishes, every 5 s, the exact mean of ``power(utilisation)`` (default
    2 W per %) over the interval since its last update; the guest clock runs ``skew`` s ahead."""
    rng = np.random.default_rng(11)
    util = np.repeat(rng.uniform(5, 95, n // 4), 4)  # load changes every 4 s
    start = 1_741_600_000.0
    vm = write_vm(tmp_path / "vm_features_k.json", vm_records(n=n, start=start, util=util, skew=skew))
    updates = start + 0.37 + 5.0 * np.arange(-2, n // 5 + 4)
    ends = start + np.arange(1, n + 1)  # true (host-clock) ends of the 1 s sample windows
    means, _ = align.interval_means(ends - 1.0, ends, power(util)[:, None], updates[:-1], updates[1:])
    label = np.nan_to_num(means[:, 0])

    def watts(t):
        j = np.searchsorted(updates, t, side="right") - 2  # value published at the last update
        return np.where(j >= 0, label[np.clip(j, 0, len(label) - 1)], 0.0)

    host_df = host_frame(start=start - 5.0, seconds=n + 12.0, watts=watts)
    return vm, write_host_csv(tmp_path / "bm_power_k.csv", host_df), util


def test_kepler_interval_recovers_offset_and_exact_labels(tmp_path):
    vm, bm, util = kepler_pair(tmp_path, skew=0.4)
    data, q = merge.merge_run(vm, bm, settings(alignment="kepler_interval"))
    k = q["kepler"]
    assert abs(k["clock_offset_seconds"] + 0.4) <= 0.051 and abs(k["median_interval_seconds"] - 5.0) < 0.01
    assert k["offset_correlation"] > 0.99 and q["alignment"] == "kepler_interval"
    # Intervals are ~5 s; each row's feature is the time-weighted mean over the interval its
    # label describes, so label = 2 W x utilisation up to the 0.1 s update-time uncertainty.
    assert np.all(np.abs(data["time_delta_seconds"] - 5.0) < 0.15)
    assert len(data) >= 40 and q["rows_kept"] == len(data)
    err = np.abs(data["power_package"] - 2.0 * data["cpu_utilization"])
    assert err.max() < 0.04 * 2.0 * 90 and err.mean() < 2.0
    # the same data aligned per sample (window) is far off: labels lag the load by up to 5 s
    w, _ = merge.merge_run(vm, bm, settings(alignment="window"))
    assert np.abs(w["power_package"] - 2.0 * w["cpu_utilization"]).mean() > 3 * err.mean()
    np.testing.assert_allclose(data["sys_context_switches_rate"], 1000.0, rtol=1e-9)
    assert q["lag"]["lag_seconds"] > 0  # per-sample lag recorded too


def test_kepler_interval_rejects_host_data_without_steps(run):
    vm, bm, _ = run  # a linear ramp that changes at every 0.1 s host sample
    with pytest.raises(InputError, match=r"bm_power_t\.csv: power changes every 0\.1 s.*use window"):
        merge.merge_run(vm, bm, settings(alignment="kepler_interval"))


def test_auto_alignment_uses_kepler_intervals_only_where_the_host_shows_steps(tmp_path, run):
    vm, bm, _ = kepler_pair(tmp_path)
    _, q = merge.merge_run(vm, bm, settings(alignment="auto"))
    assert q["alignment"] == "kepler_interval" and q["alignment_requested"] == "auto"
    vm2, bm2, _ = run  # host values change at every sample: no Kepler updates to pair with
    data, q2 = merge.merge_run(vm2, bm2, settings(alignment="auto"))
    assert q2["alignment"] == "window" and q2["alignment_requested"] == "auto"
    assert q2["rows_kept"] == len(data) == 59


def test_hinge_basis_is_computed_per_sample_before_interval_averaging(tmp_path):
    # Power convex in utilisation (a knee at 50 %): Kepler's 5 s means of it are not a function
    # of the mean utilisation, but they are linear in the interval means of the per-sample hinge.
    def power(u):
        return 0.3 * u + 0.02 * np.maximum(u - 50.0, 0.0) ** 2

    vm, bm, util = kepler_pair(tmp_path, skew=0.0, power=power)
    s = settings(alignment="kepler_interval", hinges={"cpu_utilization": [50, 70]})
    data, q = merge.merge_run(vm, bm, s)
    assert {"cpu_utilization_hinge50", "cpu_utilization_hinge70"} <= set(q["features"])
    u = data["cpu_utilization"].to_numpy()
    y = data["power_package"].to_numpy()

    def residual(x):
        X = np.column_stack([np.ones_like(u), u, x])
        return np.abs(X @ np.linalg.lstsq(X, y, rcond=None)[0] - y).mean()

    per_sample = residual(data["cpu_utilization_hinge50"].to_numpy())
    of_mean = residual(np.maximum(u - 50.0, 0.0) ** 2)
    assert per_sample < 0.15 and of_mean > 5 * per_sample
    # Jensen: the mean of the convex basis is never below the basis of the mean
    assert np.all(data["cpu_utilization_hinge50"].to_numpy() >= np.maximum(u - 50.0, 0.0) ** 2 - 1e-6)

    # per sample (window alignment) the column is exactly the formula
    w, _ = merge.merge_run(vm, bm, dataclasses.replace(s, alignment="window"))
    np.testing.assert_allclose(w["cpu_utilization_hinge70"], np.maximum(w["cpu_utilization"] - 70.0, 0.0) ** 2)
    # off by default for scripts without a config: no extra columns
    plain, _ = merge.merge_run(vm, bm, settings(alignment="window", hinges={}))
    assert not [c for c in plain.columns if "_hinge" in c]


# ---------------------------------------------------------------- issue 2 review fixes


def test_kepler_interval_match_rate_counts_samples_that_straddle_an_update(tmp_path):
    # 1 s VM samples, 5 s Kepler intervals at .37: every fifth sample straddles an update. Only
    # the samples of dropped intervals (the run's edges) and the rate warm-up are unmatched.
    vm, bm, _ = kepler_pair(tmp_path, skew=0.0)
    data, q = merge.merge_run(vm, bm, settings(alignment="kepler_interval"))
    n, dropped = q["vm_samples"], q["vm_samples_dropped"]
    edge = sum(q["rows_dropped"].values())
    assert set(dropped) <= {"rate_warmup", "low_vm_coverage", "outside_kepler_updates"}, dropped
    assert dropped.get("rate_warmup") == 1 and sum(dropped.values()) == n - q["vm_samples_matched"]
    assert n - q["vm_samples_matched"] <= 1 + 5 * edge + 2
    assert q["match_rate"] == q["vm_samples_matched"] / n > 0.9


def test_merge_csv_keeps_epoch_precision_unique_columns_and_bookkeeping_out(tmp_path, run):
    vm, bm, _ = run
    out = tmp_path / "training_dataset.csv"
    cmd = [sys.executable, "-m", "vmpower", "merge", "--vm-features", str(vm), "--bm-power", str(bm),
           "--output", str(out), "--verbose"]  # merge_datasets.py's --verbose after the options
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    header = out.read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), "duplicate CSV columns"
    assert not {"timestamp", "timestamp_absolute", "collection_interval", "sys_context_switches"} & set(header)
    df = pd.read_csv(out)
    assert df["time"].is_unique and np.allclose(np.diff(df["time"]), 1.0, atol=1e-6)
    np.testing.assert_allclose(df["sys_context_switches_rate"], 1000.0)


def test_utc_offset_setting_aligns_naive_only_with_epoch_only(tmp_path, run):
    vm_naive = tmp_path / "vm_features_n.json"
    write_vm(vm_naive, [{k: v for k, v in r.items() if k != "timestamp_absolute"} for r in vm_records()])
    _, _, host_df = run
    bj = tmp_path / "bm_power_e.json"
    write_host_json(bj, host_df)
    recs = json.loads(bj.read_text())
    bj.write_text(json.dumps([{k: v for k, v in r.items() if k != "timestamp_iso"} for r in recs]))
    with pytest.raises(InputError, match=r"bm_power_e\.json: cannot align.*vm_utc_offset_seconds"):
        merge.merge_run(vm_naive, bj, settings())
    data, q = merge.merge_run(vm_naive, bj, settings(vm_utc_offset_seconds=7200.0))
    ref, _ = merge.merge_run(vm_naive, run[1], settings())  # naive on both sides
    assert q["time_base"] == "epoch" and q["match_rate"] == 1.0
    np.testing.assert_allclose(data["power_package"].to_numpy(), ref["power_package"].to_numpy(), rtol=1e-9)
    # a wrong offset (the other time zone) is caught as no overlap, never silently misaligned
    with pytest.raises(InputError, match="no time overlap"):
        merge.merge_run(vm_naive, bj, settings(vm_utc_offset_seconds=-7200.0))


def test_perf_counters_absent_per_counter_and_per_flagged_sample(tmp_path, run):
    _, bm, _ = run
    recs = vm_records()
    for i, r in enumerate(recs):
        r["page_faults"] = 0  # an older collector without perf: 0 for the whole run
        r["context_switches"] = float(500 + i)  # read from /proc: real values
        if i >= 30:  # perf lost mid-run: counters null, flagged
            r.update(cpu_cycles=None, instructions=0, perf_available=False)
        else:
            r["perf_available"] = True
    vm = write_vm(tmp_path / "vm_features_f.json", recs)
    data, q = merge.merge_run(vm, bm, settings(perf_features=["cpu_cycles", "instructions", "page_faults",
                                                              "context_switches"]))
    assert data["page_faults"].isna().all()
    assert data["context_switches"].notna().all()  # nonzero where flagged: a real reading
    assert len(data) == 59  # rows are samples 1..59 (sample 0: rate warm-up)
    late = data.index >= 29
    assert data.loc[late, ["cpu_cycles", "instructions"]].isna().all().all()
    assert data.loc[~late, ["cpu_cycles", "instructions"]].notna().all().all()
    assert q["vm_perf_available"] is True and q["vm_rows_without_perf"] == 30


def test_host_csv_cut_mid_line_keeps_the_rows_before_it(tmp_path, run):
    vm, bm, host_df = run
    cut = tmp_path / "bm_power_cut.csv"
    text = bm.read_text()
    cut.write_text(text[: len(text) - 30])  # host collector killed mid-line
    data, q = merge.merge_run(vm, cut, settings())
    full, _ = merge.merge_run(vm, bm, settings())
    assert q["host_incomplete_last_line"] == 1 and q["host_samples"] == len(host_df) - 1
    np.testing.assert_allclose(data["power_package"].to_numpy(), full["power_package"].to_numpy()[: len(data)])
    garbage = tmp_path / "bm_power_bad.csv"
    garbage.write_text(text.replace(",1,0.1,", ",1,0.1,extra,", 1) + "\n")  # a bad row in the middle
    with pytest.raises(InputError, match=r"bm_power_bad\.csv: malformed CSV"):
        merge.merge_run(vm, garbage, settings())


def test_the_workflows_limits_bound_the_merge(run):
    """The config's limits section reaches the merge (the workflow passes it in --settings): a
    VM file wider than limits.max_columns is refused in one line before it is parsed."""
    vm, bm, _ = run
    merge.merge_run(vm, bm, settings())  # the schema's defaults accept it
    with pytest.raises(InputError, match=r"more than 5 distinct keys \(limits.max_columns\)") as err:
        merge.merge_run(vm, bm, settings(limits={"max_columns": 5}))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="limits.max_columns"):
        merge.merge_run(vm, bm, settings(limits={"max_columns": 0}))  # validated against the schema
