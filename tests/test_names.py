"""vmpower.names: the shared names agree with the schema and config.yaml, and naming round-trips."""

from __future__ import annotations

from pathlib import Path

import yaml

from vmpower import names

ROOT = Path(__file__).resolve().parent.parent


def test_power_columns_round_trip():
    for zone in names.ZONES:
        assert names.power_column(zone) == "power_" + zone
        assert names.zone_of(names.power_column(zone)) == zone
    assert names.zone_of("cpu_utilization") is None
    assert names.zone_of("powerpackage") is None and names.zone_of("power_") == ""
    assert names.zone_of("time_power_package") is None  # a prefix, not a substring


def test_model_name():
    assert names.model_name("XGBRegressor", "demo-kvm") == "XGBRegressorTrainer_demo-kvm"


def test_zones_and_output_types_are_the_schemas():
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["properties"]
    assert tuple(schema["zones"]["items"]["enum"]) == names.ZONES
    assert tuple(schema["merge"]["properties"]["power_zone"]["enum"]) == names.ZONES
    assert tuple(schema["train"]["properties"]["output_types"]["items"]["enum"]) == names.OUTPUT_TYPES
    enums = list(_enums_of("output_type", schema))  # e.g. the pinned best models
    assert enums and all(tuple(e) == names.OUTPUT_TYPES for e in enums)


def _enums_of(key: str, node):
    """Every enum the schema gives for a property named key."""
    if isinstance(node, dict):
        if isinstance(node.get(key), dict) and "enum" in node[key]:
            yield node[key]["enum"]
        for value in node.values():
            yield from _enums_of(key, value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums_of(key, value)


def test_tree_trainers_are_shipped_trainers():
    trainers = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["trainers"]
    assert names.TREE_TRAINERS <= set(trainers)


def test_meta_columns_are_the_leading_and_trailing_ones():
    assert not set(names.LEADING_COLUMNS) & set(names.TRAILING_COLUMNS)
    assert names.META_COLUMNS == set(names.LEADING_COLUMNS) | set(names.TRAILING_COLUMNS)
    assert not any(names.zone_of(c) for c in names.META_COLUMNS)  # bookkeeping is never a label
    assert names.LEADING_COLUMNS[0] == "run_id"
