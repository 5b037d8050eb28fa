"""tidy.py: repairs a user can live with, each counted; bad input stays a one-line error."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmpower.errors import InputError
from vmpower.pipeline import ingest, tidy


def raw(df, notes=None):
    return ingest.RawTable(Path("f.csv"), df, dict(notes or {}))


def test_sort_dedupe_sorts_drops_duplicates_and_conflicts():
    t = np.array([3.0, 1.0, 2.0, 2.0, 4.0, 4.0, 5.0])
    df = pd.DataFrame({"t": t, "v": [30.0, 10.0, 20.0, 20.0, 40.0, 41.0, 50.0]})
    out, times = tidy.sort_dedupe(raw(df, {"x": 1}), {"epoch": t, "naive": t + 7200}, "epoch")
    assert out.df["v"].tolist() == [10.0, 20.0, 30.0, 50.0]  # 2.0 twice equal: one kept; 4.0 conflicting: both gone
    np.testing.assert_array_equal(times["epoch"], [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_array_equal(times["naive"], times["epoch"] + 7200)
    assert out.notes == {"x": 1, "unsorted_rows": 1, "duplicate_rows": 1, "conflicting_rows": 2}


def test_sort_dedupe_leaves_clean_rows_alone():
    t = np.arange(5.0)
    df = pd.DataFrame({"v": t * 2})
    out, times = tidy.sort_dedupe(raw(df), {"epoch": t}, "epoch")
    assert out.df is df and out.notes == {}
    assert times["epoch"] is t


def test_sort_dedupe_all_conflicting_is_an_error():
    t = np.zeros(3)
    with pytest.raises(InputError, match="no rows left"):
        tidy.sort_dedupe(raw(pd.DataFrame({"v": [1.0, 2.0, 3.0]})), {"epoch": t}, "epoch")


def power_frame(package, dram):
    return pd.DataFrame({"total_cpu_watts_package": package, "total_cpu_watts_dram": dram})


def test_usable_power_skips_nan_rows_and_empty_optional_zones():
    df = power_frame([1.0, np.nan, 3.0, 4.0], [np.nan] * 4)
    t = np.arange(4.0)
    out, times, zones = tidy.usable_power(raw(df), {"epoch": t}, ["package", "dram"], ["package"])
    assert zones == ["package"]
    assert out.notes == {"zones_all_missing": ["dram"], "nan_power_rows": 1}
    assert out.df["total_cpu_watts_package"].tolist() == [1.0, 3.0, 4.0]
    np.testing.assert_array_equal(times["epoch"], [0.0, 2.0, 3.0])


def test_usable_power_refuses_an_empty_required_zone_in_one_line():
    df = power_frame([np.inf] * 3, [1.0, 2.0, 3.0])
    with pytest.raises(InputError) as err:
        tidy.usable_power(raw(df), {"epoch": np.arange(3.0)}, ["package", "dram"], ["package"])
    msg = str(err.value)
    assert "total_cpu_watts_package has no power value in any of its 3 rows" in msg and "\n" not in msg


def test_usable_power_needs_two_samples():
    df = power_frame([1.0, np.nan], [1.0, 1.0])
    with pytest.raises(InputError, match="only 1 host samples"):
        tidy.usable_power(raw(df), {"epoch": np.arange(2.0)}, ["package", "dram"], ["package"])
