"""vmpower.serving.artifact: manifest integrity, metadata/ONNX consistency and training metadata of real exported models."""

import json
import shutil

import pandas as pd
import pytest

from serving_helpers import ACT_LR, DYN_LR, SYS_GBR, SYS_LR, SYS_XGB, _copy, _rewrite_manifest
from vmpower.errors import InputError
from vmpower.names import MANIFEST
from vmpower.serving import artifact, live



def test_untouched_model_and_archive_load(art):
    d = art["models"][SYS_GBR]
    a, b = artifact.Model.load(d), artifact.Model.load(d.with_name(d.name + ".zip"))
    assert a.version == b.version and len(a.version) == 12 and a.features == b.features


def test_byte_flip_in_onnx_is_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    data = bytearray((d / "core.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "core.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"core\.onnx does not match its sha256 in manifest\.sha256"):
        artifact.Model.load(d)


def test_edited_metadata_is_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta["features"] = meta["features"][::-1]  # same width, other order: silently wrong watts
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"metadata\.json does not match its sha256"):
        artifact.Model.load(d)


def test_missing_and_extra_files_are_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    (d / "dram.onnx").unlink()
    with pytest.raises(InputError, match=r"dram\.onnx is listed in manifest\.sha256 but missing"):
        artifact.Model.load(d)
    d2 = _copy(art, SYS_LR, tmp_path / "x")
    shutil.copy(d2 / "core.onnx", d2 / "gpu.onnx")
    with pytest.raises(InputError, match=r"gpu\.onnx is not listed in manifest\.sha256"):
        artifact.Model.load(d2)
    _rewrite_manifest(d2)  # even with a consistent manifest, an onnx that is no zone is refused
    with pytest.raises(InputError, match=r"gpu\.onnx is not a zone of metadata\.json"):
        artifact.Model.load(d2)
    (d2 / MANIFEST).unlink()
    with pytest.raises(InputError, match="no manifest.sha256"):
        artifact.Model.load(d2)


def test_metadata_onnx_mismatch_is_refused_even_with_a_matching_manifest(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta["features"] = meta["features"][:-1]
    meta["input"]["shape"] = [None, len(meta["features"])]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    n = len(meta["features"])
    with pytest.raises(InputError, match=rf"package\.onnx takes {n + 1} features, metadata\.json lists {n}"):
        artifact.Model.load(d)
    meta["zones"] = ["package", "core", "dram"]  # uncore.onnx left over
    meta["features"].append("x")
    meta["input"]["shape"] = [None, n + 1]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match=r"uncore\.onnx is not a zone"):
        artifact.Model.load(d)


def test_metadata_records_training_rows_time_and_feature_ranges(art):
    """training_data: what train recorded over the isolated data set's rows it used."""
    for key in (SYS_XGB, ACT_LR, DYN_LR):
        meta = json.loads((art["models"][key] / "metadata.json").read_text())
        report = json.loads((art["trained"][key] / "metrics.json").read_text())
        data = pd.read_parquet(art["datasets"][key[0]])
        rows = data[data[meta["features"]].notna().all(axis=1)]
        td = meta["training_data"]
        assert td["rows"] == report["rows_train"] == len(rows) == td["ranges_rows"] and td["ranges_from"] == "training rows"
        assert td["last_sample_time"] == rows["time"].max()
        assert list(td["feature_ranges"]) == sorted(meta["features"])
        for f, r in td["feature_ranges"].items():
            assert (r["min"], r["max"]) == (rows[f].min(), rows[f].max())
    model = artifact.Model.load(art["models"][SYS_XGB])
    lo, hi = model.ranges
    assert model.confidence(lo) == model.confidence(hi) == 1.0
    x = lo.copy()
    x[:3] = hi[:3] + 1
    assert model.confidence(x) == pytest.approx(1 - 3 / len(lo))


def test_dynpower_metadata_records_its_isolator(art):
    iso = json.loads(art["isolation"].read_text())
    dyn = json.loads((art["models"][DYN_LR] / "metadata.json").read_text())
    assert dyn["isolator"] == iso["method"] == "profile"  # the demo has an idle run
    assert dyn["idle_power_watts"] == iso["idle_power_watts"] and set(dyn["idle_power_watts"]) == set(dyn["zones"])
    absm = json.loads((art["models"][SYS_LR] / "metadata.json").read_text())
    assert "isolator" not in absm and "idle_power_watts" not in absm
    assert art["isolation"].as_posix() in dyn["provenance"]["inputs"]


def test_bad_training_ranges_are_refused(art, tmp_path):
    d = _copy(art, SYS_LR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    r = meta["training_data"]["feature_ranges"]["cpu_utilization"]
    r["min"], r["max"] = r["max"], r["min"]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match="feature_ranges has a min above its max"):
        artifact.Model.load(d)
    del meta["training_data"]["feature_ranges"]["cpu_utilization"]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match="does not give min/max for every feature"):
        artifact.Model.load(d)
