"""heap.py: data-heavy steps re-execute once with glibc's malloc keeping freed memory."""

import os
import subprocess
import sys

import pytest

from vmpower import heap
from vmpower.paths import REPO


class Exec(Exception):
    pass


@pytest.fixture
def execv(monkeypatch):
    calls = []

    def fake(path, argv):
        calls.append((path, list(argv), {k: os.environ.get(k) for k in heap.TUNING}))
        raise Exec

    for k in heap.TUNING:  # unset here, and as before afterwards (reexec sets them)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setattr(os, "execv", fake)
    return calls


def test_a_merge_starts_again_with_the_same_command_line_and_the_tuning(execv):
    with pytest.raises(Exec):
        heap.reexec("merge")
    assert execv == [(sys.executable, sys.orig_argv, heap.TUNING)]


@pytest.mark.parametrize("command", [None, "serve", "predict", "collect", "train"])
def test_other_commands_run_as_they_are(execv, command):
    heap.reexec(command)
    assert execv == []


def test_a_users_own_setting_wins(execv, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    heap.reexec("merge-dataset")
    assert execv == []


def interpreter_starts(*argv, env=None):
    """How many interpreters `python -X importtime -m vmpower ARGV` started (the flag survives
    the re-exec: sys.orig_argv), and the exit code."""
    given = env or {}
    env = {**{k: v for k, v in os.environ.items() if k not in heap.TUNING}, "PYTHONPATH": str(REPO / "src"), **given}
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "vmpower", *argv], capture_output=True,
                         text=True, env=env, cwd=REPO)
    return sum(line.rstrip().endswith("| site") for line in res.stderr.splitlines()), res.returncode


def test_the_entry_point_reexecutes_a_merge_once():
    assert interpreter_starts("merge", "--help") == (2, 0)
    assert interpreter_starts("--verbose", "merge-dataset", "--help") == (2, 0)
    assert interpreter_starts("merge", "--help", env={"MALLOC_MMAP_THRESHOLD_": "65536"}) == (1, 0)
    assert interpreter_starts("gate", "--help") == (1, 0)
