"""vmpower.settings: load() fills the schema's defaults; Section.build is strict and coerces JSON types."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vmpower import limits, settings
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Demo(settings.Section):
    rate: float
    names: tuple[str, ...]
    count: int
    flag: bool
    offset: float | None
    groups: list


FULL = {"rate": 1, "names": ["a", "b"], "count": 3, "flag": True, "offset": None, "groups": ["g"]}


def test_load_fills_the_schema_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    # the top-level sections with a default are limits and gate; their keys come from the schema
    tolerance = {"mae": {"relative": 0.05, "absolute": 0.05}, "mape": {"relative": 0.05, "absolute": 0.25}}
    assert settings.load(tmp_path / "empty.yaml") == {"limits": vars(limits.defaults()), "gate": {"tolerance": tolerance}}
    (tmp_path / "m.yaml").write_text("merge:\n  time_tolerance: 0.5\n  power_zone: core\nlimits:\n  max_columns: 5\n")
    cfg = settings.load(tmp_path / "m.yaml")
    assert cfg["merge"]["time_tolerance"] == 0.5 and cfg["merge"]["power_zone"] == "core"  # given values kept
    assert cfg["merge"]["alignment"] == "window" and cfg["merge"]["min_host_samples"] == 1
    assert cfg["merge"]["quality_warnings"] == {"min_match_rate": 0.9, "max_time_diff_mean_seconds": 0.2}
    assert cfg["merge"]["vm_utc_offset_seconds"] is None  # a null default is filled too
    assert cfg["limits"] == {**vars(limits.defaults()), "max_columns": 5}
    assert "ingest" not in cfg  # a section without a default is not invented


def test_load_keeps_every_value_of_the_shipped_config():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg = settings.load(ROOT / "config.yaml")
    assert {k: cfg[k] for k in raw if k != "limits"} == {k: v for k, v in raw.items() if k != "limits"}


def test_load_refuses_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("merge:\n  alignmnet: window\n")
    with pytest.raises(InputError) as err:
        settings.load(tmp_path / "bad.yaml")
    assert str(err.value) == f"{tmp_path / 'bad.yaml'}: merge.alignmnet: unknown key (did you mean alignment?)"


def test_build_coerces_json_types():
    s = Demo.build({**FULL, "extra": "ignored"})
    assert s == Demo(1.0, ("a", "b"), 3, True, None, ["g"])
    assert type(s.rate) is float and type(s.names) is tuple and type(s.count) is int
    assert type(s.groups) is list  # a plain list field stays a list
    assert Demo.build({**FULL, "flag": False, "rate": 2.5}).rate == 2.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rate = 2.0


def test_a_bool_is_not_coerced_to_a_float():
    assert Demo.build({**FULL, "rate": True}).rate is True  # the schema refuses it; build does not hide it


def test_an_optional_float_field_gets_a_float():
    assert type(Demo.build({**FULL, "offset": -14400}).offset) is float


def test_missing_keys_are_one_line_in_declared_order():
    with pytest.raises(InputError) as err:
        Demo.build({"names": [], "flag": False, "groups": []}, "--settings")
    assert str(err.value) == "--settings: missing setting(s) for Demo: rate, count, offset"
    with pytest.raises(InputError, match=r"^settings: missing setting\(s\) for Demo: "):
        Demo.build({})
