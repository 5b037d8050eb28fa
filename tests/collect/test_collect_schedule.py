"""Scheduler (no drift), workload sequences and the stress-ng step plans."""

from __future__ import annotations

import random
import time

import pytest

from vmpower.collect.common import Schedule
from vmpower.collect.stress import Phase, parse_sequence, steps
from vmpower.errors import InputError


class FakeClock:
    def __init__(self):
        self.t = 1000.0
        self.rng = random.Random(7)

    def __call__(self):
        return self.t

    def wait(self, seconds):
        # sleeps overshoot by up to 15 ms, like a loaded kernel
        self.t += seconds + self.rng.uniform(0, 0.015)
        return False


def test_one_hour_at_one_second_has_3600_samples_without_drift():
    clock = FakeClock()
    sched = Schedule(1.0, 3600.0, clock=clock, wait=clock.wait)
    ticks = []
    for t in sched.ticks():
        ticks.append(t)
        clock.t += clock.rng.uniform(0.02, 0.3)  # the work done per sample
    windows = len(ticks) - 1  # a sample is the window between two ticks
    assert abs(windows - 3600) <= 1
    # every tick stays within the jitter of its absolute deadline: no accumulated drift
    offsets = [t - (ticks[0] + k) for k, t in enumerate(ticks)]
    assert max(offsets) < 0.02 and min(offsets) >= 0
    assert sched.skipped == 0


def test_relative_sleeping_drifts_which_is_why_it_is_not_the_default():
    clock = FakeClock()
    sched = Schedule(1.0, 3600.0, clock=clock, wait=clock.wait, absolute=False)
    n = 0
    for _ in sched.ticks():
        n += 1
        clock.t += 0.1
    assert n - 1 < 3590  # --no-sync: sleep overshoot accumulates, samples are lost over an hour


def test_stall_skips_missed_deadlines_instead_of_bursting():
    clock = FakeClock()
    sched = Schedule(1.0, 20.0, clock=clock, wait=clock.wait)
    ticks = []
    for t in sched.ticks():
        ticks.append(t)
        if len(ticks) == 5:
            clock.t += 4.5  # e.g. the VM was paused
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    # no burst of back-to-back samples after the stall: the next tick is back on the grid
    assert min(gaps) > 0.9
    assert all(abs((t - ticks[0]) - round(t - ticks[0])) < 0.02 for t in ticks)
    assert sched.skipped >= 3
    assert ticks[-1] - ticks[0] <= 20.0 + 0.02


def test_late_start_joins_the_grid_and_keeps_the_end():
    clock = FakeClock()
    start = clock.t - 2.3  # the common start instant passed while this side was starting up
    sched = Schedule(1.0, 10.0, clock=clock, wait=clock.wait)
    ticks = list(sched.ticks(start))
    assert ticks[0] == pytest.approx(start + 3, abs=0.02)
    assert ticks[-1] == pytest.approx(start + 10, abs=0.02)
    assert len(ticks) - 1 == 7


def test_real_clock_short_run_keeps_the_grid():
    sched = Schedule(0.1, 1.5)
    ticks = [t for t in sched.ticks()]
    assert len(ticks) - 1 == 15
    assert all(abs((t - ticks[0]) - 0.1 * k) < 0.03 for k, t in enumerate(ticks))


def test_stop_ends_the_iteration_promptly():
    sched = Schedule(10.0, None)
    it = sched.ticks()
    next(it)
    sched.stop()
    t0 = time.monotonic()
    assert list(it) == []
    assert time.monotonic() - t0 < 0.5


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
