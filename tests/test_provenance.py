"""ops/provenance.py: where a job ran, without timestamps, host names or absolute paths."""

from __future__ import annotations

import json
import platform

from vmpower import fingerprint
from vmpower.ops import provenance


def test_image_digest_is_the_runner_variable_or_local(monkeypatch):
    monkeypatch.delenv(provenance.IMAGE_DIGEST_ENV, raising=False)
    assert provenance.image_digest() == "local"
    monkeypatch.setenv(provenance.IMAGE_DIGEST_ENV, "sha256:abc")
    assert provenance.image_digest() == "sha256:abc"


def test_environment_has_exactly_digest_minor_python_and_packages(monkeypatch):
    monkeypatch.setenv(provenance.IMAGE_DIGEST_ENV, "sha256:0123")
    env = provenance.environment()
    assert set(env) == {"image_digest", "python", "packages"}
    assert env["image_digest"] == "sha256:0123"
    major, minor, _ = platform.python_version_tuple()
    assert env["python"] == f"{major}.{minor}"  # no patch level
    assert env["packages"] == fingerprint.package_versions()


def test_environment_is_stable_and_names_no_host_or_path(monkeypatch):
    monkeypatch.delenv(provenance.IMAGE_DIGEST_ENV, raising=False)
    a, b = provenance.environment(), provenance.environment()
    assert a == b
    text = json.dumps(a)
    assert platform.node() not in text and "/" not in text
