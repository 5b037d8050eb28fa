"""vmpower.lifeline, in this process where harmless (no build watched) and in child processes where a
step must die (tests/test_faults_build.py has the end-to-end cases with real vmpower steps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from vmpower import lifeline

ENV = {k: v for k, v in os.environ.items() if k != lifeline.ENV}


@pytest.fixture
def no_build(monkeypatch):
    monkeypatch.delenv(lifeline.ENV, raising=False)
    monkeypatch.setattr(lifeline, "_watched", [])


def test_token_names_this_process_on_this_machine():
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    machine, pid, start = lifeline.token().rsplit(":", 2)
    assert machine == f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    assert int(pid) == os.getpid()
    assert int(start) == int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert lifeline.token(child.pid).rsplit(":", 2)[1:] != lifeline.token().rsplit(":", 2)[1:]
    finally:
        child.kill()
        child.wait()
    assert lifeline.token(child.pid).endswith(":None")  # gone: no start time


def test_arm_outside_a_build_watches_nothing(no_build):
    lifeline.arm()
    assert lifeline._watched == [] and lifeline.alive()
    lifeline.check()  # returns: nothing to end


@pytest.mark.parametrize("value", ["", "garbage", "a:b:c", "0f0f0f0f-0000-0000-0000-000000000000:pid:[1]:{pid}:{start}"],
                         ids=["empty", "garbage", "non-numeric", "other-machine"])
def test_a_build_elsewhere_or_unreadable_is_not_watched(no_build, monkeypatch, value):
    _, pid, start = lifeline.token().rsplit(":", 2)
    monkeypatch.setenv(lifeline.ENV, value.format(pid=pid, start=start))
    lifeline.arm()
    assert lifeline._watched == [] and lifeline.alive()


def _python(script: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=ENV, capture_output=True,
                          text=True, timeout=30, **kw)


def test_an_armed_step_dies_when_a_watched_process_ends():
    res = _python("""
        import subprocess, time
        from vmpower import lifeline
        dep = subprocess.Popen(["sleep", "30"])
        lifeline.arm(dep.pid)
        print("armed", flush=True)
        dep.kill(); dep.wait()
        time.sleep(10)
        print("outlived", flush=True)
    """)
    assert res.returncode == -signal.SIGKILL
    assert res.stdout == "armed\n"
    assert "the build's process" in res.stderr and "publishes nothing" in res.stderr


def test_arming_on_a_process_already_gone_ends_the_step_at_once():
    t0 = time.monotonic()
    res = _python("""
        import subprocess
        from vmpower import lifeline
        dep = subprocess.Popen(["true"]); dep.wait()
        lifeline.arm(dep.pid)
        print("ran on", flush=True)
    """)
    assert res.returncode == -signal.SIGKILL and res.stdout == ""
    assert time.monotonic() - t0 < 10


def test_die_with_parent_kills_the_child_when_its_parent_ends():
    """middle starts `sleep` with die_with_parent; killing middle kills the sleep."""
    middle = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, subprocess, time
        from vmpower import lifeline
        me = os.getpid()
        child = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: lifeline.die_with_parent(parent=me))
        print(child.pid, flush=True)
        time.sleep(60)
    """)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(middle.stdout.readline()))
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        middle.kill()
        middle.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            child.kill()
            pytest.fail("the child outlived its parent")
    finally:
        middle.kill()
        middle.wait()


def test_die_with_parent_exits_a_child_whose_parent_has_already_changed():
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: lifeline.die_with_parent(parent=-1))
    assert proc.wait(timeout=10) == 1  # exited before exec: sleep never ran
