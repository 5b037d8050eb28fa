"""`make ci-models` end to end (what .github/workflows/models.yml runs): pinned images, the
workflow under runtime=docker, the report, the quality gate and the artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import demo  # noqa: E402

ROOT = demo.ROOT
pytestmark = [pytest.mark.slow, pytest.mark.docker]


def make(wd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=wd, capture_output=True, text=True,
                          env={**env, "PYTHONHASHSEED": "0"}, timeout=1800)
    if check:
        assert proc.returncode == 0, f"make {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def images():
    """The pinned images (built by the suite's images phase; built here when run alone)."""
    lock = json.loads((ROOT / "containers/images.lock.json").read_text())
    ids = [img["docker"]["id"] for img in lock["images"].values() if img.get("docker")]
    if not ids or subprocess.run(["docker", "image", "inspect", *ids], capture_output=True).returncode != 0:
        proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_make_ci_models_builds_in_docker_gates_and_publishes(images, tmp_path):
    wd = demo.make_workdir(tmp_path / "wd")
    (wd / ".venv").symlink_to(demo.VENV_BIN.parent)
    # One node type, two trainers: the whole CI path at a fraction of the demo's cost.
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["synth"]["node_types"] = {"demo-xeon-e5": cfg["synth"]["node_types"]["demo-xeon-e5"]}
    cfg["train"].update({"feature_groups": ["Full"], "trainers": ["LinearRegression", "XGBRegressor"]})
    cfg["gate"]["baseline"] = "models/ci-baseline.json"
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # The accepted baseline comes from a plain local build (docker outputs are byte-identical).
    make(wd, "run")
    make(wd, "accept-models")
    baseline = json.loads((wd / "models/ci-baseline.json").read_text())
    assert list(baseline["models"]) == ["demo-xeon-e5"]

    proc = make(wd, "ci-models", "CI_SKIP_IMAGES=1")
    out = proc.stdout + proc.stderr
    assert "ci-models: quality gate passed" in out
    art = wd / "build/ci-artifacts"
    assert "PASSED" in (art / "gate.md").read_text()
    assert "demo-xeon-e5" in (art / "changelog.md").read_text()
    assert (art / "report.html").stat().st_size > 100_000  # figures are embedded
    assert len(list((art / "models").glob("*/*/*.zip"))) == 2 * 2
    assert len(list((art / "metrics").rglob("metrics.json"))) == 2 * 2
    # Every job ran in the locked pipeline image (the workflow's own image check passed too).
    lock = json.loads((wd / "containers/images.lock.json").read_text())["images"]["pipeline"]
    for record in (wd / "results/provenance/train").rglob("*.json"):
        assert json.loads(record.read_text())["environment"]["image_digest"] == lock["docker"]["id"]

    # A baseline the build cannot meet: the gate fails, names the zone and prints old vs new.
    worse = json.loads((wd / "models/ci-baseline.json").read_text())
    model = worse["models"]["demo-xeon-e5"]["AbsPower"]["Full"]
    model["zones"]["dram"]["mae"] = model["zones"]["dram"]["mae"] / 2
    (wd / "models/ci-baseline.json").write_text(json.dumps(worse))
    proc = make(wd, "gate", check=False)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout and "dram" in proc.stderr and "demo-xeon-e5" in proc.stderr
