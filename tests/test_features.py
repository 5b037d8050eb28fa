"""features.py: the raw-sample-to-feature contract shared by training and serving."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import merge_settings, vm_records, write_vm
from vmpower import settings as settings_mod
from vmpower.errors import InputError
from vmpower.pipeline import ingest
from vmpower.pipeline.features import FeatureSettings, flatten, vm_feature_frame
from vmpower.pipeline.merge import MergeSettings

CONFIG = yaml.safe_load(open("config.yaml"))


def raw_table(tmp_path, recs):
    from vmpower import limits

    return ingest.read_vm_features(write_vm(tmp_path / "vm_features_f.json", recs), limits.defaults())


def test_settings_from_whole_config_and_from_flat_settings_agree():
    whole = FeatureSettings.from_config(settings_mod.load("config.yaml"))
    flat = json.loads(json.dumps({**CONFIG["ingest"], **CONFIG["merge"], "hinges": CONFIG["features"]["hinges"]}))
    assert FeatureSettings.from_config(flat) == whole
    assert whole.hinges == CONFIG["features"]["hinges"] and whole.non_features == CONFIG["ingest"]["non_features"]
    assert FeatureSettings.from_ingest(CONFIG["ingest"], {}) == dataclasses.replace(whole, hinges={})


def test_a_missing_key_is_one_line_naming_it():
    flat = {**CONFIG["ingest"]}
    with pytest.raises(InputError, match=r"^--settings: missing setting\(s\) for FeatureSettings: hinges$"):
        FeatureSettings.from_config(flat, "--settings")
    with pytest.raises(InputError, match=r"MergeSettings: .*alignment"):
        MergeSettings.build(flatten({"ingest": CONFIG["ingest"], "features": CONFIG["features"], "merge": {}}))


def test_schema_defaults_fill_a_minimal_config(tmp_path):
    """A config that leaves optional keys out gets the schema's defaults, never a second copy."""
    cfg = {k: CONFIG[k] for k in ("raw_dir", "results_dir", "runtime", "zones", "required_zones", "train", "export")}
    cfg["ingest"] = {k: CONFIG["ingest"][k] for k in ("cumulative_features", "perf_features", "non_features")}
    cfg["merge"] = {"time_tolerance": 0.5, "min_power_threshold": 0.001, "power_zone": "package"}
    cfg["isolate"] = {"method": "min", "idle_workloads": ["idle"]}
    cfg["features"] = {"groups": CONFIG["features"]["groups"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = MergeSettings.from_config(settings_mod.load(path))
    assert (s.alignment, s.min_match_rate, s.hinges, s.counter_semantics) == ("window", 0.5, {}, {})
    assert s.counter_detection == CONFIG["ingest"]["counter_detection"] and s.limits["max_json_depth"] == 64


def test_features_are_numbers_rates_and_hinges(tmp_path):
    raw = raw_table(tmp_path, vm_records(n=30))
    feats, names, notes = vm_feature_frame(raw, FeatureSettings.from_config(CONFIG))
    assert "_drop" in feats and "_drop" not in names
    assert not set(CONFIG["ingest"]["non_features"]) & set(names)
    assert "cpu_utilization_hinge50" in names
    x = feats["cpu_utilization"].to_numpy()
    np.testing.assert_allclose(feats["cpu_utilization_hinge50"], np.square(np.maximum(x - 50, 0)))
    assert notes["counter_semantics"]["sys_context_switches"] in ("cumulative", "per_interval")
    assert "sys_context_switches_rate" in names and "sys_context_switches" not in names


def test_merge_settings_give_the_same_frame(tmp_path):
    """Serving passes MergeSettings (until it imports FeatureSettings): same result."""
    raw = raw_table(tmp_path, vm_records(n=30))
    a = vm_feature_frame(raw, FeatureSettings.from_config(CONFIG))
    b = vm_feature_frame(raw, merge_settings(CONFIG))
    pd.testing.assert_frame_equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert FeatureSettings.of(merge_settings(CONFIG)) == FeatureSettings.from_config(CONFIG)
    # Serving's call with a model's recorded ingest section gives feature settings without hinges.
    assert MergeSettings.from_config({"ingest": CONFIG["ingest"]}) == FeatureSettings.from_ingest(CONFIG["ingest"], {})
