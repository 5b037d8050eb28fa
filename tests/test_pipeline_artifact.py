"""vmpower.pipeline.artifact: model files read with bounded sizes; damage is one InputError line."""

import zipfile

import pytest

from vmpower import limits as limits_mod
from vmpower.errors import InputError
from vmpower.pipeline.artifact import read_model_files


def _small(member: int, total: int):
    return limits_mod.defaults().replace(max_archive_member_bytes=member, max_archive_total_bytes=total)


def test_directory_and_zip_give_the_same_files(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "metadata.json").write_bytes(b"{}")
    (d / "package.onnx").write_bytes(b"\x00" * 10)
    (d / ".snakemake_timestamp").write_bytes(b"")
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(d / "metadata.json", "metadata.json")
        zf.write(d / "package.onnx", "package.onnx")
    want = {"metadata.json": b"{}", "package.onnx": b"\x00" * 10}
    assert read_model_files(d) == want == read_model_files(z)
    assert read_model_files(z, names={"metadata.json"}) == {"metadata.json": b"{}"}


def test_sizes_are_refused_before_reading(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.onnx").write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="a.onnx is 100 bytes uncompressed, more than limits.max_archive_member_bytes"):
        read_model_files(d, _small(50, 1000))
    (d / "b.onnx").write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="files total 200 bytes uncompressed"):
        read_model_files(d, _small(150, 150))


def test_damage_is_one_line(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + b"garbage" * 10)
    with pytest.raises(InputError) as err:
        read_model_files(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(InputError, match="model not found"):
        read_model_files(tmp_path / "missing")
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(InputError, match="not a model directory or .zip archive"):
        read_model_files(tmp_path / "plain.txt")
