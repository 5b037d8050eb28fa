"""Fixtures for the collector tests: a real sshd on loopback, a loopback Kepler, a guest project."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # collect_helpers

from collect_helpers import REPO, SRC, Sshd  # noqa: E402


@pytest.fixture
def kepler():
    """Factory for loopback Kepler endpoints; all are closed at the end."""
    from kepler_server import FakeKepler, Vm

    servers = []

    def make(vms=None, **kw):
        k = FakeKepler(vms or [Vm("2b7f0a52-8c1e-4d4e-9f3a-6c0e5d1a9b40", "fedora40")], **kw).start()
        servers.append(k)
        return k

    yield make
    for k in servers:
        k.close()


@pytest.fixture
def sshd(tmp_path):
    d = tmp_path / "sshd"
    d.mkdir()
    server = Sshd(d).start()
    yield server
    server.stop()


@pytest.fixture
def guest_project(tmp_path):
    """A 'VM project path' for the loopback guest: this checkout's src and venv, its own data/logs."""
    p = tmp_path / "guest"
    p.mkdir()
    (p / "src").symlink_to(SRC)
    venv = REPO / ".venv"
    if venv.exists():
        (p / ".venv").symlink_to(venv)
    return p
