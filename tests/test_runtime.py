"""vmpower.ops.runtime without a container engine: the runner command, image references, checks."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pytest

from vmpower.ops import runtime
from vmpower.errors import InputError

ID = "sha256:" + "a" * 64
PODMAN_ID = "sha256:" + "b" * 64
MANIFEST = "sha256:" + "c" * 64


def write_lock(path: Path, env_lock: Path, manifest: bool = False) -> Path:
    import hashlib

    sha = hashlib.sha256(env_lock.read_bytes()).hexdigest()
    entry = {
        "name": "vmpower-pipeline",
        "env_lock": str(env_lock),
        "docker": {"id": ID, "env_lock_sha256": sha, "inputs": "x", "size_bytes": 1},
        "podman": {"id": PODMAN_ID, "env_lock_sha256": sha, "inputs": "y", "size_bytes": 1},
    }
    if manifest:
        entry["manifest_digest"] = MANIFEST
        entry["manifest_of"] = {"engine": "docker", "id": ID}
    path.write_text(json.dumps({"version": 1, "images": {"pipeline": entry}}))
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A workdir with a lock and a fake engine binary that reports the image as present."""
    env_lock = tmp_path / "pipeline.lock"
    env_lock.write_text("numpy==1 --hash=sha256:00\n")
    lock = write_lock(tmp_path / "images.lock.json", env_lock)
    engine = tmp_path / "fake-docker"
    engine.write_text("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/engine-calls\"\necho " + ID + "\n")
    engine.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    runtime._probe_image.cache_clear()
    config = {"runtime": "docker", "raw_dir": "data/raw", "results_dir": "results",
              "containers": {"lock": str(lock), "registry": "",
                             "engine_binary": {"docker": str(engine), "podman": str(engine)}}}
    return config, tmp_path


def test_local_is_this_python():
    assert runtime.command({"runtime": "local"}) == f"{shlex.quote(sys.executable)} -m vmpower"
    assert runtime.command({}) .endswith("-m vmpower")


def test_docker_command_flags(setup):
    config, wd = setup
    cmd = runtime.command(config)
    args = shlex.split(cmd)
    assert args[1] == "run"
    assert "--rm" in args
    assert args[args.index("--network") + 1] == "none"
    import os

    assert args[args.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    for detached in ("-d", "--detach", "-it", "-t", "--tty"):
        assert detached not in args
    # Only the working directory is mounted, at the same path.
    mounts = [args[i + 1] for i, a in enumerate(args) if a in ("-v", "--volume", "--mount")]
    assert mounts == [f"{wd}:{wd}"]
    assert args[args.index("-w") + 1] == str(wd)
    envs = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    assert f"PYTHONPATH={wd}/src" in envs
    assert "HOME=/tmp" in envs and "PYTHONHASHSEED=0" in envs
    assert f"VMPOWER_IMAGE_DIGEST={ID}" in envs
    assert "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}" in envs  # shell-expanded at job time
    # The image by its immutable ID, then the module.
    assert args[-4:] == [ID, "python3", "-m", "vmpower"]
    # The engine was asked whether it has the image (once, cached).
    runtime.command(config)
    assert (wd / "engine-calls").read_text().count("image inspect") == 1


def test_podman_command_uses_containers_conf(setup):
    config, wd = setup
    config["runtime"] = "podman"
    cmd = runtime.command(config)
    assert cmd.startswith("CONTAINERS_CONF=")
    assert cmd.split()[0].endswith("containers/containers.conf")
    assert PODMAN_ID in cmd and "--network none" in cmd and "--rm" in cmd


def test_apptainer_command_is_plain_python(setup):
    config, wd = setup
    write_lock(Path(config["containers"]["lock"]), wd / "pipeline.lock", manifest=True)
    cmd = runtime.command({**config, "runtime": "apptainer"})
    assert cmd.endswith("python3 -m vmpower")
    assert f"PYTHONPATH={wd}/src" in cmd and f"VMPOWER_IMAGE_DIGEST={MANIFEST}" in cmd
    assert "docker" not in cmd


def test_container_ref(setup):
    config, wd = setup
    assert runtime.container_ref(config) is None  # no registry configured
    config["containers"]["registry"] = "registry.invalid/vmpower"
    with pytest.raises(InputError, match="no registry manifest digest"):
        runtime.container_ref(config)  # registry configured but never pushed
    write_lock(Path(config["containers"]["lock"]), wd / "pipeline.lock", manifest=True)
    assert runtime.container_ref(config) == f"docker://registry.invalid/vmpower/vmpower-pipeline@{MANIFEST}"
    config["containers"]["lock"] = str(wd / "missing.json")
    assert runtime.container_ref(config) is None


@pytest.mark.parametrize("rt", ["docker", "podman"])
def test_missing_lock_is_one_clear_line(setup, rt):
    config, wd = setup
    config["runtime"] = rt
    config["containers"]["lock"] = str(wd / "nope.json")
    with pytest.raises(InputError) as err:
        runtime.command(config)
    msg = str(err.value)
    assert "\n" not in msg and "make images" in msg and "missing" in msg


def test_engine_not_running(setup):
    config, wd = setup
    dead = wd / "dead-docker"
    dead.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                    "Is the docker daemon running?' >&2\nexit 1\n")
    dead.chmod(0o755)
    config["containers"]["engine_binary"] = {"docker": str(dead)}
    with pytest.raises(InputError) as err:
        runtime.command(config)
    msg = str(err.value)
    assert "\n" not in msg and "not running" in msg and "make images" in msg


def test_image_missing_from_engine(setup):
    config, wd = setup
    gone = wd / "gone-docker"
    gone.write_text("#!/bin/sh\necho 'Error: No such image: x' >&2\nexit 1\n")
    gone.chmod(0o755)
    config["containers"]["engine_binary"] = {"docker": str(gone)}
    with pytest.raises(InputError, match="not in this engine: run `make images`"):
        runtime.command(config)


def test_stale_image_after_lock_change(setup):
    config, wd = setup
    (wd / "pipeline.lock").write_text("numpy==2 --hash=sha256:11\n")
    with pytest.raises(InputError, match="older .*make images"):
        runtime.command(config)


def test_results_outside_workdir_refused(setup):
    config, wd = setup
    config["results_dir"] = "/elsewhere/results"
    with pytest.raises(InputError, match="outside the working directory"):
        runtime.command(config)


def write_prov(path: Path, digest: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "train", "environment": {"image_digest": digest, "python": "3.11"}}))
    return path


def test_check_outputs(setup):
    config, wd = setup
    lock = config["containers"]["lock"]
    prov = wd / "results" / "provenance"
    write_prov(prov / "merge" / "a.json", ID)
    write_prov(prov / "train" / "b.json", ID)
    assert runtime.check_outputs([prov], lock, runtime="docker") == []
    # runtime=local records say "local"
    problems = runtime.check_outputs([prov], lock, runtime="local")
    assert len(problems) == 2 and all("local" in p for p in problems)
    # One job ran in another image: named, with both digests.
    other = "sha256:" + "d" * 64
    bad = write_prov(prov / "train" / "c.json", other)
    problems = runtime.check_outputs([prov], lock, runtime="docker")
    assert len(problems) == 1 and str(bad) in problems[0] and other in problems[0] and ID in problems[0]
    # podman builds are checked against the podman ID.
    assert len(runtime.check_outputs([prov], lock, runtime="podman")) == 3
    assert runtime.check_outputs([wd / "nothing"], lock, runtime="docker") == ["no provenance records found"]


def cli(argv):
    parser = argparse.ArgumentParser(prog="vmpower")
    runtime.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_images_cli(setup, capsys):
    config, wd = setup
    lock = config["containers"]["lock"]
    prov = wd / "results" / "provenance"
    write_prov(prov / "x.json", ID)
    assert cli(["check-images", "--runtime", "docker", "--lock", lock, "--ok-file", str(wd / "ok.txt"), str(prov)]) == 0
    assert (wd / "ok.txt").read_text().startswith("1 provenance records")
    write_prov(prov / "y.json", "sha256:" + "e" * 64)
    assert cli(["check-images", "--runtime", "docker", "--lock", lock, str(prov)]) == 1
    err = capsys.readouterr().err
    assert "y.json" in err and "FAILED" in err
    # runtime read from a config file
    cfg = wd / "c.yaml"
    cfg.write_text(f"runtime: local\ncontainers: {{lock: {lock}}}\n")
    write_prov(prov / "x.json", "local")
    (prov / "y.json").unlink()
    assert cli(["check-images", "--config", str(cfg), str(prov)]) == 0
