"""vmpower.limits: the defaults are the schema's; a config's limits section overrides them, checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vmpower import limits
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_schema_defaults():
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["properties"]["limits"]
    want = {k: v["default"] for k, v in schema["properties"].items()}
    assert vars(limits.defaults()) == want  # every schema key is a field, and no field lacks a default
    assert limits.defaults() == limits.from_section(None) == limits.from_section({}) == limits.load(None)


def test_from_section_overrides_only_the_given_keys():
    got = limits.from_section({"max_columns": 7, "exporter_request_timeout_seconds": 0.5})
    assert got == dataclasses.replace(limits.defaults(), max_columns=7, exporter_request_timeout_seconds=0.5)
    assert got.replace(max_json_depth=3).max_json_depth == 3 and got.max_json_depth == 64


@pytest.mark.parametrize("section, message", [
    ({"max_columns": 0}, "limits.max_columns: 0 is less than the minimum of 1"),
    ({"max_json_depth": "deep"}, "limits.max_json_depth: 'deep' is not of type 'integer'"),
    ({"max_http_response_bytes": 10}, "limits.max_http_response_bytes: 10 is less than the minimum of 1024"),
    ({"max_colums": 5}, "limits: Additional properties are not allowed ('max_colums' was unexpected)"),
])
def test_a_bad_section_is_one_line_naming_the_source(section, message):
    with pytest.raises(InputError) as err:
        limits.from_section(section, "over.yaml")
    assert str(err.value) == f"over.yaml: {message}"


def test_load_reads_the_limits_section_of_a_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("merge: {anything: here}\nlimits:\n  exporter_backlog: 4\n")
    assert limits.load(cfg) == limits.defaults().replace(exporter_backlog=4)
    cfg.write_text("raw_dir: x\n")
    assert limits.load(cfg) == limits.defaults()
    cfg.write_text("limits:\n  exporter_backlog: 0\n")
    with pytest.raises(InputError, match=rf"^{cfg}: limits\.exporter_backlog: 0 is less than the minimum of 1$"):
        limits.load(cfg)


@pytest.mark.parametrize("text, message", [
    (None, "not a vmpower config ([Errno 2] No such file or directory"),
    ("- a\n- b\n", "not a vmpower config (not a mapping)"),
    ("limits: [1\n", "not a vmpower config (while parsing a flow sequence"),
])
def test_load_refuses_what_is_not_a_config(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(InputError) as err:
        limits.load(cfg)
    line = str(err.value)
    assert line.startswith(f"{cfg}: {message}") and "\n" not in line
    assert len(line) <= len(f"{cfg}: not a vmpower config ()") + 120
