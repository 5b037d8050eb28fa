"""The built images: present and pinned, lean, offline-buildable, and jobs run as the invoking user.

Marker `docker`: the session fixture runs scripts/build-images.sh (idempotent: seconds when the
images are up to date; it installs/starts the engine and builds them otherwise).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from vmpower.ops import runtime

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "containers" / "images.lock.json"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
MAX_PIPELINE_MB = 700


def sh(*args, check=True, **kw):
    return subprocess.run(args, capture_output=True, text=True, check=check, **kw)


@pytest.fixture(scope="session")
def lock():
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(LOCK.read_text())


def image_id(lock, image="pipeline"):
    return lock["images"][image]["docker"]["id"]


def in_image(lock, script, image="pipeline", *extra):
    return sh(DOCKER, "run", "--rm", "--network", "none", *extra, image_id(lock, image), "sh", "-c", script)


def test_lock_holds_digests(lock):
    for image in ("pipeline", "collect"):
        entry = lock["images"][image]
        iid = entry["docker"]["id"]
        assert iid.startswith("sha256:") and len(iid) == 71
        # the engine has exactly that image
        assert sh(DOCKER, "image", "inspect", "--format", "{{.Id}}", iid).stdout.strip() == iid
        # built from today's env lock
        import hashlib

        assert entry["docker"]["env_lock_sha256"] == hashlib.sha256((ROOT / entry["env_lock"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("image", ["pipeline", "collect"])
def test_image_is_lean(lock, image):
    size_mb = lock["images"][image]["docker"]["size_bytes"] / 1e6
    print(f"vmpower-{image}: {size_mb:.0f} MB")
    if image == "pipeline":
        assert size_mb < MAX_PIPELINE_MB
    out = in_image(lock, r"""
        for b in gcc cc c++ g++ make ld as pip pip3; do command -v $b && echo "HAS $b"; done
        ls /opt/venv/bin | grep -E '^pip' && echo "HAS venv pip"
        ls -d /root/.cache /tmp/.cache /wheels /opt/venv/lib/python3.11/site-packages/pip 2>/dev/null | sed 's/^/HAS /'
        find / -xdev \( -name 'libcudart*' -o -name 'libcublas*' -o -name 'nvidia' \) 2>/dev/null | sed 's/^/HAS /'
        find /opt/venv -type d -name tests | head -3 | sed 's/^/HAS /'
        ls /var/lib/apt/lists | grep -v lock | head -3 | sed 's/^/HAS apt list /'
        ls /usr/share/doc | head -3 | sed 's/^/HAS doc /'
        true
    """, image).stdout
    assert "HAS" not in out, out


def test_pipeline_image_imports_locked_versions(lock):
    """The image's packages are exactly envs/pipeline.lock."""
    pins = {}
    for line in (ROOT / "envs" / "pipeline.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")) and "==" in line:
            name, version = line.split()[0].split("==")
            pins[name.lower().replace("_", "-")] = version
    out = in_image(lock, "python3 -c 'import importlib.metadata as m, json; "
                         "print(json.dumps({d.metadata[\"Name\"].lower().replace(\"_\", \"-\"): d.version for d in m.distributions()}))'").stdout
    assert json.loads(out) == pins


def test_build_is_offline(lock, tmp_path):
    """`--network none` really has no network, and an image builds that way from the wheelhouse."""
    df = tmp_path / "Dockerfile"
    df.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\"\n")
    proc = subprocess.run([DOCKER, "build", "--network", "none", "--build-arg", "BASE_IMAGE=vmpower-base:bookworm",
                           "-f", str(df), str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "DOCKER_BUILDKIT": "1"})
    assert proc.returncode != 0 and "unreachable" in (proc.stdout + proc.stderr).lower()
    # A no-cache rebuild of the collectors image (small) with --network none, into a scratch lock.
    scratch_lock = tmp_path / "images.lock.json"
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "IMAGES": "collect", "NO_CACHE": "1", "LOCK_JSON": str(scratch_lock)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(scratch_lock.read_text())["images"]["collect"]["docker"]["id"].startswith("sha256:")


def job_config(tmp_path):
    return {"runtime": "docker", "raw_dir": "data/raw", "results_dir": "results",
            "containers": {"lock": str(LOCK), "registry": "", "engine_binary": {"docker": DOCKER}}}


def test_job_runs_as_invoking_user_offline_with_only_workdir(lock, tmp_path, monkeypatch):
    wd = tmp_path / "work"
    shutil.copytree(ROOT / "src", wd / "src", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(wd)
    # Pretend to be an unprivileged user who owns the workdir: what the job writes must be its.
    if os.geteuid() == 0:
        for p in [wd, *wd.rglob("*")]:
            os.lchown(p, 4242, 4343)
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.setattr(os, "getgid", lambda: 4343)
    runtime._probe_image.cache_clear()
    prefix = runtime.command(job_config(tmp_path))
    assert "--user 4242:4343" in prefix
    script = (
        "import json, os, socket, vmpower.ops.provenance as p\n"
        "os.makedirs('results', exist_ok=True)\n"
        "open('results/out.txt', 'w').write('x')\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); net = True\n"
        "except OSError:\n    net = False\n"
        f"json.dump({{'env': p.environment(), 'uid': os.getuid(), 'home': os.environ['HOME'], 'net': net,"
        f" 'repo_visible': os.path.exists({str(ROOT / 'Makefile')!r}), 'cwd': os.getcwd()}}, open('results/job.json', 'w'))\n"
    )
    cmd = prefix.rsplit(" -m vmpower", 1)[0] + " -c " + shlex.quote(script)
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((wd / "results" / "job.json").read_text())
    for f in (wd / "results", wd / "results" / "out.txt", wd / "results" / "job.json"):
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (4242, 4343), f
    assert info["uid"] == 4242 and info["home"] == "/tmp" and info["cwd"] == str(wd)
    assert info["net"] is False and info["repo_visible"] is False
    assert info["env"]["image_digest"] == image_id(lock)
    assert info["env"]["python"] == "3.11"
    # no container left behind
    assert sh(DOCKER, "ps", "-aq", "--filter", f"ancestor={image_id(lock)}").stdout.strip() == ""


def test_vmpower_cli_runs_in_image(lock, tmp_path, monkeypatch):
    """`python3 -m vmpower` resolves from the mounted source and writes provenance with the digest."""
    wd = tmp_path / "work"
    shutil.copytree(ROOT / "src", wd / "src", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(wd)
    runtime._probe_image.cache_clear()
    prefix = runtime.command(job_config(tmp_path))
    proc = subprocess.run(["bash", "-c", prefix + " --help"], capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0 and "vmpower" in proc.stdout, proc.stderr
