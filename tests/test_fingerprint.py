"""fingerprint.py: input checksums and the versions of the packages that change results."""

from __future__ import annotations

import hashlib
from importlib import metadata

import pytest

from vmpower import fingerprint


def test_package_versions_are_the_installed_key_packages_in_order():
    got = fingerprint.package_versions()
    assert list(got) == [n for n in fingerprint.KEY_PACKAGES if n in got]
    for name in ("numpy", "pandas", "scikit-learn", "onnxruntime"):
        assert got[name] == metadata.version(name)


def test_a_missing_package_is_left_out(monkeypatch):
    monkeypatch.setattr(fingerprint, "KEY_PACKAGES", ("numpy", "no-such-package-vmpower"))
    assert list(fingerprint.package_versions()) == ["numpy"]


def test_input_checksums_are_sha256_keyed_by_the_path_as_given_sorted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.csv").write_bytes(b"1,2\n")
    (tmp_path / "a.json").write_bytes(b"{}")
    got = fingerprint.input_checksums([tmp_path.joinpath("b", "x.csv").relative_to(tmp_path), "a.json"])
    assert list(got) == ["a.json", "b/x.csv"]
    assert got["b/x.csv"] == hashlib.sha256(b"1,2\n").hexdigest()
    assert got["a.json"] == hashlib.sha256(b"{}").hexdigest()
    assert fingerprint.input_checksums([]) == {}


def test_a_missing_input_raises(tmp_path):
    with pytest.raises(OSError):
        fingerprint.input_checksums([tmp_path / "gone.csv"])
