"""vmframe.py: the steps of the VM feature frame; nothing dropped without a record."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmpower.errors import InputError
from vmpower.pipeline import ingest, vmframe


def test_matches_glob_patterns():
    assert vmframe.matches("cpu_irq", ["cpu_*"]) and not vmframe.matches("sys_forks", ["cpu_*", "net*"])


def test_text_columns_names_examples_and_skips_non_features():
    df = pd.DataFrame({"a": [1.0, 2.0], "host": ["h1", "h2"], "vm_hostname": ["v", "v"], "e": [None, None]})
    assert vmframe.text_columns(df, ["vm_hostname"]) == {"host": "non_numeric (e.g. 'h1')", "e": "non_numeric"}


def test_perf_absent_zero_or_null_runs_become_nan():
    df = pd.DataFrame({"perf_available": [1.0, 1.0, 1.0]})
    feats = pd.DataFrame({"cycles": [0.0, 0.0, 0.0], "instr": [np.nan] * 3, "faults": [1.0, 0.0, 2.0]})
    notes = {}
    allowed = vmframe.perf_absent(df, feats, ["cycles", "instr", "faults"], notes)
    assert not allowed.any()
    assert feats["cycles"].isna().all() and feats["instr"].isna().all()
    assert feats["faults"].tolist() == [1.0, 0.0, 2.0]  # a counter read elsewhere keeps its real zero
    assert notes == {"perf_available": True}


def test_perf_absent_flagged_rows_zeros_mean_not_counted():
    df = pd.DataFrame({"perf_available": [1.0, 0.0, 1.0]})
    feats = pd.DataFrame({"cycles": [5.0, 0.0, 7.0]})
    notes = {}
    allowed = vmframe.perf_absent(df, feats, ["cycles"], notes)
    assert allowed.tolist() == [False, True, False]
    assert feats["cycles"].isna().tolist() == [False, True, False]
    assert notes == {"perf_available": True, "rows_without_perf": 1}


def test_missing_values_records_absent_features_and_drops_samples():
    df = pd.DataFrame(index=range(4))
    feats = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "gone": [np.nan] * 4, "cycles": [1.0, 2.0, np.nan, np.nan]})
    allowed = np.array([False, False, True, False])  # sample 2 is flagged perf_available=false
    notes, dropped = {}, {}
    present, drop = vmframe.missing_values(df, feats, ["a", "gone", "cycles"], ["cycles"], allowed, notes, dropped)
    assert present == ["a", "cycles"]
    assert dropped == {"gone": "all_missing"} and notes["absent_features"] == ["gone"]
    assert notes["missing_feature_cells"] == {"a": 1, "cycles": 1}
    assert drop.isna().tolist() == [True, False, True, False]
    assert set(drop.dropna()) == {"missing_feature"}


def test_sample_times_epoch_else_naive_iso():
    df = pd.DataFrame({"timestamp_absolute": [100.0, 101.0], "time_delta_seconds": [1.0, 1.0]})
    t, window = vmframe.sample_times(ingest.RawTable(Path("vm.json"), df))
    assert t.tolist() == [100.0, 101.0] and window.tolist() == [1.0, 1.0]
    df = pd.DataFrame({"timestamp_iso": ["1970-01-01T00:00:10", "1970-01-01T00:00:11.5"]})
    t, window = vmframe.sample_times(ingest.RawTable(Path("vm.json"), df))
    assert t.tolist() == [10.0, 11.5] and window is None


def test_sample_times_bad_iso_is_one_line():
    df = pd.DataFrame({"timestamp_iso": ["1970-01-01T00:00:10", "yesterday"]})
    with pytest.raises(InputError, match=r"timestamp_iso is not an ISO date-time at row 1: 'yesterday'"):
        vmframe.sample_times(ingest.RawTable(Path("vm.json"), df))
