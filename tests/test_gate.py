"""The model quality gate, accept-models and the changelog (fast: synthetic summaries), and the
CI workflow file against GitHub's workflow schema."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmpower.ops import gate

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["node_type", "output_type", "feature_group", "trainer", "zone", "status", "mae", "mape", "rmse", "r2",
           "heldout_rows", "n_features", "onnx_max_abs_diff", "best"]
ZONES = ("package", "core")
TOLERANCE = {"mae": {"relative": 0.05, "absolute": 0.05}, "mape": {"relative": 0.05, "absolute": 0.25}}


def write_summary(path: Path, node_types=("nt-a", "nt-b"), zones=ZONES, worse: dict | None = None) -> Path:
    """Two trainers per model; LinearRegression is the best. ``worse``: {(nt, zone): factor} on its MAE."""
    worse = worse or {}
    rows = []
    for n, nt in enumerate(node_types):
        for ot in ("AbsPower", "DynPower"):
            for tr, scale, best in (("LinearRegression", 1.0, True), ("XGBRegressor", 1.5, False)):
                for k, zone in enumerate(zones):
                    mae = (2.0 + n + 0.5 * k) * scale * worse.get((nt, zone), 1.0)
                    rows.append({"node_type": nt, "output_type": ot, "feature_group": "Full", "trainer": tr,
                                 "zone": zone, "status": "trained", "mae": mae, "mape": 4.0 * scale, "rmse": mae * 1.3,
                                 "r2": 0.9, "heldout_rows": 100, "n_features": 5, "onnx_max_abs_diff": 1e-6,
                                 "best": best})
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def write_inputs(dir_: Path, runs: dict) -> list[str]:
    """Report provenance files: {node_type: {run: sha}}."""
    paths = []
    for nt, by_run in runs.items():
        p = dir_ / "report" / nt / "provenance.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"node_type": nt, "runs": {r: {f"vm_{r}.json": sha} for r, sha in by_run.items()}}))
        paths.append(str(p))
    return paths


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "vmpower", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def base(tmp_path):
    summary = write_summary(tmp_path / "base.csv")
    inputs = write_inputs(tmp_path / "base", {"nt-a": {"r1": "aa", "r2": "bb"}, "nt-b": {"r1": "cc"}})
    baseline = tmp_path / "baseline.json"
    res = cli("accept-models", "--summary", str(summary), "--inputs", *inputs, "--output", str(baseline))
    assert res.returncode == 0, res.stderr
    return tmp_path, baseline


def run_gate(tmp_path, baseline, summary):
    return cli("gate", "--config", str(ROOT / "config.yaml"), "--summary", str(summary), "--baseline", str(baseline),
               "--output", str(tmp_path / "gate.md"))


def test_accept_models_writes_the_baseline(base):
    _, baseline = base
    data = json.loads(baseline.read_text())
    assert data["format"] == gate.BASELINE_FORMAT
    m = data["models"]["nt-a"]["AbsPower"]["Full"]
    assert m["trainer"] == "LinearRegression"
    assert m["zones"]["package"] == {"mae": 2.0, "mape": 4.0} and m["zones"]["core"]["mae"] == 2.5
    assert sorted(data["models"]) == ["nt-a", "nt-b"]
    assert data["inputs"] == {"nt-a": {"r1": {"vm_r1.json": "aa"}, "r2": {"vm_r2.json": "bb"}},
                              "nt-b": {"r1": {"vm_r1.json": "cc"}}}
    assert "/tmp" not in baseline.read_text()  # no absolute paths, no timestamps


def test_accept_models_is_deterministic(base, tmp_path):
    _, baseline = base
    again = tmp_path / "again.json"
    inputs = sorted(str(p) for p in (tmp_path / "base").rglob("provenance.json"))
    cli("accept-models", "--summary", str(tmp_path / "base.csv"), "--inputs", *inputs, "--output", str(again))
    assert again.read_bytes() == baseline.read_bytes()


def test_gate_passes_on_equal_metrics(base):
    tmp_path, baseline = base
    res = run_gate(tmp_path, baseline, tmp_path / "base.csv")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED" in res.stderr
    # the old-vs-new table: one row per node_type/output type/feature group/zone
    table = [line for line in res.stdout.splitlines() if line.startswith("| nt-")]
    assert len(table) == 2 * 2 * 1 * 2
    assert "| nt-a | AbsPower | Full | package | LinearRegression | 2.000 | 2.000 | +0.000 |" in res.stdout
    assert (tmp_path / "gate.md").read_text().startswith("# Model quality gate: PASSED")


def test_gate_fails_when_worse_beyond_tolerance(base):
    tmp_path, baseline = base
    # within tolerance: 2.0 -> 2.09 W (allowed 2.0 + max(5 %, 0.05 W) = 2.1)
    ok = write_summary(tmp_path / "ok.csv", worse={("nt-a", "package"): 1.045})
    assert run_gate(tmp_path, baseline, ok).returncode == 0
    bad = write_summary(tmp_path / "bad.csv", worse={("nt-a", "package"): 1.10})
    res = run_gate(tmp_path, baseline, bad)
    assert res.returncode == 1
    assert "FAILED" in res.stderr
    assert "nt-a/AbsPower/Full package: held-out MAE 2 -> 2.2 W (allowed up to 2.1)" in res.stderr
    assert "| nt-a | AbsPower | Full | package | LinearRegression | 2.000 | 2.200 | +0.200 |" in res.stdout
    assert "WORSE" in res.stdout


def test_gate_tolerance_comes_from_config(base, tmp_path):
    _, baseline = base
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["gate"]["tolerance"]["mae"] = {"relative": 0.2, "absolute": 0.0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    bad = write_summary(tmp_path / "bad.csv", worse={("nt-a", "package"): 1.10})
    res = cli("gate", "--config", str(tmp_path / "config.yaml"), "--summary", str(bad), "--baseline", str(baseline))
    assert res.returncode == 0, res.stderr


def test_gate_tolerance_left_out_comes_from_the_schema(tmp_path):
    (tmp_path / "partial.yaml").write_text("gate:\n  tolerance:\n    mae: {relative: 0.2}\n")
    tol = gate.load_tolerance(str(tmp_path / "partial.yaml"))
    assert tol == {"mae": {"relative": 0.2, "absolute": 0.05}, "mape": {"relative": 0.05, "absolute": 0.25}}
    assert gate.load_tolerance(None) == yaml.safe_load((ROOT / "config.yaml").read_text())["gate"]["tolerance"]


def test_gate_fails_on_a_missing_zone(base):
    tmp_path, baseline = base
    summary = write_summary(tmp_path / "nozone.csv", zones=("package",))
    res = run_gate(tmp_path, baseline, summary)
    assert res.returncode == 1
    assert "zone core of nt-a/AbsPower/Full disappeared" in res.stderr
    assert "MISSING" in res.stdout


def test_gate_fails_on_a_missing_node_type(base):
    tmp_path, baseline = base
    res = run_gate(tmp_path, baseline, write_summary(tmp_path / "one.csv", node_types=("nt-a",)))
    assert res.returncode == 1
    assert "node_type nt-b disappeared" in res.stderr


def test_new_node_type_passes_and_is_reported(base):
    tmp_path, baseline = base
    res = run_gate(tmp_path, baseline, write_summary(tmp_path / "three.csv", node_types=("nt-a", "nt-b", "nt-c")))
    assert res.returncode == 0, res.stderr
    assert "new node_type nt-c (no baseline yet): passes" in res.stdout
    assert "| nt-c | AbsPower | Full | package | LinearRegression | - | 4.000 | - |" in res.stdout


def test_gate_without_baseline_is_one_line_error(tmp_path):
    res = cli("gate", "--summary", str(write_summary(tmp_path / "s.csv")), "--baseline", str(tmp_path / "none.json"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("no baseline: accept a build first (make accept-models)")


def test_changelog(base):
    tmp_path, baseline = base
    summary = write_summary(tmp_path / "new.csv", node_types=("nt-a", "nt-b", "nt-c"), worse={("nt-a", "core"): 0.9})
    inputs = write_inputs(tmp_path / "new", {"nt-a": {"r1": "aa", "r2": "b2", "r3": "dd"}, "nt-b": {"r1": "cc"},
                                             "nt-c": {"r9": "ee"}})
    out = tmp_path / "changelog.md"
    res = cli("changelog", "--config", str(ROOT / "config.yaml"), "--summary", str(summary), "--baseline",
              str(baseline), "--inputs", *inputs, "--output", str(out))
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert text.startswith("# Model changelog")
    assert "| nt-a | changed | 2 | r3 | - | r2 |" in text
    assert "| nt-b | unchanged | 0 | - | - | - |" in text
    assert "| nt-c | new |" in text and "runs added: r9" in text
    # metric deltas of the changed zone (2.5 W -> 2.25 W), unchanged zones left out
    assert "| AbsPower | Full | core | LinearRegression | 2.500 → 2.250 | -0.250 |" in text
    assert "| AbsPower | Full | package |" not in text.split("## nt-a")[1].split("## nt-b")[0]
    assert "## nt-b: unchanged" in text
    # deterministic
    cli("changelog", "--config", str(ROOT / "config.yaml"), "--summary", str(summary), "--baseline", str(baseline),
        "--inputs", *inputs, "--output", str(tmp_path / "again.md"))
    assert (tmp_path / "again.md").read_bytes() == out.read_bytes()


def test_committed_baseline_is_valid():
    data = gate.load_baseline(ROOT / "models" / "baseline.json")
    assert data["models"] and data["inputs"]
    for nt, by_ot in data["models"].items():
        assert set(by_ot) == {"AbsPower", "DynPower"}
        for by_fg in by_ot.values():
            for model in by_fg.values():
                assert {"package", "core"} <= set(model["zones"])
                assert all(z["mae"] > 0 for z in model["zones"].values())
        assert data["inputs"][nt]


def test_config_gate_section_is_valid():
    import jsonschema

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    for key in ("synth", "containers"):  # sections with their own schema files
        cfg.pop(key, None)
        schema["properties"].pop(key)
    assert cfg["gate"]["baseline"] == "models/baseline.json"
    jsonschema.validate(cfg, schema)
    for bad in ({"tolerance": {"mae": {"relative": -1}}}, {"tolerance": {"rmse": {}}}, {"baselin": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**cfg, "gate": bad}, schema)


# ------------------------------------------------------------------------------ CI workflow file


def test_workflow_file_matches_githubs_schema():
    exe = Path(sys.executable).parent / "check-jsonschema"
    assert exe.exists(), "check-jsonschema missing: install envs/dev.lock"
    files = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert files
    res = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", *files], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_workflow_file_runs_make_ci_models_on_the_right_paths(tmp_path):
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "models.yml").read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads `on` as a boolean
    assert set(on["push"]["paths"]) == {"data/raw/**", "config.yaml", "src/**", "rules/**", "envs/**",
                                        "containers/**"}
    assert "workflow_dispatch" in on
    steps = wf["jobs"]["models"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    assert len(runs) == 1 and runs[0].startswith("make ci-models")
    for s in steps:
        if "uses" in s:
            ref = s["uses"].split("@", 1)[1]
            assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), s["uses"]
    # an invalid file is caught
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\non: push\njobs:\n  a:\n    steps: []\n")
    exe = Path(sys.executable).parent / "check-jsonschema"
    res = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True,
                         text=True)
    assert res.returncode != 0


def test_make_ci_models_is_defined():
    assert shutil.which("make")
    res = subprocess.run(["make", "-n", "ci-models", "CI_SKIP_IMAGES=1", "CI_RUNTIME=local"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for step in ("--config runtime=local", "--report build/ci-artifacts/report.html", "vmpower gate",
                 "vmpower changelog", "build/ci-artifacts/models"):
        assert step in res.stdout
