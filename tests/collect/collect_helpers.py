"""Helpers for the collector tests: a real sshd on loopback, process checks, paths."""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
if str(SRC) not in sys.path:  # tests run from a checkout, installed or not
    sys.path.insert(0, str(SRC))


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def live_stress_ng(pids: list[int] | None = None) -> list[psutil.Process]:
    """stress-ng processes that are alive (zombies awaiting a reaper do not run)."""
    out = []
    for p in psutil.process_iter(["name", "status"]):
        try:
            if p.info["name"] and p.info["name"].startswith("stress-ng") and \
                    p.info["status"] != psutil.STATUS_ZOMBIE:
                if pids is None or p.pid in pids or p.ppid() in pids:
                    out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.host_key = root / "ssh_host_ed25519_key"
        self.client_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.proc: subprocess.Popen | None = None
        self.user = os.environ.get("USER") or __import__("getpass").getuser()

    def start(self) -> "Sshd":
        keygen = shutil.which("ssh-keygen")
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not keygen or not Path(sshd).exists():
            pytest.skip("openssh-server not installed (envs/debian.txt lists it; run make debs)")
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        auth = self.root / "authorized_keys"
        auth.write_text(self.client_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                     if Path(p).exists()), "internal-sftp")
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {auth}", f"PidFile {self.root / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
            f"Subsystem sftp {sftp}", "LogLevel ERROR", "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir
        self.log = open(self.root / "sshd.log", "w")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail("sshd did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
