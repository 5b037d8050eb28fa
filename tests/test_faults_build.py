"""Fault suite, build side (issue 19): a build killed at any point resumes with the same command
and ends byte-identical to an uninterrupted one; no step outlives its build, and a step whose
build has ended publishes nothing."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from vmpower.ops import buildstate

from vmpower import lifeline
from workflow import _env, make_workspace, planned_jobs, snakemake, tree_digest

pytestmark = pytest.mark.fault

BUILD_STATE = (".snakemake", "results", "logs", "benchmarks")
ENV = {k: v for k, v in os.environ.items() if k not in (lifeline.ENV, "VMPOWER_WORKER", "SLURM_JOB_ID")}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A small demo (one node_type, one feature group, a linear and a tree trainer), not built."""
    ws = make_workspace(tmp_path_factory.mktemp("template"))
    cfg = yaml.safe_load((ws / "config.yaml").read_text())
    cfg["train"].update({"feature_groups": ["Full"], "trainers": ["LinearRegression", "XGBRegressor"]})
    (ws / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for nt in sorted(p for p in (ws / "data/raw").iterdir() if p.is_dir())[1:]:
        shutil.rmtree(nt)
    return ws


def copy_of(template, dest):
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns(*BUILD_STATE))
    return dest


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory):
    """The results of an uninterrupted build."""
    ws = copy_of(template, tmp_path_factory.mktemp("ref") / "ws")
    snakemake(ws, "--cores", "2", worker=True)
    return tree_digest(ws / "results")


def build_command(worker):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2"]
    return [sys.executable, "-m", "vmpower", "worker", "run", "--", *cmd] if worker else cmd


def start(ws, worker):
    return subprocess.Popen(build_command(worker), cwd=ws, env=_env(ws), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(ws, proc, pattern, timeout=120):
    deadline = time.monotonic() + timeout
    while not list(ws.glob(pattern)):
        assert proc.poll() is None, f"the build ended before {pattern} appeared"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.05)


def children(proc, word):
    return [c for c in psutil.Process(proc.pid).children() if word in " ".join(c.cmdline())]


def build_processes(ws):
    """Processes of a build in ws (the wrapper, the worker, snakemake, job shells, steps)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["cwd"] == str(ws) and ("vmpower" in cmd or "snakemake" in cmd) \
                and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _cmd(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def is_step(p):
    """A job's shell, a step (or its client), a step forked by the worker (not the worker itself)."""
    cmd = _cmd(p)
    if "worker serve" in cmd:  # the worker is its wrapper's child; a step the worker's (or an orphan)
        parent = p.parent()
        return parent is None or "worker run" not in _cmd(parent)
    return "--provenance" in cmd


def assert_all_gone(ws, steps_within=2.0, all_within=15.0):
    """The steps die at once; the wrapper and the worker shut down after."""
    for which, timeout in ((is_step, steps_within), (lambda p: True, all_within)):
        deadline = time.monotonic() + timeout
        while (alive := [p for p in build_processes(ws) if which(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive, [_cmd(p)[:150] for p in alive]


def training_in(server):
    """The worker's children training a model now (their stdout is a train log)."""
    found = []
    for child in server.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "/logs/train/" in os.readlink(f"/proc/{child.pid}/fd/1"):
                found.append(child)
        except (OSError, psutil.Error):
            pass
    return found


def temp_files(root):
    return [p for p in Path(root).rglob("*") if buildstate.TEMP_NAME.fullmatch(p.name)]


# Where the build is killed: (with the worker?, the file whose appearance triggers the kill,
# seconds after it). Training is XGBoost's (the orphan).
KILL_POINTS = {
    "merging": (True, "results/merged/*/run02-*.parquet", 0.0),
    "training": (False, "logs/train/*/*/*/XGBRegressor.log", 1.0),
    "exporting": (True, "logs/export/*/*/Full.log", 0.3),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_build_resumes_with_the_same_command(template, reference, tmp_path, point):
    worker, pattern, delay = KILL_POINTS[point]
    ws = copy_of(template, tmp_path / "ws")
    proc = start(ws, worker)
    wait_for(ws, proc, pattern)
    time.sleep(delay)
    smk = children(proc, "snakemake")[0] if worker else proc
    os.kill(smk.pid, signal.SIGKILL)
    assert_all_gone(ws)  # its steps die with it (and the worker with its command)
    proc.wait(timeout=30)
    assert any((ws / ".snakemake/locks").iterdir())  # the crash left Snakemake's locks
    # A step killed outright leaves its temporary file: the next build removes it.
    stale = ws / "results/merged/.stale.parquet.abcd1234.tmp"
    stale.write_bytes(b"")

    res = snakemake(ws, "--cores", "2", worker=worker, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "cannot be locked" not in out and "removed the locks of a build that ended" in out
    assert temp_files(ws / "results") == []
    assert tree_digest(ws / "results") == reference


def test_steps_die_with_a_killed_worker_and_the_rerun_recomputes(template, reference, tmp_path):
    ws = copy_of(template, tmp_path / "ws")
    proc = start(ws, worker=True)
    wait_for(ws, proc, "logs/train/*/*/*/XGBRegressor.log")
    server = children(proc, "worker serve")[0]
    deadline = time.monotonic() + 60
    while not (steps := training_in(server)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)
    _gone, alive = psutil.wait_procs(steps, timeout=2)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert proc.wait(timeout=60) != 0  # snakemake fails the steps the worker ran
    ended = time.time_ns()
    assert_all_gone(ws)
    time.sleep(3)  # an orphan would publish here (the issue: 2-7 s after the build failed)
    late = [p for p in (ws / "results").rglob("*") if p.stat().st_mtime_ns > ended]
    assert late == []
    plan = planned_jobs(snakemake(ws, "-n"))
    assert plan.get("train_model", 0) >= 1  # the failed steps' outputs are not accepted

    snakemake(ws, "--cores", "2", worker=True)
    assert tree_digest(ws / "results") == reference


# ---------------------------------------------------------------- lifeline, without a build

STEP = [sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url", "http://127.0.0.1:9/metrics",
        "--duration", "120", "--output", "bm.csv"]  # records gaps for 120 s unless stopped


def test_a_step_dies_with_its_build(tmp_path):
    build = subprocess.Popen(["sleep", "120"])
    step = subprocess.Popen(STEP, cwd=tmp_path, env={**ENV, lifeline.ENV: lifeline.token(build.pid)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert step.poll() is None
    build.kill()
    build.wait()
    killed = time.monotonic()
    assert step.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - killed < 1.0
    assert "the build's process" in step.stderr.read()


def test_a_step_of_a_build_that_has_ended_does_not_start(tmp_path):
    build = subprocess.Popen(["sleep", "120"])
    name = lifeline.token(build.pid)
    build.kill()
    build.wait()
    res = subprocess.run([sys.executable, "-m", "vmpower", "synth", "--config", str(Path.cwd() / "config.yaml"),
                          "--out", "raw"], cwd=tmp_path, env={**ENV, lifeline.ENV: name},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL and not (tmp_path / "raw").exists()
    # A build on another machine (or pid namespace) is not watched: the step runs.
    other = "0f0f0f0f-0000-0000-0000-000000000000:pid:[1]:" + name.rsplit(":", 2)[1] + ":1"
    res = subprocess.run([sys.executable, "-m", "vmpower", "synth", "--help"], cwd=tmp_path,
                         env={**ENV, lifeline.ENV: other}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0


def test_a_step_whose_build_ended_publishes_nothing(tmp_path):
    """The last check before the rename: the build dies while the output is being written."""
    script = textwrap.dedent("""
        import os, subprocess
        from vmpower import io, lifeline
        build = subprocess.Popen(["sleep", "120"])
        os.environ[lifeline.ENV] = lifeline.token(build.pid)
        lifeline.arm()
        io.write_text("before\\n", "before.txt")
        with io.atomic_path("out.txt") as tmp:
            tmp.write_text("half")
            build.kill()
            build.wait()  # ended (SIGKILL lands a moment after kill() returns)
        print("published")
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL and "published" not in res.stdout
    assert (tmp_path / "before.txt").read_text() == "before\n" and not (tmp_path / "out.txt").exists()


def test_stale_locks_stay_while_another_snakemake_runs_here(template, tmp_path):
    ws = copy_of(template, tmp_path / "ws")
    (ws / ".snakemake/locks").mkdir(parents=True)
    (ws / ".snakemake/locks/0.output.lock").write_text(str(ws / "results/x") + "\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(".snakemake/vmpower-build.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH)
        print("held", flush=True)
        time.sleep(120)
    """)], cwd=ws, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        res = snakemake(ws, "-n", "--quiet", "rules")
        assert (ws / ".snakemake/locks/0.output.lock").exists()
        assert "removed the locks" not in res.stderr
    finally:
        holder.kill()
        holder.wait()
    res = snakemake(ws, "-n", "--quiet", "rules")
    assert not (ws / ".snakemake/locks/0.output.lock").exists() and "removed the locks" in res.stderr
