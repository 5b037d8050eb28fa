"""vmpower.io: atomic, deterministic writers (no half-written output, devices written through)."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmpower import io


def _leftovers(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f".{name}.*.tmp*"))


def test_success_renames_into_place_with_0644_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.csv"
    with io.atomic_path(target, suffix=".csv") as tmp:
        # beside the target, named so that buildstate can sweep it after a kill -9
        assert tmp.parent == target.parent and tmp.name.startswith(".out.csv.") and tmp.name.endswith(".tmp.csv")
        assert not target.exists()
        tmp.write_text("x\n")
    assert target.read_text() == "x\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # mkstemp's 0600 would hide outputs from a container user
    assert _leftovers(target.parent, "out.csv") == []


def test_an_exception_leaves_the_old_output_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path, "out.json") == []
    with pytest.raises(KeyboardInterrupt):  # BaseException too (Ctrl-C while writing)
        with io.atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert not (tmp_path / "new.json").exists() and _leftovers(tmp_path, "new.json") == []


@pytest.fixture
def sys_tmp(tmp_path, monkeypatch):
    """The system temporary directory, where atomic_path stages a device's content."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_a_fifo_is_written_through_not_renamed_over(tmp_path, sys_tmp):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with io.atomic_path(fifo) as tmp:
        assert tmp.parent == sys_tmp  # never beside the device (e.g. in /dev)
        tmp.write_bytes(b"through the pipe\n")
    reader.join(5)
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert list(sys_tmp.iterdir()) == [] and _leftovers(tmp_path, "pipe") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_character_device_stays_a_device(tmp_path, sys_tmp):
    """`--output /dev/null` as root: a rename would replace the device with a regular file.
    A private null device (1, 3) in tmp_path stands for /dev/null, so a regression cannot break
    the machine's own."""
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        io.write_json({"a": 1}, dev)
        with pytest.raises(ValueError):
            with io.atomic_path(dev) as tmp:
                tmp.write_text("x")
                raise ValueError
        st = dev.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert list(sys_tmp.iterdir()) == []
    finally:
        dev.unlink()


def test_dumps_json_is_sorted_indented_and_json_safe():
    obj = {"b": [np.float32(1.5), np.int64(2), float("nan"), float("-inf"), (1, 2)], 3: np.bool_(True),
           "a": {"z": np.float64("inf"), "y": None}}
    assert io.dumps_json(obj) == (
        '{\n  "3": true,\n  "a": {\n    "y": null,\n    "z": null\n  },\n'
        '  "b": [\n    1.5,\n    2,\n    null,\n    null,\n    [\n      1,\n      2\n    ]\n  ]\n}\n')
    # insertion order does not matter
    assert io.dumps_json({"x": 1, "a": 2}) == io.dumps_json({"a": 2, "x": 1})


def test_write_json_and_write_text(tmp_path):
    io.write_json({"k": np.int32(7)}, tmp_path / "d" / "x.json")
    assert (tmp_path / "d" / "x.json").read_text() == '{\n  "k": 7\n}\n'
    io.write_text("ä\n", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_bytes() == "ä\n".encode("utf-8")
    with pytest.raises(TypeError):  # not JSON: nothing is written
        io.write_json({"k": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and _leftovers(tmp_path, "bad.json") == []


def test_write_parquet_gives_the_same_bytes_for_the_same_data(tmp_path):
    df = pd.DataFrame({"run_id": ["r1", "r1", "r2"], "power_package": [1.5, np.nan, 3.0], "n": [1, 2, 3]})
    io.write_parquet(df, tmp_path / "a.parquet")
    io.write_parquet(df.copy(), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    pd.testing.assert_frame_equal(io.read_parquet(tmp_path / "a.parquet"), df)


def test_sha256_file_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 5
    (tmp_path / "f").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert io.sha256_file(tmp_path / "f") == want
    assert io.sha256_file(tmp_path / "f", chunk=7) == want
    (tmp_path / "e").write_bytes(b"")
    assert io.sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_write_if_changed_keeps_the_file_when_the_bytes_are_equal(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    assert io.write_if_changed(b"abc", target) is True
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    inode = target.stat().st_ino
    assert io.write_if_changed(b"abc", target) is False
    assert target.stat().st_mtime_ns == 1_000_000_000 and target.stat().st_ino == inode
    assert io.write_if_changed(b"abd", target) is True  # same size, other bytes
    assert target.read_bytes() == b"abd"
    assert io.write_if_changed(b"", target) is True and target.read_bytes() == b""
