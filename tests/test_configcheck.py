"""vmpower.configcheck: strict YAML reading and schema problems as one line naming file and key
(the workflow-level behaviour, `snakemake -n` on hostile configs, is in tests/test_faults_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmpower import configcheck
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _error(tmp_path: Path, text: str | bytes, fn=configcheck.check_file) -> str:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as err:
        fn(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: "), line
    return line[len(f"{path}: "):]


@pytest.mark.parametrize("text, message", [
    ("merge: {time_tolerance: 1\n",
     "YAML syntax error at line 2, column 1: did not find expected ',' or '}' (while parsing a flow mapping at "
     "line 1, column 8)"),
    ("a: 1\nb: 2\na: 3\n", "YAML syntax error at line 3, column 1: duplicate key 'a'"),
    ("m:\n  x: 1\n  x: 2\n", "YAML syntax error at line 3, column 3: duplicate key 'x'"),  # nested mappings too
    ("merge:\n  time_tolerance: 1\n\tbad: 2\n", "YAML syntax error at line 3, column 1: found a tab character"),
    ("- 1\n- 2\n", "not a YAML mapping of keys (a list)"),
    ("just text\n", "not a YAML mapping of keys (a str)"),
    (b"\xff\xfe: 1\n", "cannot read config ('utf-8' codec can't decode byte 0xff"),
    ("x: " + "[" * 65 + "]" * 65 + "\n", "YAML nested deeper than 64 levels at line 1, column 67"),
], ids=["unclosed", "duplicate", "nested-duplicate", "tab", "list", "scalar", "not-utf8", "deep"])
def test_read_yaml_errors_name_file_line_and_column(tmp_path, text, message):
    assert _error(tmp_path, text, configcheck.read_yaml).startswith(message)


def test_read_yaml_accepts_empty_files_anchors_and_merge_keys(tmp_path):
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    assert configcheck.read_yaml(tmp_path / "empty.yaml") == {}
    # a merge key (<<) repeats keys on purpose: not a duplicate
    (tmp_path / "m.yaml").write_text("base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  y: 3\n")
    assert configcheck.read_yaml(tmp_path / "m.yaml") == {"base": {"x": 1, "y": 2}, "over": {"x": 1, "y": 3}}
    assert configcheck.read_yaml(tmp_path / "m.yaml") == yaml.safe_load((tmp_path / "m.yaml").read_text())


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml: config file not found$"):
        configcheck.check_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, message", [
    ("merge:\n  time_tolerence: 1\n", "merge.time_tolerence: unknown key (did you mean time_tolerance?)"),
    ("bogus: 1\n", "bogus: unknown key (known keys: containers, export, features, gate, ingest, isolate, limits, "
                   "merge, raw_dir, required_zones, results_dir, runtime, synth, train, validate, zones)"),
    ("merge:\n  time_tolerance: abc\n", "merge.time_tolerance: must be of type number, got 'abc'"),
    ("merge:\n  time_tolerance: -1\n", "merge.time_tolerance: -1 is less than or equal to the minimum of 0"),
    ("merge:\n  alignment: windo\n",
     "merge.alignment: 'windo' is not one of ['auto', 'kepler_interval', 'window', 'nearest']"),
    ("zones: [package, package]\n", "zones: ['package', 'package'] has non-unique elements"),
    ("limits:\n  max_json_depth: 1\n", "limits.max_json_depth: 1 is less than the minimum of 2"),
    ("train:\n  trainers: 5\n", "train.trainers: must be of type array, got 5"),
], ids=["typo-hint", "known-keys", "type", "minimum", "enum", "unique", "limits", "nested-type"])
def test_check_file_names_the_key_and_the_problem(tmp_path, text, message):
    assert _error(tmp_path, text) == message


def test_check_file_accepts_a_partial_file_and_returns_its_mapping(tmp_path):
    """An overlay holds some sections: missing required keys are not its problem."""
    (tmp_path / "o.yaml").write_text("merge:\n  alignment: nearest\n")
    assert configcheck.check_file(tmp_path / "o.yaml") == {"merge": {"alignment": "nearest"}}
    assert configcheck.check_file(ROOT / "config.yaml") == yaml.safe_load((ROOT / "config.yaml").read_text())


def test_a_long_message_is_cut_to_one_short_line(tmp_path):
    message = _error(tmp_path, "export:\n  kepler_db_pipeline: '" + "a b " * 100 + "'\n")
    assert message.startswith("export.kepler_db_pipeline: 'a b a b") and message.endswith("...")
    assert len(message) == len("export.kepler_db_pipeline: ") + 200


def test_schema_problem_of_a_whole_config():
    whole = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert configcheck.schema_problem(whole) is None
    del whole["merge"]["power_zone"]
    problem = configcheck.schema_problem(whole)
    assert problem == configcheck.Problem(("merge", "power_zone"), "required key missing")
    assert configcheck.schema_problem(whole, partial=True) is None
    assert configcheck.config_problem({"raw_dir": "x"}).text() == "results_dir: required key missing"


def test_key_path_and_problem_text():
    assert configcheck.key_path(("train", "params", "XGBRegressor", "n_estimators")) == \
        "train.params.XGBRegressor.n_estimators"
    assert configcheck.key_path(("synth", "runs", 0, "workload")) == "synth.runs[0].workload"
    assert configcheck.key_path(()) == ""
    assert configcheck.Problem((), "whole file").text() == "whole file"
    assert configcheck.Problem(("a", 1), "bad").text() == "a[1]: bad"


def test_blame_names_the_last_file_that_sets_the_key():
    sources = [("config.yaml", {"train": {"params": {"X": {"a": 1}}}}), ("over.yaml", {"train": {"seed": 1}}),
               ("--config", {})]
    assert configcheck.blame(("train", "params", "X", "a"), sources) == "config.yaml"
    assert configcheck.blame(("train", "seed"), sources) == "over.yaml"
    assert configcheck.blame(("train", "nothing"), sources) == "over.yaml"  # deepest, then latest
    assert configcheck.blame(("zones", 0), [("config.yaml", {"zones": ["package"]}), ("--config", {})]) == "config.yaml"
    assert configcheck.blame(("x",), []) == "config"


def test_yaml_problem_is_the_line_or_none(tmp_path):
    assert configcheck.yaml_problem(tmp_path / "absent.yaml") is None  # Snakemake reports a missing file itself
    (tmp_path / "ok.yaml").write_text("a: 1\n")
    assert configcheck.yaml_problem(tmp_path / "ok.yaml") is None
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    assert configcheck.yaml_problem(tmp_path / "bad.yaml").startswith(f"{tmp_path / 'bad.yaml'}: YAML syntax error at line 2")
