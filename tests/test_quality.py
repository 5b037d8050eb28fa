"""quality.py: the run's merge judged (kept share, warnings) and its report."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vmpower.errors import InputError
from vmpower.pipeline import ingest, quality


def test_kept_reads_samples_or_intervals():
    assert quality.kept({"vm_samples": 10, "rows_kept": 7, "rows_dropped": {"a": 3}}) == (7, 10, {"a": 3})
    q = {"vm_samples": 10, "rows_kept": 2, "vm_samples_matched": 8, "vm_samples_dropped": {"b": 2}}
    assert quality.kept(q) == (8, 10, {"b": 2})


def test_check_kept_counts_only_samples_in_the_host_range():
    q = {"vm_samples": 100, "rows_kept": 45, "rows_dropped": {"outside_host_range": 50, "no_host_power": 5}}
    quality.check_kept(q, 0.8, Path("vm.json"), Path("bm.csv"))
    assert q["vm_samples_kept_fraction"] == 0.45
    assert q["vm_samples_kept_fraction_in_host_range"] == 0.9


def test_check_kept_fails_in_one_line_with_top_reasons():
    q = {"vm_samples": 100, "rows_kept": 50,
         "rows_dropped": {"below_min_power": 30, "missing_feature": 20, "outside_host_range": 0}}
    with pytest.raises(InputError) as err:
        quality.check_kept(q, 0.8, Path("/d/vm.json"), Path("/d/bm.csv"))
    msg = str(err.value)
    assert "\n" not in msg and "/d/vm.json" in msg
    assert "kept only 50 of the 100 VM samples" in msg and "(50.0%" in msg
    assert "top drop reasons: below_min_power=30, missing_feature=20" in msg


def test_top_reasons_order_and_empty():
    assert quality.top_reasons({"b": 2, "a": 2, "c": 5, "d": 1}) == "c=5, a=2, b=2"
    assert quality.top_reasons({}) == "none recorded"


def test_warnings_in_stable_order():
    q = {"match_rate": 0.85, "time_diff_mean": 0.25, "vm_unsorted_rows": 3, "host_nan_power_rows": 2,
         "vm_missing_feature_cells": {"cpu_irq": 4}, "host_zones_all_missing": ["dram"],
         "vm_features_dropped": {"branches": "perf_not_counted", "vm_hostname": "non_numeric"}}
    got = quality.warnings(q, {"min_match_rate": 0.9, "max_time_diff_mean_seconds": 0.2})
    assert got == [
        "match rate 85.0% not above 90%",
        "mean time diff 0.250 s not below 0.2 s",
        "vm file: unsorted rows 3",
        "host file: nan power rows 2",
        "vm file: feature cpu_irq missing in 4 samples (dropped)",
        "host file: zone(s) dram empty, not modelled",
        "feature vm_hostname dropped: non_numeric",
    ]
    assert quality.warnings({"match_rate": 0.95, "time_diff_mean": 0.1}, {"min_match_rate": 0.9,
                                                                          "max_time_diff_mean_seconds": 0.2}) == []


def test_report_fields():
    run = SimpleNamespace(
        t_vm=np.array([10.0, 11.0, 12.0]), dt_vm=np.array([1.0, 1.0, 1.0]), t_host=np.array([9.5, 12.5]),
        vm_raw=ingest.RawTable(Path("/x/vm.json"), None, {"incomplete_last_line": 1}),
        host_raw=ingest.RawTable(Path("/x/bm.csv"), None, {"repeated_headers": 1}),
        vm_notes={"vm_features_dropped": {}}, base="epoch", zones=["package"], feature_names=["f"],
        vm_times={"epoch": np.array([0.0, 1.0]), "naive": np.array([7200.0, 7201.0])}, host_times={"epoch": np.zeros(2)},
    )
    q = quality.report(run, "window", 0.5, {"rows_kept": 3})
    assert q["vm_file"] == "vm.json" and q["host_file"] == "bm.csv" and q["rows_kept"] == 3
    assert (q["vm_samples"], q["host_samples"]) == (3, 2)
    assert (q["vm_span_seconds"], q["host_span_seconds"], q["overlap_seconds"]) == (2.0, 3.0, 2.5)
    assert q["vm_incomplete_last_line"] == 1 and q["host_repeated_headers"] == 1 and q["vm_features_dropped"] == {}
    assert q["vm_utc_offset_seconds"] == 7200.0 and "host_utc_offset_seconds" not in q
    assert q["vm_clock_offset_seconds"] == 0.5
