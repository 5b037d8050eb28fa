"""serving/versions.py: the versioned model store (order, hidden names, stamps, pruning, newest_loadable)."""

from __future__ import annotations

import logging
import os

import pytest

from vmpower.errors import InputError
from vmpower.serving import versions


def store(root, *names):
    for name in names:
        if name.endswith((".zip", ".txt")):
            (root / name).write_bytes(b"x")
        else:
            (root / name).mkdir()
            (root / name / "metadata.json").write_text("{}")
    return root


def test_version_order_and_hidden_entries(tmp_path):
    for name in ("v10", "v9", "v2.1", ".v11.tmp", "v1.zip", "notes.txt"):
        (tmp_path / name).mkdir() if not name.endswith((".zip", ".txt")) else (tmp_path / name).write_bytes(b"")
    assert [v.name for v in versions.scan(tmp_path)] == ["v1", "v2.1", "v9", "v10"]


def test_order_key_compares_digit_runs_as_numbers():
    names = ["v10", "v2", "2026-01-10", "2026-01-02", "v1b", "v1a", "v1"]
    assert sorted(names, key=versions.order_key) == ["2026-01-02", "2026-01-10", "v1", "v1a", "v1b", "v2", "v10"]
    assert versions.order_key("v2") < versions.order_key("v10")
    assert versions.order_key("007") == versions.order_key("7")


def test_scan_paths_and_a_hidden_zip(tmp_path):
    store(tmp_path, "v1", "v2.zip", ".v3.zip", ".v4")
    got = versions.scan(tmp_path)
    assert [(v.name, v.path.name) for v in got] == [("v1", "v1"), ("v2", "v2.zip")]
    (tmp_path / "empty").mkdir()
    assert versions.scan(tmp_path / "empty") == []


def test_stamp_changes_when_a_file_inside_is_rewritten(tmp_path):
    store(tmp_path, "v1")
    before = versions.scan(tmp_path)[0].stamp
    assert versions.scan(tmp_path)[0].stamp == before  # same store, same stamp
    f = tmp_path / "v1" / "metadata.json"
    f.write_text('{"a": 1}')
    os.utime(f, ns=(1, 1))
    assert versions.scan(tmp_path)[0].stamp != before


@pytest.mark.parametrize("make, problem", [
    (lambda p: p / "missing", "model versions directory not found"),
    (lambda p: (p / "file").write_text("x") and p / "file", "model versions path is not a directory"),
])
def test_scan_errors_are_one_line_naming_the_root(tmp_path, make, problem):
    root = make(tmp_path)
    with pytest.raises(InputError) as exc:
        versions.scan(root)
    assert str(exc.value) == f"{root}: {problem}"


def test_prune_keeps_the_newest_and_protected(tmp_path):
    store(tmp_path, "v1", "v2.zip", "v3", "v10", ".v11")
    assert versions.prune(tmp_path, 2, protect=("v1",)) == ["v2"]
    assert sorted(os.listdir(tmp_path)) == [".v11", "v1", "v10", "v3"]
    assert versions.prune(tmp_path, 0) == []  # keep <= 0: never prune
    assert versions.prune(tmp_path, 5) == []
    assert versions.prune(tmp_path, 1) == ["v1", "v3"]
    assert sorted(os.listdir(tmp_path)) == [".v11", "v10"]


def test_prune_on_a_read_only_store_warns_and_deletes_nothing(tmp_path, caplog, monkeypatch):
    store(tmp_path, "v1", "v2", "v3.zip")

    def read_only(path, *a, **k):  # what a ConfigMap mount answers (chmod does not stop root)
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(versions.shutil, "rmtree", read_only)
    monkeypatch.setattr(type(tmp_path), "unlink", read_only)
    with caplog.at_level(logging.WARNING, logger="vmpower.serving.versions"):
        assert versions.prune(tmp_path, 1) == []
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["v1", "v2", "v3.zip"]
    assert "cannot prune old model version" in caplog.text


def test_newest_loadable_skips_refused_versions_newest_first(tmp_path, caplog):
    store(tmp_path, "v1", "v2", "v10")
    tried = []

    def load(path):
        tried.append(path.name)
        if path.name != "v2":
            raise InputError(path, "broken")

    with caplog.at_level(logging.WARNING, logger="vmpower.serving.versions"):
        assert versions.newest_loadable(tmp_path, load).name == "v2"
    assert tried == ["v10", "v2"]
    assert "model version v10 refused: broken" in caplog.text


def test_newest_loadable_none_usable_or_empty(tmp_path):
    store(tmp_path, "v1")

    def refuse(path):
        raise InputError(path, "no")

    with pytest.raises(InputError, match="no usable model version$"):
        versions.newest_loadable(tmp_path, refuse)
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError) as exc:
        versions.newest_loadable(tmp_path / "e", refuse)
    assert str(exc.value) == f"{tmp_path / 'e'}: no usable model version (empty)"


def test_newest_loadable_lets_other_errors_through(tmp_path):
    store(tmp_path, "v1")
    with pytest.raises(ZeroDivisionError):
        versions.newest_loadable(tmp_path, lambda p: 1 / 0)
