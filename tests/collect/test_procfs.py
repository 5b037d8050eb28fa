"""vmpower.collect.procfs: /proc snapshots and the OS metrics of the window between two."""

import pytest

from vmpower.collect import procfs
from vmpower.errors import InputError


def test_proc_stat_fields_and_a_file_without_the_cpu_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 1 5 100 2 0 1\ncpu0 10 1 5 100 2 0 1\nintr 77 1 2\nctxt 500\nprocesses 42\n"
                    "procs_running 3\nprocs_blocked 1\n")
    got = procfs.read_proc_stat(str(stat))
    assert got["cpu"] == {"user": 10, "nice": 1, "system": 5, "idle": 100, "iowait": 2, "irq": 0, "softirq": 1,
                          "steal": 0}  # a short cpu line is padded with 0
    assert (got["intr"], got["ctxt"], got["processes"], got["procs_running"], got["procs_blocked"]) == (77, 500, 42, 3, 1)
    stat.write_text("ctxt 500\n")
    with pytest.raises(InputError, match="no aggregate 'cpu' line") as err:
        procfs.read_proc_stat(str(stat))
    assert str(stat) in str(err.value)


def test_delta_is_unknown_for_a_wrapped_or_missing_counter():
    assert procfs.delta(5, 8) == 3
    assert procfs.delta(8, 5) is None and procfs.delta(None, 5) is None
    assert procfs.ratio(1, 4) == 0.25 and procfs.ratio(1, 0) is None and procfs.ratio(None, 2) is None


def test_os_features_of_two_real_snapshots_are_window_rates():
    clock = iter([100.0, 102.0])
    a = procfs.take_snapshot(lambda: next(clock))
    b = procfs.take_snapshot(lambda: next(clock))
    out = procfs.os_features(a, b)
    for name, total_of in procfs.SYS_RATES.items():
        assert out[name] == pytest.approx((total_of(b) - total_of(a)) / 2.0)
    shares = sum(out[k] for k in ("cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq",
                                  "cpu_softirq", "cpu_steal", "cpu_idle"))
    assert shares == pytest.approx(100.0, abs=0.01) or shares == 0.0  # no jiffies in the window: all 0
    assert 0.0 <= out["cpu_utilization"] <= 100.0 and out["process_count"] > 0
