"""Hostile configs (issue 19): every bad config stops `snakemake -n` and the vmpower commands that
read a config with one line naming the file and the key, without a traceback; the configs the
project ships and tests with are still accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmpower import configcheck

from vmpower.pipeline import paramcheck
from vmpower.demo.config import overlay as _merge

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.yaml"
BROKEN_YAML = "merge:\n  alignment: auto\n  offset_features: [instructions, page_faults\ntrain: {}\n"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}


def snakemake_n(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -n` of this workflow in ws (which holds its config.yaml), the planning only."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"), "-d", str(ws), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def vmpower(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmpower", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=120)


@pytest.fixture
def ws(tmp_path) -> Path:
    (tmp_path / "config.yaml").write_text(CONFIG.read_text())
    return tmp_path


def assert_one_line(res: subprocess.CompletedProcess, *fragments: str) -> str:
    """rc != 0, exactly one line of the output holds all fragments, and no Python traceback."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    lines = [line for line in out.splitlines() if all(f in line for f in fragments)]
    assert len(lines) == 1, f"{fragments} in {len(lines)} lines of:\n{out}"
    assert "Traceback" not in out and "/src/vmpower/" not in out, out
    return lines[0]


# Overlay -> (the key path the error names, a fragment of the problem). Each one was accepted
# silently before (unknown keys, trainer parameters) or is a wrong type.
BAD_OVERLAYS = {
    "unknown-top-level": ({"bogus_key": 1}, "bogus_key", "unknown key"),
    "unknown-merge": ({"merge": {"time_tolerence": 0.5}}, "merge.time_tolerence", "did you mean time_tolerance?"),
    "unknown-ingest": ({"ingest": {"counter_detection": {"max_reset": 2}}}, "ingest.counter_detection.max_reset",
                       "did you mean max_resets?"),
    "unknown-train": ({"train": {"holdout": 0.3}}, "train.holdout", "unknown key"),
    "unknown-export": ({"export": {"onnx_opset_version": 17}}, "export.onnx_opset_version", "unknown key"),
    "unknown-synth": ({"synth": {"kepler": {"interval": 5}}}, "synth.kepler.interval", "unknown key"),
    "misspelt-param": ({"train": {"params": {"XGBRegressor": {"n_estimatorz": 10}}}},
                       "train.params.XGBRegressor.n_estimatorz", "did you mean n_estimators?"),
    "negative-xgb-trees": ({"train": {"params": {"XGBRegressor": {"n_estimators": -10}}}},
                           "train.params.XGBRegressor.n_estimators", "range [1, inf)"),
    "negative-gbr-trees": ({"train": {"params": {"GradientBoostingRegressor": {"n_estimators": -10}}}},
                           "train.params.GradientBoostingRegressor.n_estimators", "got -10"),
    "zero-learning-rate": ({"train": {"params": {"XGBRegressor": {"learning_rate": 0}}}},
                           "train.params.XGBRegressor.learning_rate", "range (0.0, inf)"),
    "subsample-above-1": ({"train": {"params": {"XGBRegressor": {"subsample": 1.5}}}},
                          "train.params.XGBRegressor.subsample", "got 1.5"),
    "string-number": ({"train": {"params": {"SGDRegressor": {"alpha": "1e-4"}}}},  # YAML 1.1: 1e-4 is a string
                      "train.params.SGDRegressor.alpha", "must be a float"),
    "boolean-trees": ({"train": {"params": {"XGBRegressor": {"n_estimators": True}}}},
                      "train.params.XGBRegressor.n_estimators", "must not be a boolean"),
    "knn-distance-weights": ({"train": {"params": {"KNeighborsRegressor": {"weights": "distance"}}}},
                             "train.params.KNeighborsRegressor.weights", "uniform"),
    "reserved-param": ({"train": {"params": {"XGBRegressor": {"random_state": 7}}}},
                       "train.params.XGBRegressor.random_state", "set from train.seed"),
    "unknown-trainer": ({"train": {"params": {"XGBRegresor": {"n_estimators": 10}}}},
                        "train.params.XGBRegresor", "did you mean XGBRegressor?"),
    "bad-grid-value": ({"train": {"search": {"KNeighborsRegressor": {"n_neighbors": [10, 0]}}}},
                       "train.search.KNeighborsRegressor.n_neighbors[1]", "got 0"),
    "bad-grid-key": ({"train": {"search": {"XGBRegressor": {"max_dept": [2, 4]}}}},
                     "train.search.XGBRegressor.max_dept", "did you mean max_depth?"),
    "wrong-type-number": ({"merge": {"time_tolerance": "fast"}}, "merge.time_tolerance", "must be of type number"),
    "wrong-type-list": ({"zones": "package"}, "zones", "must be of type array"),
    "wrong-type-section": ({"train": {"params": []}}, "train.params", "must be of type object"),
    "wrong-enum": ({"merge": {"alignment": "linear"}}, "merge.alignment", "is not one of"),
}


@pytest.mark.parametrize("overlay,key,problem", BAD_OVERLAYS.values(), ids=BAD_OVERLAYS.keys())
def test_bad_overlay_stops_planning_with_one_line(ws, overlay, key, problem):
    path = ws / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    res = snakemake_n(ws, "--configfile", "config.yaml", str(path))
    line = assert_one_line(res, f"{key}:", problem)
    assert line.startswith(f"{path}: {key}: "), line  # the file that set the key, then the key
    assert "Building DAG" not in res.stdout + res.stderr  # stopped before planning any job


def test_bad_key_in_config_yaml_names_config_yaml(ws):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["train"]["params"]["XGBRegressor"]["n_estimators"] = -10
    (ws / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = assert_one_line(snakemake_n(ws), "train.params.XGBRegressor.n_estimators:")
    assert line.startswith("config.yaml: "), line


def test_command_line_config_is_named(ws):
    line = assert_one_line(snakemake_n(ws, "--config", "runtime=kubernetes"), "runtime:", "kubernetes")
    assert line.startswith("--config: runtime: "), line


@pytest.mark.parametrize("text,where,problem", [
    (BROKEN_YAML, "line 4, column 6", "expected ',' or ']'"),
    ("raw_dir: data/raw\nraw_dir: elsewhere\n", "line 2, column 1", "duplicate key 'raw_dir'"),
    ("merge:\n\tbad: 1\n", "line 2, column 1", "found character that cannot start any token"),
], ids=["unclosed-list", "duplicate-key", "tab"])
def test_yaml_syntax_error_names_file_line_and_column(ws, text, where, problem):
    (ws / "config.yaml").write_text(text)
    line = assert_one_line(snakemake_n(ws), "YAML syntax error")
    assert line.startswith(f"config.yaml: YAML syntax error at {where}: ") and problem in line, line


def test_deeply_nested_config_is_refused_not_a_crash(ws, tmp_path):
    """100,000 levels crashed the YAML composer (segfault); refused from the event stream."""
    deep = "merge: " + "[" * 100_000 + "]" * 100_000 + "\n"
    (ws / "config.yaml").write_text(deep)
    line = assert_one_line(snakemake_n(ws), "nested deeper")
    assert line == "config.yaml: YAML nested deeper than 64 levels at line 1, column 71", line
    res = vmpower("synth", "--config", ws / "config.yaml", "--out", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.strip().endswith("nested deeper than 64 levels at line 1, column 71")


def test_broken_overlay_never_plans(ws):
    """Snakemake parses --configfile files itself, before the Snakefile runs: its own message (no
    line number), but the build stops there."""
    _broken(ws)
    res = snakemake_n(ws, "--configfile", "config.yaml", str(ws / "broken.yaml"))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out and "Building DAG" not in out, out


@pytest.mark.parametrize("overlay", [None, "tests/data/legacy.yaml", "tests/containers/demo-small.yaml",
                                     "tests/slurm/demo-small.yaml"])
def test_shipped_configs_still_plan(ws, overlay):
    extra = ["--configfile", "config.yaml", str(ROOT / overlay)] if overlay else []
    res = snakemake_n(ws, *extra)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("overlay", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.yaml")))
def test_every_test_overlay_validates(overlay):
    """Every YAML file under tests/ is a config overlay; each is valid on its own and over config.yaml."""
    base = configcheck.check_file(CONFIG)
    merged = _merge(base, configcheck.check_file(ROOT / overlay))
    assert configcheck.config_problem(merged, checks=[paramcheck.config_problem]) is None


# ---------------------------------------------------------------- the vmpower commands


def _broken(tmp_path, text=BROKEN_YAML) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("args", [
    ["synth", "--out", "OUT"],
    ["predict", "--model", "MISSING", "--input", "MISSING"],
    ["serve", "--model", "MISSING"],
    ["merge", "--vm", "MISSING", "--bm", "MISSING", "--output", "OUT"],
    ["gate", "--summary", "MISSING", "--baseline", "MISSING"],
    ["report-paths"],
    ["check-images", "MISSING"],
], ids=lambda a: a[0])
@pytest.mark.parametrize("kind", ["syntax", "unknown-key"])
def test_commands_reject_a_bad_config_in_one_line(tmp_path, args, kind):
    if kind == "syntax":
        config, want = _broken(tmp_path), "YAML syntax error at line 4, column 6"
    else:
        doc = yaml.safe_load(CONFIG.read_text())
        doc["merge"]["time_tolerence"] = 0.5
        config, want = _broken(tmp_path, yaml.safe_dump(doc)), "merge.time_tolerence: unknown key"
    args = [str(tmp_path / a) if a in ("OUT", "MISSING") else a for a in args]
    res = vmpower(*args, "--config", config)
    line = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in line, res.stderr
    assert line.startswith(f"vmpower {args[0]}: error: {config}: ") and want in line, line
    assert not (tmp_path / "OUT").exists()


def test_synth_overlay_is_checked_per_file(tmp_path):
    overlay = _broken(tmp_path, "synth:\n  seeed: 3\n")
    res = vmpower("synth", "--config", CONFIG, "--config", overlay, "--out", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.strip() == (
        f"vmpower synth: error: {overlay}: synth.seeed: unknown key (did you mean seed?)"), res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the checks themselves


def test_shipped_trainer_parameters_pass_and_every_trainer_is_checked():
    train = yaml.safe_load(CONFIG.read_text())["train"]
    assert paramcheck.train_problem(train) is None
    for trainer in train["trainers"]:  # a misspelt name is caught for each trainer, not only some
        problem = paramcheck.trainer_problem(trainer, {"no_such_param": 1}, {})
        assert problem is not None and problem.path == ("train", "params", trainer, "no_such_param")
