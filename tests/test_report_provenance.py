"""pipeline/report/provenance.py: image digests, lock hashes and input checksums of a node_type."""

from __future__ import annotations

import hashlib
import json

import pytest

from vmpower import cli
from vmpower.pipeline.report import provenance


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run, files in {"r1": {"vm_features_1.json": b"[]", "bm_power_1.csv": b"t\n"}, "r2": {"vm_features_2.json": b"[1]"}}.items():
        (tmp_path / "raw" / "nt" / run).mkdir(parents=True)
        for name, body in files.items():
            (tmp_path / "raw" / "nt" / run / name).write_bytes(body)
    env = {"python": "3.12", "packages": {"numpy": "2.0"}}
    recs = {"a.json": {"environment": {"image_digest": "local", **env}},
            "b.json": {"environment": {"image_digest": "local", **env}},
            "c.json": {"environment": {"image_digest": "sha256:1", "python": "3.12", "packages": {"numpy": "2.1"}}},
            "d.json": {}}
    (tmp_path / "prov").mkdir()
    for name, rec in recs.items():
        (tmp_path / "prov" / name).write_text(json.dumps(rec))
    (tmp_path / "dev.lock").write_bytes(b"numpy==2.0\n")
    lock = {"images": {"job": {"name": "vmpower-job", "env_lock": "envs/dev.lock", "manifest_digest": "sha256:m",
                               "docker": {"id": "sha256:d", "env_lock_sha256": "e1", "extra": 1}}}}
    (tmp_path / "images.lock.json").write_text(json.dumps(lock))
    return tmp_path


def inputs():
    return ["raw/nt/r2/vm_features_2.json", "raw/nt/r1/vm_features_1.json", "raw/nt/r1/bm_power_1.csv"]


def records():
    return [f"prov/{n}" for n in ("c.json", "a.json", "d.json", "b.json")]


def test_summary_groups_runs_counts_digests_and_environments(tree):
    got = provenance.provenance_summary("nt", inputs(), records(), ["dev.lock"], "images.lock.json")
    assert got["node_type"] == "nt"
    assert got["runs"] == {"r1": {"bm_power_1.csv": sha(b"t\n"), "vm_features_1.json": sha(b"[]")},
                           "r2": {"vm_features_2.json": sha(b"[1]")}}
    assert got["job_image_digests"] == {"local": 2, "sha256:1": 1, "?": 1}
    assert got["job_environments"] == sorted([
        {"python": "3.12", "packages": {"numpy": "2.0"}, "jobs": 2},
        {"python": "3.12", "packages": {"numpy": "2.1"}, "jobs": 1},
        {"python": None, "packages": {}, "jobs": 1}], key=lambda e: json.dumps(
            {"packages": e["packages"], "python": e["python"]}, sort_keys=True))
    assert got["locks"] == {"dev.lock": sha(b"numpy==2.0\n")}
    assert got["image_lock"] == sha((tree / "images.lock.json").read_bytes())
    assert got["locked_images"] == {"job": {"name": "vmpower-job", "env_lock": "envs/dev.lock",
                                            "manifest_digest": "sha256:m",
                                            "docker": {"id": "sha256:d", "env_lock_sha256": "e1"}}}


def test_summary_without_an_image_lock(tree):
    for lock in (None, "missing.lock.json"):
        got = provenance.provenance_summary("nt", [], [], [], lock)
        assert got["image_lock"] is None and got["locked_images"] == {} and got["runs"] == {}


def test_summary_does_not_depend_on_argument_order(tree):
    a = provenance.provenance_summary("nt", inputs(), records(), ["dev.lock"], "images.lock.json")
    b = provenance.provenance_summary("nt", inputs()[::-1], records()[::-1], ["dev.lock"], "images.lock.json")
    assert json.dumps(a) == json.dumps(b)


def test_cmd_through_the_cli_writes_json_and_html(tree):
    argv = ["report-provenance", "--node-type", "nt", "--inputs", *inputs(), "--records", *records(),
            "--locks", "dev.lock", "--image-lock", "images.lock.json", "--json", "p.json", "--html", "p.html"]
    assert cli.main(argv) == 0
    data = json.loads((tree / "p.json").read_text())
    assert data == provenance.provenance_summary("nt", inputs(), records(), ["dev.lock"], "images.lock.json")
    page = (tree / "p.html").read_text()
    assert "<title>nt: provenance</title>" in page
    assert '<tr><td class="l">local</td><td>2</td></tr>' in page
    assert "<td class=\"l\">job</td><td class=\"l\">docker</td><td class=\"l\">sha256:d</td>" in page
    assert "<td class=\"l\">job</td><td class=\"l\">registry</td><td class=\"l\">sha256:m</td>" in page
    assert f'<td class="l">images.lock.json</td><td class="l">{data["image_lock"]}</td>' in page
    assert f'<td class="l">r2</td><td class="l">vm_features_2.json</td><td class="l">{sha(b"[1]")}</td>' in page
    first = (tree / "p.html").read_bytes()
    assert cli.main(argv) == 0 and (tree / "p.html").read_bytes() == first
    assert str(tree) not in page  # no absolute paths
