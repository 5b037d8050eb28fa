"""vmpower.collect.stress: workload sequences (the shared grammar), stress-ng step plans, the runner's
timeline and command line, and killing a process group (the collector with real load:
test_collect_features.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from vmpower.collect import stress
from vmpower.collect.stress import Phase, StressRunner, kill_group, parse_sequence, steps
from vmpower.errors import InputError

needs_stress = pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")


def test_sequences():
    assert parse_sequence("cpu_cycling:60,cpu_intensive:45", 600) == [Phase("cpu_cycling", 60),
                                                                      Phase("cpu_intensive", 45)]
    assert parse_sequence("cpu_cycling,cpu_intensive", 480) == [Phase("cpu_cycling", 240),
                                                               Phase("cpu_intensive", 240)]
    # the orchestrator's seed form: cycle for the rest, cpu_intensive for --cpu-intensive-duration
    assert parse_sequence("cycle,cpu_intensive", 800, 120) == [Phase("cpu_cycling", 680),
                                                              Phase("cpu_intensive", 120)]
    assert parse_sequence("idle", 30) == [Phase("idle", 30)]
    with pytest.raises(InputError, match="unknown workload 'bogus'"):
        parse_sequence("cpu_intensive,bogus", 10)
    with pytest.raises(InputError, match="bad duration"):
        parse_sequence("cpu_intensive:abc", 10)


def test_cpu_cycling_goes_up_to_100_and_back_down():
    plan = steps("cpu_cycling", 100, cpus=2)
    loads = [int(a[a.index("--cpu-load") + 1]) if a else 0 for a, _ in plan]
    assert loads[:11] == list(range(0, 101, 10))
    assert loads[11:20] == list(range(90, 0, -10))
    assert sum(length for _, length in plan) == pytest.approx(100)


def test_bursty_alternates_15s_high_and_low():
    plan = steps("bursty_workload", 60, cpus=2)
    assert [length for _, length in plan] == [15, 15, 15, 15]
    assert [a is not None for a, _ in plan] == [True, False, True, False]


def test_every_seed_workload_has_a_plan():
    from vmpower.collect.stress import WORKLOADS

    for name in WORKLOADS:
        plan = steps(name, 10, cpus=2)
        assert sum(length for _, length in plan) == pytest.approx(10)


def test_sequence_edge_cases():
    assert parse_sequence("", 30) == parse_sequence(None, 30) == [Phase("none", 30)]  # no spec: no load
    assert parse_sequence("cpu_intensive", None) == [Phase("cpu_intensive", float("inf"))]  # until stopped
    assert parse_sequence("idle,cpu_intensive", None) == [Phase("idle", 60), Phase("cpu_intensive", 60)]
    assert parse_sequence("mixed:5, bursty", 20) == [Phase("mixed_workload", 5), Phase("bursty_workload", 15)]
    # --cpu-intensive-duration fills only an open cpu_intensive, never a given length
    assert parse_sequence("cpu_intensive:30,idle", 100, 50) == [Phase("cpu_intensive", 30), Phase("idle", 70)]
    with pytest.raises(InputError) as err:
        parse_sequence("cpu_intensive:0", 10)
    assert str(err.value).startswith("--stress-workload: duration for cpu_intensive must be > 0")
    with pytest.raises(InputError) as err:
        parse_sequence("cpu", 10)
    assert str(err.value) == ("--stress-workload: unknown workload 'cpu' (known: " + ", ".join(stress.WORKLOADS) + ")")


def test_list_workloads_is_one_aligned_line_per_workload():
    lines = stress.list_workloads().splitlines()
    assert [line.split()[0] for line in lines] == list(stress.WORKLOADS)
    width = max(map(len, stress.WORKLOADS))
    assert all(line[width:width + 2] == "  " and line[width + 2] != " " for line in lines)
    assert all(stress.ALIASES[a] in stress.WORKLOADS for a in stress.ALIASES)


def test_step_plans_use_the_given_cpus():
    assert steps("idle", 7, cpus=4) == [(None, 7)]
    assert steps("cpu_intensive", 7, cpus=4) == [(["--cpu", "4", "--cpu-method", "all"], 7)]
    (mem, _), = steps("memory_intensive", 7, cpus=4)
    assert mem[:2] == ["--vm", "2"]  # half the CPUs
    (mat, _), = steps("matrix_computation", 7, cpus=1)
    assert mat[:4] == ["--matrix", "1", "--cpu", "1"]  # never 0 workers on one CPU
    # an endless phase: one cycle (the runner restarts it with a finite --timeout)
    plan = steps("cpu_cycling", float("inf"), cpus=2)
    assert len(plan) == 20 and all(length == 5.0 for _, length in plan)
    assert steps("bursty_workload", float("inf"), cpus=2) == [(["--cpu", "2", "--cpu-method", "all"], 15.0)]


def test_a_stress_workload_needs_stress_ng_but_idle_does_not(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no stress-ng anywhere
    with pytest.raises(InputError, match=r"^stress-ng: not found on PATH \(install the stress-ng package\)$"):
        StressRunner([Phase("idle", 5), Phase("cpu_intensive", 5)], 10)
    runner = StressRunner([Phase("idle", 5), Phase("none", 5)], 10)
    assert not runner.needs_stress and runner.stress_ng is None


def test_idle_phases_loop_on_the_timeline_until_the_run_ends():
    runner = StressRunner([Phase("idle", 0.15), Phase("none", 0.15)], 0.5, stress_ng="/nonexistent")
    t0 = time.monotonic()
    runner.start()
    runner._thread.join(5)
    assert not runner._thread.is_alive() and 0.45 <= time.monotonic() - t0 < 3
    names = [name for _, name in runner.timeline]
    assert names[:3] == ["idle", "none", "idle"] and set(names) == {"idle", "none"}
    starts = [t for t, _ in runner.timeline]
    assert starts == sorted(starts) and runner.started_pids == []


def test_workload_between_picks_the_longest_overlap():
    runner = StressRunner([Phase("idle", 1)], 10)
    assert runner.workload_between(0, 1) == "idle"  # not started: the first phase
    runner.timeline = [(0.0, "a"), (10.0, "b"), (12.0, "c")]
    assert runner.workload_between(9.0, 13.0) == "b"  # a 1 s, b 2 s, c 1 s
    assert runner.workload_between(11.5, 14.0) == "c"
    assert runner.workload_between(-5.0, -1.0) == "a"  # before the start: the first
    assert runner.workload_between(100.0, 101.0) == "c"


@pytest.mark.stress
@needs_stress
def test_the_runner_starts_stress_ng_in_its_own_group_and_stops_it(tmp_path):
    runner = StressRunner([Phase("branch_intensive", 2.0)], 2.0, temp_dir=str(tmp_path))
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not runner.started_pids and time.monotonic() < deadline:
            time.sleep(0.02)
        (pid,) = runner.started_pids
        proc = psutil.Process(pid)
        assert proc.cmdline() == [runner.stress_ng, "--branch", str(stress._cpus()), "--timeout", "2s",
                                  "--temp-path", str(tmp_path), "--quiet"]
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session: one killpg stops all
    finally:
        runner.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not runner._thread.is_alive()


def _group(script: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(psutil.Process(proc.pid).children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def _members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter():
        try:
            if _pgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_kill_group_stops_the_leader_and_its_children():
    proc = _group("sleep 60 & sleep 60 & wait")
    assert len(_members(proc.pid)) == 3
    kill_group(proc, grace=3.0)
    # SIGTERM was enough (how long the group takes to vanish depends on when init reaps the orphans)
    assert proc.returncode == -signal.SIGTERM and _members(proc.pid) == []


def test_kill_group_escalates_to_sigkill_after_the_grace():
    proc = _group("trap '' TERM; sleep 60 & wait")  # SIG_IGN is inherited: the sleep ignores TERM too
    t0 = time.monotonic()
    kill_group(proc, grace=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert proc.returncode == -signal.SIGKILL and _members(proc.pid) == []
    kill_group(proc, grace=0.3)  # already gone: no error
