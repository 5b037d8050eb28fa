"""The workflow on runs written exactly as the seed's collectors write them (synth profile legacy,
tests/data/legacy.yaml): per-interval sys_* fields, perf zeros, 1 s host samples of ~1.7 s Kepler
steps. The build must keep the VM samples and export the models."""

import json
import shutil
from pathlib import Path

import pytest

from workflow import make_workspace, snakemake, vmpower

pytestmark = pytest.mark.slow

OVERLAY = Path(__file__).resolve().parent / "data" / "legacy.yaml"
NT = "demo-legacy-kvm"
TRAINERS = ("LinearRegression", "GradientBoostingRegressor")


def _kept_fraction(q: dict) -> float:
    """Share of the run's VM samples that reached the merged data."""
    if "kept_fraction" in q:
        return float(q["kept_fraction"])
    kept = q["vm_samples_matched"] if "vm_samples_matched" in q else q["rows_kept"]
    return kept / q["vm_samples"]


@pytest.fixture(scope="module")
def legacy_build(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("legacy"), demo=False)
    shutil.copy(OVERLAY, ws / "legacy.yaml")
    vmpower(ws, "synth", "--config", "config.yaml", "--config", "legacy.yaml", "--node-type", NT,
            "--out", "data/raw")
    res = snakemake(ws, "--cores", "1", "--configfile", "config.yaml", "legacy.yaml", check=False)
    return ws, res


def test_legacy_runs_keep_their_vm_samples(legacy_build):
    ws, res = legacy_build
    qualities = sorted((ws / "results/merged" / NT).glob("*.quality.json"))
    assert len(qualities) == 3, f"merge did not write every run's quality.json:\n{res.stderr[-3000:]}"
    for path in qualities:
        q = json.loads(path.read_text())
        kept = _kept_fraction(q)
        assert kept >= 0.9, f"{path.name}: kept {kept:.1%} of {q['vm_samples']} VM samples; dropped {q['rows_dropped']}"


def test_legacy_models_are_exported(legacy_build):
    ws, res = legacy_build
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    for trainer in TRAINERS:
        model = ws / "results/models/AbsPower/SystemOnly" / f"{trainer}Trainer_{NT}"
        assert (model.parent / (model.name + ".zip")).is_file(), model
        assert list(model.glob("*.onnx")), model
        meta = json.loads((model / "metadata.json").read_text())
        assert meta, model
