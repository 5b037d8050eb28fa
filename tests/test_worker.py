"""The preloaded worker (`vmpower worker`): steps run in forked children with the client's
working directory, environment, file descriptors and exit code; edited sources run their new
code; a cancelled step is stopped; without a usable worker a step runs itself."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vmpower.ops import worker

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in (worker.ENV, "SLURM_JOB_ID")}
    env["PYTHONHASHSEED"] = "0"
    return {**env, **extra}


@pytest.fixture
def server(tmp_path):
    """A worker serving on tmp_path/s; yields (process, socket path, log path); stopped after."""
    procs = []

    def start(pythonpath=None, hash_seed="0"):
        path = tmp_path / f"s{len(procs)}"
        log = tmp_path / f"server{len(procs)}.log"
        env = _env(**({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
        env.pop("PYTHONHASHSEED")
        if hash_seed is not None:
            env["PYTHONHASHSEED"] = hash_seed
        proc = subprocess.Popen([sys.executable, "-m", "vmpower", "worker", "serve", "--socket", str(path)],
                                env=env, stderr=log.open("w"), cwd=tmp_path)
        procs.append(proc)
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return proc, path, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _stop(proc, log):
    proc.terminate()
    proc.wait(timeout=30)
    return log.read_text()


def _client(args, cwd, sock, timeout=120, **env):
    extra = {worker.ENV: str(sock)} if sock else {}
    return subprocess.run([sys.executable, "-m", "vmpower", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env(**extra, **env))


def test_a_step_runs_in_the_worker_with_its_cwd_env_output_and_exit_code(server, tmp_path):
    proc, sock, log = server()
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")  # found relative to the step's cwd
    ok = _client(["--provenance", "prov.json", "synth", "--config", "config.yaml", "--out", "raw", "--noise-table"],
                 work, sock, VMPOWER_IMAGE_DIGEST="sha256:" + "ab" * 32)
    alone = _client(["synth", "--config", "config.yaml", "--out", "raw", "--noise-table"], work, None)
    assert ok.returncode == 0 and ok.stdout == alone.stdout and "noise floor" in ok.stdout.lower()
    record = json.loads((work / "prov.json").read_text())  # relative path: written in the cwd
    assert record["environment"]["image_digest"] == "sha256:" + "ab" * 32
    bad = _client(["merge", "--vm-features", "nope.json", "--bm-power", "nope.csv", "--output", "m.csv"], work, sock)
    alone = _client(["merge", "--vm-features", "nope.json", "--bm-power", "nope.csv", "--output", "m.csv"], work, None)
    assert bad.returncode == alone.returncode == 2
    assert bad.stderr == alone.stderr and len(bad.stderr.strip().splitlines()) == 1 and "nope.json" in bad.stderr
    assert not (work / "m.csv").exists()
    assert "served 2 steps" in _stop(proc, log)


def test_an_edited_source_runs_its_new_code(server, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc, sock, log = server(pythonpath=src)
    before = _client(["synth", "--help"], tmp_path, sock, PYTHONPATH=str(src))
    assert "Generate demo runs" in before.stdout
    for name, old, new in (("demo/synth.py", "Generate demo runs", "Generate EDITED runs"),
                           ("cli/__init__.py", "Build Kepler power models", "Build EDITED models")):
        path = src / "vmpower" / name
        path.write_text(path.read_text().replace(old, new))
    after = _client(["synth", "--help"], tmp_path, sock, PYTHONPATH=str(src))
    top = _client(["--help"], tmp_path, sock, PYTHONPATH=str(src))
    assert "Generate EDITED runs" in after.stdout and "Build EDITED models" in top.stdout
    assert "served 3 steps" in _stop(proc, log)


def test_the_worker_runs_with_the_builds_hash_seed(server):
    """Steps inherit the server's str hashing: it re-executes itself with PYTHONHASHSEED=0."""
    for seed in (None, "123"):
        proc, _sock, _log = server(hash_seed=seed)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"PYTHONHASHSEED=0" in environ


def test_a_cancelled_step_is_stopped(server, tmp_path):
    proc, sock, log = server()
    # A collection against an unreachable endpoint: it records gaps for 120 s unless stopped.
    client = subprocess.Popen([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url",
                               "http://127.0.0.1:9/metrics", "--duration", "120", "--output", "bm.csv"],
                              cwd=tmp_path, env=_env(**{worker.ENV: str(sock)}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not psutil.Process(proc.pid).children():
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    step = psutil.Process(proc.pid).children()[0]
    time.sleep(1)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == 128 + signal.SIGTERM
    gone, alive = psutil.wait_procs([step], timeout=worker.KILL_GRACE_SECONDS + 10)
    assert not alive and proc.poll() is None  # the step is stopped, the worker keeps serving
    assert "served 1 steps" in _stop(proc, log)


def _collecting(sock, cwd, **env):
    """A client whose step runs for 120 s unless stopped (see test_a_cancelled_step_is_stopped)."""
    return subprocess.Popen([sys.executable, "-m", "vmpower", "collect", "host", "--kepler-url",
                             "http://127.0.0.1:9/metrics", "--duration", "120", "--output", "bm.csv"],
                            cwd=cwd, env=_env(**{worker.ENV: str(sock)}, **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _alive(procs, timeout):
    """Which of procs still run after timeout s (a dead step's zombie is not running)."""
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _step_of(proc, client):
    deadline = time.monotonic() + 60
    while not psutil.Process(proc.pid).children():
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    return psutil.Process(proc.pid).children()[0]


def test_a_step_dies_with_the_worker(server, tmp_path):
    """kill -9 of the worker: its steps die at once (they can publish nothing later), the client fails."""
    proc, sock, _log = server()
    client = _collecting(sock, tmp_path)
    step = _step_of(proc, client)
    time.sleep(1)
    proc.kill()
    assert _alive([step], timeout=1) == []
    assert client.wait(timeout=30) == 1 and "the worker ended before the step did" in client.stderr.read()


def test_a_step_in_the_worker_dies_with_its_build(server, tmp_path):
    """The build (snakemake) named in the client's environment ends: client and step die, the worker serves on."""
    from vmpower import lifeline

    proc, sock, log = server()
    build = subprocess.Popen(["sleep", "120"])
    client = _collecting(sock, tmp_path, **{lifeline.ENV: lifeline.token(build.pid)})
    step = _step_of(proc, client)
    time.sleep(1)
    build.kill()
    build.wait()
    assert _alive([step], timeout=1) == [] and client.wait(timeout=5) == -signal.SIGKILL and proc.poll() is None
    assert "served 1 steps" in _stop(proc, log)


def test_a_killed_worker_run_takes_its_worker_and_command_with_it(tmp_path):
    wrapper = subprocess.Popen([sys.executable, "-m", "vmpower", "worker", "run", "--", "sleep", "120"],
                               cwd=tmp_path, env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(kids := psutil.Process(wrapper.pid).children()) < 2:
        assert time.monotonic() < deadline and wrapper.poll() is None
        time.sleep(0.05)
    wrapper.kill()
    wrapper.wait()
    assert _alive(kids, timeout=3) == []


def test_without_a_usable_worker_a_step_runs_itself(server, tmp_path):
    proc, sock, log = server()
    args = ["merge", "--vm-features", "nope.json", "--bm-power", "nope.csv", "--output", "m.csv"]
    for res in (_client(args, tmp_path, tmp_path / "no-such-socket"),  # nothing listens
                _client(args, tmp_path, sock, SLURM_JOB_ID="7")):  # inside an allocation: its own process
        assert res.returncode == 2 and "nope.json" in res.stderr
    # Another interpreter / venv / source tree is refused; the client then runs the step itself.
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(sock))
    request = {"argv": ["--help"], "cwd": str(tmp_path), "env": {}, "interpreter": ["/other/python"]}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    answer = json.loads(conn.recv(4096))
    conn.close()
    assert answer["refused"]
    assert "served 0 steps, refused 1" in _stop(proc, log)


def test_worker_run_passes_the_exit_code_and_needs_a_command(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    res = subprocess.run([sys.executable, "-m", "vmpower", "worker", "run", "--", sys.executable, "-c",
                          f"import os, sys; sys.exit(3 if os.path.exists(os.environ['{worker.ENV}']) else 4)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env(TMPDIR=str(tmp)))
    assert res.returncode == 3 and "served 0 steps" in res.stderr
    assert list(tmp.glob("vmpower-worker-*")) == []  # the socket and its directory are gone
    res = subprocess.run([sys.executable, "-m", "vmpower", "worker", "run"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 2 and "give the command to run" in res.stderr
