"""The demo workflow in containers: digest-pinned `container:` refs, byte-identical outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import demo  # noqa: E402

ROOT = demo.ROOT
MANIFEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A scratch copy of the repository with the demo data."""
    wd = demo.make_workdir(tmp_path_factory.mktemp("seed") / "wd")
    demo.synth(wd)
    return wd


@pytest.mark.slow
def test_sdm_apptainer_dry_run_shows_digest_refs(seed, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(seed, wd, symlinks=True)
    lock = {"version": 1, "images": {"pipeline": {"name": "vmpower-pipeline", "env_lock": "envs/pipeline.lock",
                                                  "manifest_digest": MANIFEST}}}
    (wd / "containers" / "images.lock.json").write_text(json.dumps(lock))
    overlay = wd / "registry.yaml"
    overlay.write_text("containers: {lock: containers/images.lock.json, registry: registry.invalid/vmpower}\n")
    # Apptainer is not installable here; Snakemake only asks it for its version on a dry run.
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "apptainer").write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    (fakebin / "apptainer").chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(demo.VENV_BIN / "snakemake"), "-n", "--sdm", "apptainer", "--configfile", "config.yaml", str(overlay),
         str(demo.SMALL), "--config", "runtime=apptainer", "--printshellcmds"],
        cwd=wd, capture_output=True, text=True, env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    refs = set(re.findall(r"docker://[^\s,]+", out))
    assert refs == {f"docker://registry.invalid/vmpower/vmpower-pipeline@{MANIFEST}"}, out[-3000:]
    # the jobs themselves are plain python with the digest exported for provenance
    assert f"VMPOWER_IMAGE_DIGEST={MANIFEST}" in out


@pytest.mark.slow
@pytest.mark.docker
def test_docker_outputs_identical_to_local(seed, tmp_path):
    """Same locked wheels -> the same bytes, whichever runtime ran the jobs; timings recorded."""
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs, hashes = {}, {}
    for rt in ("local", "docker"):
        wd = tmp_path / rt
        shutil.copytree(seed, wd, symlinks=True)
        shutil.copy2(ROOT / "containers" / "images.lock.json", wd / "containers" / "images.lock.json")
        runs[rt] = demo.run_demo(wd, rt, configfile=demo.SMALL)
        hashes[rt] = demo.result_hashes(wd)
        # every job recorded the image it ran in, and it is the locked one
        check = subprocess.run([str(demo.VENV_BIN / "python"), "-c",
                                "import sys; from vmpower.ops import runtime; "
                                "p = runtime.check_outputs(['results/provenance'], 'containers/images.lock.json', runtime=sys.argv[1]); "
                                "print(*p, sep='\\n'); sys.exit(bool(p))", rt],
                               cwd=wd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(wd / "src")})
        assert check.returncode == 0, check.stdout + check.stderr
    assert hashes["local"], "no outputs"
    differing = sorted(k for k in hashes["local"].keys() | hashes["docker"].keys()
                       if hashes["local"].get(k) != hashes["docker"].get(k))
    overhead = 100 * (runs["docker"]["seconds"] - runs["local"]["seconds"]) / runs["local"]["seconds"]
    report = {"runs": list(runs.values()), "overhead_percent": round(overhead, 1), "outputs": len(hashes["local"])}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "test-runtime-overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"local {runs['local']['seconds']}s, docker {runs['docker']['seconds']}s: {overhead:+.1f}%")
    assert not differing, f"{len(differing)} outputs differ, e.g. {differing[:10]}"
