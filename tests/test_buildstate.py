"""ops.buildstate: the build lock and what a crashed build leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmpower.ops import buildstate


@pytest.fixture
def fresh_lock(monkeypatch):
    monkeypatch.setattr(buildstate, "_held", [])
    yield buildstate._held
    for fd in buildstate._held:
        os.close(fd)


def test_stale_temps_match_atomic_path_names_only(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    temps = [tmp_path / "a" / ".model.onnx.ab12cd34.tmp", tmp_path / "a" / "b" / ".x.parquet.0a1b2c3d.tmp.parquet"]
    keep = [tmp_path / "a" / "model.onnx", tmp_path / "a" / ".hidden", tmp_path / "a" / ".x.short.tmp"]
    for p in temps + keep:
        p.write_text("")
    assert buildstate.stale_temps(tmp_path) == sorted(temps)


def test_clear_stale_removes_locks_and_temps(tmp_path, capsys):
    state, results = tmp_path / ".snakemake", tmp_path / "results"
    (state / "locks").mkdir(parents=True)
    (state / "locks" / "0.input.lock").write_text("")
    results.mkdir()
    temp = results / ".f.json.abcdefgh.tmp"
    temp.write_text("")
    (results / "f.json").write_text("{}")
    buildstate.clear_stale(state, results)
    assert not (state / "locks").exists() and not temp.exists() and (results / "f.json").exists()
    err = capsys.readouterr().err
    assert "removed the locks" in err and "removed 1 temporary file(s)" in err


def test_hold_is_exclusive_only_for_the_first_process(tmp_path, fresh_lock):
    assert buildstate.hold(tmp_path) is True
    code = ("import sys; from pathlib import Path; from vmpower.ops import buildstate; "
            "sys.exit(0 if buildstate.hold(Path(sys.argv[1])) else 3)")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ})
    assert other.returncode == 3  # another process holds the lock: not alone
    os.close(fresh_lock.pop())
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ})
    assert again.returncode == 0  # the holder is gone (the kernel dropped its lock)
    assert (Path(tmp_path) / buildstate.LOCK_FILE).exists()


def test_a_killed_exports_model_directory_is_cleared(tmp_path, monkeypatch):
    """pipeline.artifact.write_model assembles a model directory under a temporary name; a build
    killed in between leaves it, and the next build removes it whole (its files too)."""
    import tempfile

    from vmpower.pipeline import artifact

    results = tmp_path / "results"
    out = results / "models" / "AbsPower" / "Full" / "XGBRegressorTrainer_nt"
    out.parent.mkdir(parents=True)
    made = []
    real = tempfile.mkdtemp

    def killed(*a, **kw):
        made.append(real(*a, **kw))
        raise KeyboardInterrupt  # as if the build died right after creating it

    monkeypatch.setattr(artifact.tempfile, "mkdtemp", killed)
    with pytest.raises(KeyboardInterrupt):
        artifact.write_model({"package.onnx": b"x"}, out, results / "m.zip", (1980, 1, 1, 0, 0, 0))
    left = Path(made[0])
    left.mkdir(exist_ok=True)
    (left / "package.onnx").write_bytes(b"half")
    assert buildstate.stale_temps(results) == [left]
    buildstate.clear_stale(tmp_path / ".snakemake", results)
    assert not left.exists() and out.parent.is_dir()
