"""serving/validate_sources.py: the exporter and host series `vmpower validate` compares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vmpower.errors import InputError
from vmpower.serving import validate_sources as vs


def test_is_url():
    assert vs.is_url("http://h:1/metrics") and vs.is_url("https://h") and not vs.is_url("file.csv")


def test_rates_are_watts_at_interval_middles_and_resets_are_counted():
    t = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    j = pd.DataFrame({"package": [0.0, 20.0, 40.0, 5.0, 25.0]})
    out, resets = vs.rates(t, j)
    assert resets == 1
    assert out["t"].tolist() == [1.0, 3.0, 7.0] and out["package"].tolist() == [10.0, 10.0, 10.0]


def test_exporter_scrape_sums_per_zone():
    text = ('# TYPE kepler_node_cpu_watts gauge\nkepler_node_cpu_watts{zone="package",x="1"} 3.5\n'
            'kepler_node_cpu_watts{zone="package",x="2"} 1.5\n'
            '# TYPE kepler_node_cpu_joules counter\nkepler_node_cpu_joules_total{zone="core"} 100\n'
            'other_metric{zone="core"} 9\n')
    assert vs.exporter_scrape(text) == {"watts": {"package": 5.0}, "joules": {"core": 100.0}}


def test_from_wide_needs_two_readings_and_counts_incomplete_ones():
    with pytest.raises(InputError) as exc:
        vs.from_wide("x.csv", np.array([1.0]), pd.DataFrame({"package": [1.0]}), "watts", {})
    assert str(exc.value) == "x.csv: only 1 usable reading(s): nothing to compare"
    s = vs.from_wide("x", np.array([0.0, 1.0]), pd.DataFrame({"package": [1.0, np.nan]}), "watts", {"rows": 2})
    assert s.notes == {"rows": 2, "incomplete_readings": 1} and s.zones == ["package"]
    j = vs.from_wide("x", np.array([0.0, 1.0, 2.0]), pd.DataFrame({"core": [0.0, 3.0, 1.0]}), "joules", {})
    assert j.notes["counter_resets"] == 1 and j.frame["core"].tolist() == [3.0]


def test_exporter_file_power_columns_sorted_by_time(tmp_path):
    p = tmp_path / "exp.csv"
    pd.DataFrame({"timestamp_absolute": [2.0, 1.0, np.nan, 3.0], "power_package": [20, 10, 5, "x"]}).to_csv(p, index=False)
    s = vs.exporter_file(p)
    assert s.frame["t"].tolist() == [1.0, 2.0, 3.0]
    assert s.frame["package"].tolist()[:2] == [10.0, 20.0] and np.isnan(s.frame["package"].iloc[2])
    assert s.notes == {"rows": 3, "empty_cells": 1, "incomplete_readings": 1}


@pytest.mark.parametrize("body, problem", [
    (None, "file not found"),
    ("a,b\n1,2\n", "no timestamp_absolute column (epoch seconds of each scrape)"),
    ("timestamp_absolute,watts\n1,2\n2,3\n", "no joules_<zone> or power_<zone> columns"),
    ('timestamp_absolute,"power_package\n1,2\n', None),
])
def test_exporter_file_errors_are_one_line_naming_the_file(tmp_path, body, problem):
    p = tmp_path / "exp.csv"
    if body is not None:
        p.write_text(body)
    with pytest.raises(InputError) as exc:
        vs.exporter_file(p)
    assert exc.value.path == str(p) and "\n" not in str(exc.value)
    if problem:
        assert exc.value.problem == problem


def test_save_round_trips_through_exporter_file(tmp_path):
    s = vs.Series("x", pd.DataFrame({"t": [1.0, 2.0, 3.0], "package": [1.25, 2.5, 3.75]}))
    vs.save(s, str(tmp_path / "s.csv"), "power_")
    back = vs.exporter_file(tmp_path / "s.csv")
    pd.testing.assert_frame_equal(back.frame, s.frame)


def test_host_file_reads_the_collectors_csv_and_refuses_one_without_epoch_times(tmp_path):
    t = 1_741_600_000.0 + np.arange(6.0)
    df = pd.DataFrame({"timestamp_absolute": t, "total_cpu_watts_package": 10 + np.arange(6.0),
                       "total_cpu_watts_core": 5 + np.arange(6.0)})
    df.loc[2, "timestamp_absolute"] = np.nan
    df.to_csv(tmp_path / "bm_power_x.csv", index=False)
    s = vs.host_file(tmp_path / "bm_power_x.csv")
    assert s.zones == ["package", "core"]
    assert s.frame["t"].tolist() == [t[0], t[1], t[3], t[4], t[5]]
    assert s.frame["package"].tolist() == [10.0, 11.0, 13.0, 14.0, 15.0]
    assert s.notes["rows"] == 6 and s.notes["rows_without_time"] == 1 and s.notes["empty_cells"] == 0
    df.drop(columns="timestamp_absolute").to_csv(tmp_path / "bm_power_y.csv", index=False)
    with pytest.raises(InputError) as exc:
        vs.host_file(tmp_path / "bm_power_y.csv")
    assert str(exc.value).startswith(f"{tmp_path / 'bm_power_y.csv'}: no timestamp_absolute")
