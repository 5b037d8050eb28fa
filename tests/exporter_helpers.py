"""A live ``vmpower serve`` for the exporter and powercap tests, and the rule for external tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def need(tool: str) -> str:
    """Path of an external program the test needs. Missing: skip locally, fail under CI=true
    (`make test` installs it from envs/debian.txt, so a missing one there is a defect)."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} not installed (Debian package listed in envs/debian.txt)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{msg}; CI=true, so this is a failure")
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f.samples for f in text_string_to_metric_families(text)}


class Serve:
    """``vmpower serve`` in a subprocess on loopback; stopped with SIGTERM."""

    def __init__(self, model, config, *extra):
        self.port = free_port()
        cmd = [sys.executable, "-m", "vmpower", "serve", "--model", str(model), "--config", str(config),
               "--address", "127.0.0.1", "--port", str(self.port), "--no-perf", *map(str, extra)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def wait_for(self, predicate, timeout=30.0) -> str:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                last = self.text()
                if predicate(parse(last)):
                    return last
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout} s; last scrape: {last}")

    def stop(self) -> int:
        self.stderr = stop_process(self.proc)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def series(m: dict, name: str) -> dict:
    """zone -> value of one family's samples named ``name``."""
    family = name.removesuffix("_total")
    return {s.labels["zone"]: s.value for s in m.get(family, []) if s.name == name}


def stop_process(proc: subprocess.Popen) -> str:
    """SIGTERM a serve process (SIGKILL after 10 s); its stderr."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.stderr.read()
