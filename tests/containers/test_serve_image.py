"""The vmpower-serve image (containers/Dockerfile.serve, deploy/kubernetes/daemonset.yaml):
pinned with today's source, lean, exactly envs/serve.lock, and it serves a real exported model
as the DaemonSet runs it: non-root, read-only root file system, read-only models, /proc and /sys.

Marker `docker`: the fixture runs `IMAGES=serve scripts/build-images.sh` (seconds when the image
is up to date; it starts the engine and builds the base and the image otherwise).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "containers" / "images.lock.json"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
MAX_SERVE_MB = 460  # 433 MB: base 116 + pyarrow 107 + onnxruntime 59 + pandas 39 + numpy 56
MODEL_PATH = "/var/lib/kepler/vm-models"
# What the DaemonSet grants: nobody, nothing writable but an in-memory /tmp, no capabilities.
LOCKED_DOWN = ("--read-only", "--user", "65534:65534", "--tmpfs", "/tmp:size=16m", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges")


def sh(*args, check=True, **kw):
    return subprocess.run(args, capture_output=True, text=True, check=check, **kw)


@pytest.fixture(scope="module")
def image():
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "IMAGES": "serve"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(LOCK.read_text())["images"]["serve"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A real exported model (the pipeline's own steps, one trainer) in a directory nobody can read."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bench import predict_artifacts

    root = tmp_path_factory.mktemp("serve-image")
    saved = predict_artifacts.MODELS
    predict_artifacts.MODELS = [("AbsPower", "SystemOnly", ["LinearRegression"])]
    try:
        art = predict_artifacts.build(root / "build")
    finally:
        predict_artifacts.MODELS = saved
    (archive,) = sorted((art["results"] / "models").rglob("*.zip"))
    models = root / "models"
    models.mkdir()
    shutil.copy(archive, models / archive.name)
    (models / archive.name).chmod(0o444)
    models.chmod(0o555)
    art["vm_files"]["run02-mix"].parent.chmod(0o755)  # mounted for the predict test
    meta = json.loads(zipfile.ZipFile(archive).read(next(n for n in zipfile.ZipFile(archive).namelist()
                                                          if n.endswith("metadata.json"))))
    return {"dir": models, "zones": set(meta["zones"]), "features": art["vm_files"]["run02-mix"]}


def app_files_sha256() -> str:
    """What scripts/build-images.sh hashes as the image's source (its app_files)."""
    out = sh("git", "ls-files", "-co", "--exclude-standard", "--", "src/vmpower", "schemas", "config.yaml",
             cwd=ROOT).stdout.splitlines()
    files = sorted((f for f in out if "/__pycache__/" not in f and not f.endswith(".pyc") and (ROOT / f).is_file()),
                   key=os.fsencode)
    listing = "".join(f"{hashlib.sha256((ROOT / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def test_serve_image_is_pinned_with_todays_lock_and_source(image):
    d = image["docker"]
    assert image["name"] == "vmpower-serve" and image["env_lock"] == "envs/serve.lock"
    assert d["id"].startswith("sha256:") and len(d["id"]) == 71
    assert sh(DOCKER, "image", "inspect", "--format", "{{.Id}}", d["id"]).stdout.strip() == d["id"]
    assert sh(DOCKER, "image", "inspect", "--format", "{{.Id}}", "vmpower-serve:latest").stdout.strip() == d["id"]
    assert d["env_lock_sha256"] == hashlib.sha256((ROOT / "envs" / "serve.lock").read_bytes()).hexdigest()
    assert d["source_sha256"] == app_files_sha256()
    # the source in the image is the checkout's, byte for byte
    want = hashlib.sha256((ROOT / "src" / "vmpower" / "serving" / "exporter.py").read_bytes()).hexdigest()
    got = sh(DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sha256sum", d["id"],
             "/opt/vmpower/src/vmpower/serving/exporter.py").stdout.split()[0]
    assert got == want


def lock_pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")) and "==" in line:
            name, version = line.split()[0].split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_serve_image_is_lean_and_exactly_its_lock(image):
    size_mb = image["docker"]["size_bytes"] / 1e6
    print(f"vmpower-serve: {size_mb:.0f} MB")
    assert size_mb < MAX_SERVE_MB
    out = sh(DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sh", image["docker"]["id"], "-c", r"""
        for b in gcc cc make ld pip pip3 perf; do command -v $b && echo "HAS $b"; done
        ls -d /wheels /opt/venv/lib/python3.11/site-packages/pip /opt/venv/lib/python3.11/site-packages/sklearn \
              /opt/venv/lib/python3.11/site-packages/xgboost /opt/venv/lib/python3.11/site-packages/snakemake \
              /opt/venv/lib/python3.11/site-packages/scipy /opt/venv/lib/python3.11/site-packages/matplotlib 2>/dev/null | sed 's/^/HAS /'
        find /opt/venv -type d -name tests | head -3 | sed 's/^/HAS /'
        find /opt/vmpower -mindepth 1 -newermt @1 | head -3 | sed 's/^/HAS new /'
        true
    """).stdout
    assert "HAS" not in out, out
    dists = sh(DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "python3", image["docker"]["id"], "-c",
               "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): "
               "d.version for d in m.distributions()}))").stdout
    assert json.loads(dists) == lock_pins(ROOT / "envs" / "serve.lock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_image_serves_a_model_non_root_read_only(image, model):
    """The image's own ENTRYPOINT and CMD (the model directory at the EP's model_path), published
    on loopback: kepler_node_cpu_watts for every zone of the model."""
    port = free_port()
    name = f"vmpower-serve-test-{os.getpid()}"
    run = [DOCKER, "run", "-d", "--rm", "--name", name, *LOCKED_DOWN, "-p", f"127.0.0.1:{port}:9102",
           "-v", f"{model['dir']}:{MODEL_PATH}:ro", "-v", "/proc:/host/proc:ro", "-v", "/sys:/host/sys:ro",
           image["docker"]["id"]]
    sh(*run)
    try:
        deadline, zones, last = time.monotonic() + 40, {}, None
        while time.monotonic() < deadline:
            try:
                m = scrape(port)
                zones = {s.labels["zone"]: s.value for s in m.get("kepler_node_cpu_watts", [])}
                if set(zones) == model["zones"]:
                    break
            except (OSError, ValueError) as exc:
                last = exc
            if sh(DOCKER, "inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
                pytest.fail("serve exited: " + sh(DOCKER, "logs", name, check=False).stderr[-3000:])
            time.sleep(0.5)
        assert set(zones) == model["zones"], (zones, last, sh(DOCKER, "logs", name, check=False).stderr[-3000:])
        assert all(math.isfinite(v) and v >= 0 for v in zones.values()), zones
        # as the DaemonSet runs it: nobody, nothing writable but /tmp, models and host trees read-only
        probe = sh(DOCKER, "exec", name, "sh", "-c",
                   "id -u; id -g; for d in / " + MODEL_PATH + " /host/proc /host/sys /sys; do "
                   "awk -v d=$d '$2 == d {split($4, o, \",\"); m = o[1]} END {print d, m}' /proc/mounts; done; "
                   "if touch /tmp/.w; then echo /tmp writable; fi").stdout.splitlines()
        assert probe[:2] == ["65534", "65534"], probe
        assert probe[2:] == [f"{d} ro" for d in ("/", MODEL_PATH, "/host/proc", "/host/sys", "/sys")] + ["/tmp writable"]
    finally:
        sh(DOCKER, "rm", "-f", name, check=False)


def test_predict_in_the_image_matches_the_checkout(image, model):
    """`vmpower predict` in the image (no network, read-only) gives the same bytes as the checkout's venv."""
    feats = model["features"]
    proc = sh(DOCKER, "run", "--rm", "--network", "none", *LOCKED_DOWN, "-v", f"{model['dir']}:{MODEL_PATH}:ro",
              "-v", f"{feats.parent}:/in:ro", image["docker"]["id"], "predict", "--model", MODEL_PATH,
              "--input", f"/in/{feats.name}", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = sh(sys.executable, "-m", "vmpower", "predict", "--model", str(model["dir"]), "--input", str(feats),
               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stdout and proc.stdout == local.stdout
