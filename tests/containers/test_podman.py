"""Podman: the runner works, and two independent no-cache builds give the same image ID (stretch goal).

Marker `docker` (needs a container engine); skipped when podman is not installed
(`apt-get install podman`). VMPOWER_REPRO_IMAGES="pipeline collect" checks both images
(default: collect, the quick one; the pipeline image takes a few minutes per build).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmpower.ops import runtime

pytestmark = [pytest.mark.docker, pytest.mark.skipif(not shutil.which("podman"), reason="podman not installed")]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "ENGINE": "podman", "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf")}


def build(lock: Path, images: str, no_cache: bool) -> dict:
    env = {**ENV, "IMAGES": images, "LOCK_JSON": str(lock)}
    if no_cache:
        env["NO_CACHE"] = "1"
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(lock.read_text())


def test_two_no_cache_builds_same_id(tmp_path):
    images = os.environ.get("VMPOWER_REPRO_IMAGES", "collect")
    first = build(tmp_path / "a.json", images, no_cache=True)
    second = build(tmp_path / "b.json", images, no_cache=True)
    for image in images.split():
        a, b = first["images"][image]["podman"]["id"], second["images"][image]["podman"]["id"]
        print(f"vmpower-{image} (podman): {a} / {b}")
        assert a == b


def test_podman_job(tmp_path, monkeypatch):
    lock = build(tmp_path / "lock.json", "collect", no_cache=False)
    wd = tmp_path / "work"
    shutil.copytree(ROOT / "src", wd / "src", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(wd)
    runtime._probe_image.cache_clear()
    config = {"runtime": "podman", "containers": {"lock": str(tmp_path / "lock.json"),
                                                  "podman_conf": str(ROOT / "containers" / "containers.conf")}}
    prefix = runtime.command(config, image="collect")
    script = "import json, os, vmpower.ops.provenance as p; print(json.dumps([p.image_digest(), os.getcwd()]))"
    cmd = prefix.rsplit(" -m vmpower", 1)[0] + f" -c '{script}'"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [lock["images"]["collect"]["podman"]["id"], str(wd)]
