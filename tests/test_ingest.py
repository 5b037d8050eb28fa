"""Real collector output in (issue 14): counter semantics from the data, damage tolerated and
counted, no silent data loss, zones following the data. Fixtures are small hand-made files in
the seed collectors' formats (never the real runs)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import host_frame, iso_local, merge_settings, vm_records, write_host_csv, write_vm
from vmpower.pipeline import counters, merge
from vmpower.errors import InputError

CONFIG = yaml.safe_load(open("config.yaml"))
START = 1_757_500_000.0


def settings(**over):
    return merge_settings(CONFIG, **over)


def seed_records(n=120, seed=3):
    """What the seed's guest collector writes: perf counters 0 (perf off), /proc/stat counters
    as the increase during each ~1 s sample (sys_cpu_user_seconds 0.0, 0.01, …), relative
    ``timestamp``, ``time_delta_seconds`` the sample's own window."""
    rng = np.random.default_rng(seed)
    t = START + np.cumsum(rng.uniform(1.001, 1.005, n))
    dt = rng.uniform(1.0000, 1.0003, n)
    util = np.clip(np.repeat(rng.uniform(0, 90, n // 10 + 1), 10)[:n] + rng.normal(0, 3, n), 0, 100)
    user = np.round(util / 100 * 4 * dt, 2)  # 4 vCPUs, 10 ms ticks
    system = np.round(rng.choice([0.0, 0.01], n, p=[0.8, 0.2]), 2)
    cs = np.round(80 + 9 * util + rng.normal(0, 15, n)).astype(int)
    iso = iso_local(t)
    recs = []
    for i in range(n):
        recs.append({
            "timestamp": float(t[i] - t[0]), "timestamp_absolute": float(t[i]), "timestamp_iso": iso[i],
            "cpu_cycles": 0, "instructions": 0, "cache_references": 0, "cache_misses": 0, "branches": 0,
            "branch_misses": 0, "page_faults": 0, "context_switches": 0,
            "cpu_utilization": float(util[i]), "memory_usage_percent": 14.3 + 0.1 * (i % 5),
            "instructions_per_cycle": 0.0, "cache_miss_ratio": 0.0, "branch_miss_ratio": 0.0,
            "sys_cpu_user_seconds": float(user[i]), "sys_cpu_system_seconds": float(system[i]),
            "sys_cpu_total_seconds": float(user[i] + system[i]), "sys_context_switches": int(cs[i]),
            "sys_processes_created": int(rng.integers(0, 3)), "sys_procs_running": int(1 + i % 3),
            "collection_interval": 1.0, "time_delta_seconds": float(dt[i]), "vm_hostname": "fedora",
        })
    return recs


def seed_host(recs, zones=("core", "package"), interval=0.5):
    """What the seed's host collector writes: relative timestamp, naive local ISO time, one
    column per zone, vm_count, collection_interval, vm_filter as a Python set."""
    t_vm = np.array([r["timestamp_absolute"] for r in recs])
    util = np.array([r["cpu_utilization"] for r in recs])
    t = np.arange(t_vm[0] - 2.0, t_vm[-1] + 2.0, interval)
    watts = 0.2 + 0.05 * np.interp(t, t_vm, util)
    df = pd.DataFrame({"timestamp": t - t[0], "timestamp_iso": iso_local(t)})
    for k, z in enumerate(zones):
        df[f"total_cpu_watts_{z}"] = watts * (1.0 + 0.5 * k)
    df["vm_count"] = 1
    df["collection_interval"] = interval
    df["vm_filter"] = "{'fedora40'}"
    df.attrs["epoch"] = t
    return df


@pytest.fixture
def seed(tmp_path):
    recs = seed_records()
    host = seed_host(recs)
    return (write_vm(tmp_path / "vm_features_training_1.json", recs),
            write_host_csv(tmp_path / "bm_power_training_1.csv", host), recs, host)


# ---------------------------------------------------------------- counter semantics


def test_seed_format_counters_are_per_interval_and_no_sample_is_lost(seed):
    vm, bm, recs, _ = seed
    data, q = merge.merge_run(vm, bm, settings())
    assert q["rows_kept"] == q["vm_samples"] == len(recs) and q["rows_dropped"] == {}
    fields = ["sys_context_switches", "sys_cpu_system_seconds", "sys_cpu_total_seconds", "sys_cpu_user_seconds",
              "sys_processes_created"]
    assert q["vm_counter_semantics"] == {f: "per_interval" for f in fields}
    assert q["vm_counter_decisions"]["sys_context_switches"]["decided_by"] == "data"
    assert "goes down in" in q["vm_counter_decisions"]["sys_context_switches"]["reason"]
    dt = np.array([r["time_delta_seconds"] for r in recs])
    for f in ("sys_cpu_user_seconds", "sys_context_switches"):
        np.testing.assert_allclose(data[f"{f}_rate"], np.array([r[f] for r in recs]) / dt, rtol=1e-12)
    assert data["cpu_cycles"].isna().all()  # perf off: absent, not zero
    assert q["vm_features_dropped"]["cpu_cycles"] == "perf_not_counted"
    assert q["vm_samples_kept_fraction"] == 1.0


def cumulative_records(reset_at=None):
    recs = vm_records(n=60)
    for i, r in enumerate(recs):
        r["sys_context_switches"] = 5.0e6 + 1000.0 * i
        if reset_at is not None and i >= reset_at:  # the guest rebooted: the counter starts again
            r["sys_context_switches"] = 200.0 + 1000.0 * (i - reset_at)
    return recs


def test_cumulative_counter_gives_its_rate_and_a_real_reset_drops_one_row(tmp_path, seed):
    _, _, recs, host = seed
    bm = write_host_csv(tmp_path / "bm_power_c.csv", host_frame())
    vm = write_vm(tmp_path / "vm_features_c.json", cumulative_records(reset_at=30))
    data, q = merge.merge_run(vm, bm, settings())
    assert q["vm_counter_semantics"] == {"sys_context_switches": "cumulative"}
    assert q["vm_counter_decisions"]["sys_context_switches"]["decreases"] == 1
    assert q["rows_dropped"] == {"counter_reset": 1, "rate_warmup": 1}
    assert q["rows_kept"] == 58 and len(data) == 58
    np.testing.assert_allclose(data["sys_context_switches_rate"], 1000.0)


def test_config_forces_the_semantics_per_field(tmp_path):
    bm = write_host_csv(tmp_path / "bm_power_c.csv", host_frame())
    vm = write_vm(tmp_path / "vm_features_c.json", cumulative_records())
    data, q = merge.merge_run(vm, bm, settings(counter_semantics={"sys_context_*": "per_interval"}))
    d = q["vm_counter_decisions"]["sys_context_switches"]
    assert d["semantics"] == "per_interval" and d["decided_by"] == "config"
    assert q["rows_dropped"] == {}  # no rate warm-up for a per-interval field
    np.testing.assert_allclose(data["sys_context_switches_rate"], 5.0e6 + 1000.0 * np.arange(60))


# ---------------------------------------------------------------- no silent data loss


def forced_cumulative_config(tmp_path):
    cfg = yaml.safe_load(open("config.yaml"))
    cfg["ingest"]["counter_semantics"] = {"sys_*": "cumulative"}  # the old, wrong assumption
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_min_kept_fraction_fails_the_run_with_one_line(tmp_path, seed):
    vm, bm, _, _ = seed
    out = tmp_path / "x.parquet"
    cmd = [sys.executable, "-m", "vmpower", "merge", "--vm-features", str(vm), "--bm-power", str(bm),
           "--output", str(out), "--quality", str(tmp_path / "q.json")]
    res = subprocess.run(cmd + ["--config", str(forced_cumulative_config(tmp_path))], capture_output=True, text=True)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert str(vm) in line and "bm_power_training_1.csv" in line
    assert "merge.min_kept_fraction 80%" in line and "top drop reasons: counter_reset=" in line
    kept = int(line.split("kept only ")[1].split()[0])
    assert kept < 0.8 * 120 and f"({kept / 120:.1%}" in line
    assert not out.exists() and not (tmp_path / "q.json").exists()
    # the data-driven default keeps every sample
    ok = subprocess.run(cmd + ["--config", "config.yaml"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "q.json").read_text())["vm_samples_kept_fraction"] == 1.0


def test_seed_quality_indicators_become_warnings(tmp_path, seed):
    vm, _, recs, host = seed
    short = write_host_csv(tmp_path / "bm_power_short.csv", host.iloc[: len(host) * 3 // 4])
    data, q = merge.merge_run(vm, short, settings())
    assert 0.5 < q["match_rate"] < 0.9
    assert q["warnings"] == [f"match rate {q['match_rate']:.1%} not above 90%"]
    # samples the host file does not cover are coverage (min_match_rate), not a merge loss
    assert q["rows_dropped"] == {"outside_host_range": len(recs) - len(data)}
    assert q["vm_samples_kept_fraction_in_host_range"] == 1.0
    _, q2 = merge.merge_run(vm, short, settings(quality_warnings={"min_match_rate": 0.5,
                                                                  "max_time_diff_mean_seconds": 0.01}))
    assert q2["warnings"] == [f"mean time diff {q2['time_diff_mean']:.3f} s not below 0.01 s"]


# ---------------------------------------------------------------- damage tolerated and counted


def test_host_duplicates_unsorted_rows_and_repeated_header(tmp_path, seed):
    vm, bm, _, host = seed
    clean, _ = merge.merge_run(vm, bm, settings())
    plain = pd.DataFrame(host)
    plain.attrs = {}
    messy = pd.concat([plain, plain.iloc[[10, 11, 40]]])  # exact duplicates, appended out of order
    messy = messy.iloc[np.r_[np.arange(0, 20), 21, 20, np.arange(22, len(messy))]]  # one swapped pair
    text = messy.to_csv(index=False)
    lines = text.splitlines(keepends=True)
    cut = len(lines) // 2  # two collector outputs concatenated: the header again mid-file
    damaged = tmp_path / "bm_power_training_d.csv"
    damaged.write_text("".join(lines[:cut] + [lines[0]] + lines[cut:]))
    data, q = merge.merge_run(vm, damaged, settings())
    assert q["host_repeated_headers"] == 1 and q["host_duplicate_rows"] == 3
    assert q["host_unsorted_rows"] == 2  # the swapped pair and the appended duplicates
    assert q["host_samples"] == len(host)
    pd.testing.assert_frame_equal(data, clean)
    assert "host file: duplicate rows 3" in q["warnings"]


def test_vm_duplicates_unsorted_and_conflicting_rows(tmp_path, seed):
    _, bm, recs, _ = seed
    clean, _ = merge.merge_run(write_vm(tmp_path / "vm_features_c.json", recs), bm, settings())
    messy = list(recs)
    messy[50], messy[51] = messy[51], messy[50]
    messy.insert(80, dict(recs[79]))  # an exact duplicate
    conflict = {**recs[100], "cpu_utilization": 55.5}  # same time, other values: which one is right?
    messy.insert(messy.index(recs[100]) + 1, conflict)
    data, q = merge.merge_run(write_vm(tmp_path / "vm_features_m.json", messy), bm, settings())
    assert q["vm_unsorted_rows"] == 1 and q["vm_duplicate_rows"] == 1 and q["vm_conflicting_rows"] == 2
    assert q["vm_samples"] == len(recs) - 1
    assert len(clean) == len(recs)
    expect = clean.drop(index=100).reset_index(drop=True)
    pd.testing.assert_frame_equal(data, expect)


def test_nan_power_cells_are_skipped_and_counted(tmp_path, seed):
    vm, _, _, host = seed
    holes = host.copy()
    holes.loc[[30, 31, 90], "total_cpu_watts_package"] = np.nan
    data, q = merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_n.csv", holes), settings())
    ref, _ = merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_r.csv", host.drop(index=[30, 31, 90])),
                             settings())
    assert q["host_nan_power_rows"] == 3 and q["host_samples"] == len(host) - 3
    pd.testing.assert_frame_equal(data, ref)
    empty = host.assign(total_cpu_watts_package=np.nan)
    with pytest.raises(InputError, match=r"bm_power_e\.csv: column total_cpu_watts_package has no power value") as err:
        merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_e.csv", empty), settings())
    assert "\n" not in str(err.value)


def test_feature_nan_cells_drop_their_samples(tmp_path, seed):
    _, bm, recs, _ = seed
    holes = [{**r, "cpu_utilization": None} if i in (7, 8) else r for i, r in enumerate(recs)]
    data, q = merge.merge_run(write_vm(tmp_path / "vm_features_h.json", holes), bm, settings())
    assert q["rows_dropped"] == {"missing_feature": 2} and q["vm_missing_feature_cells"] == {"cpu_utilization": 2}
    assert data["cpu_utilization"].notna().all() and len(data) == len(recs) - 2


# ---------------------------------------------------------------- features never vanish silently


def test_non_numeric_and_empty_features_are_recorded(tmp_path, seed):
    _, bm, recs, _ = seed
    odd = [{**r, "memory_usage_percent": "high", "cpu_utilization": None} for r in recs]
    data, q = merge.merge_run(write_vm(tmp_path / "vm_features_o.json", odd), bm, settings())
    dropped = q["vm_features_dropped"]
    assert dropped["memory_usage_percent"] == "non_numeric (e.g. 'high')"
    assert dropped["cpu_utilization"] == "all_missing"
    assert "memory_usage_percent" not in data and data["cpu_utilization"].isna().all()
    assert "feature memory_usage_percent dropped: non_numeric (e.g. 'high')" in q["warnings"]
    assert "feature cpu_utilization dropped: all_missing" in q["warnings"]
    strings = [{**r, "cpu_utilization": "n/a"} for r in recs]
    path = write_vm(tmp_path / "vm_features_s.json", strings)
    with pytest.raises(InputError, match=r"vm_features_s\.json: required feature cpu_utilization is not numeric"):
        merge.merge_run(path, bm, settings(required_features=["cpu_utilization"]))


# ---------------------------------------------------------------- zones follow the data


@pytest.mark.parametrize("zones", [("package",), ("package", "dram")])
def test_zones_follow_the_data(tmp_path, zones):
    from vmpower import cli
    from vmpower.pipeline import isolate

    paths, quals = [], []
    for k in range(2):
        recs = seed_records(seed=10 + k)
        run = tmp_path / f"run{k}"
        vm = write_vm(run / "vm_features_training_1.json", recs)
        bm = write_host_csv(run / "bm_power_training_1.csv", seed_host(recs, zones=zones))
        out, q = run / f"run{k}.parquet", run / f"run{k}.quality.json"
        assert cli.main(["merge", "--vm-features", str(vm), "--bm-power", str(bm), "--output", str(out),
                         "--quality", str(q), "--config", "config.yaml"]) == 0
        assert json.loads(q.read_text())["zones"] == list(zones)
        paths.append(str(out))
        quals.append(str(q))
    ds, summary = tmp_path / "ds.parquet", tmp_path / "ds.json"
    assert cli.main(["merge-dataset", "--inputs", *paths, "--quality-inputs", *quals, "--output", str(ds),
                     "--summary", str(summary), "--config", "config.yaml"]) == 0
    summary = json.loads(summary.read_text())
    assert summary["zones"] == list(zones)
    assert summary["counter_semantics"]["sys_context_switches"] == "per_interval"
    data = pd.read_parquet(ds)
    assert [c for c in data.columns if c.startswith("power_")] == [f"power_{z}" for z in zones]
    idle, _ = isolate.idle_power(data, "min", ["idle"], [])
    assert set(idle) == set(zones)


def test_required_zones_default_is_package_only(tmp_path, seed):
    vm, _, _, host = seed
    assert CONFIG["required_zones"] == ["package"] == settings().required_zones
    no_package = write_host_csv(tmp_path / "bm_power_np.csv", host.drop(columns=["total_cpu_watts_package"]))
    with pytest.raises(InputError, match=r"bm_power_np\.csv: missing zone column\(s\) total_cpu_watts_package"):
        merge.merge_run(vm, no_package, settings())


def test_unsorted_cumulative_counter_is_sorted_before_its_rate(tmp_path):
    recs = cumulative_records()
    recs[20], recs[21] = recs[21], recs[20]
    bm = write_host_csv(tmp_path / "bm_power_c.csv", host_frame())
    data, q = merge.merge_run(write_vm(tmp_path / "vm_features_u.json", recs), bm, settings())
    assert q["vm_unsorted_rows"] == 1 and q["rows_dropped"] == {"rate_warmup": 1}
    np.testing.assert_allclose(data["sys_context_switches_rate"], 1000.0)


def test_an_empty_optional_zone_is_left_out(tmp_path, seed):
    vm, _, _, _ = seed
    host = seed_host(seed_records(), zones=("package", "dram"))
    _, q = merge.merge_run(vm, write_host_csv(tmp_path / "bm_power_z.csv", host.assign(total_cpu_watts_dram=np.nan)),
                           settings())
    assert q["zones"] == ["package"] and q["host_zones_all_missing"] == ["dram"]
    assert "host file: zone(s) dram empty, not modelled" in q["warnings"]
