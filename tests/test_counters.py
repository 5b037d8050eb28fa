"""counters.py: each counter's semantics decided from the data, rates, and the node_type view."""

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower.pipeline import counters

CONFIG = yaml.safe_load(open("config.yaml"))


@pytest.mark.parametrize("values,expect", [
    ([0.0] * 30 + [0.01] + [0.0] * 29, "per_interval"),  # rare blips: per-interval-sized, one decrease
    ([0.0] * 60, "per_interval"),                         # nothing happened: 0 either way
    ([7.5] * 60, "cumulative"),                           # a counter since boot that did not move
    (list(1e6 + 3.0 * np.arange(60)), "cumulative"),
    (list(np.tile([5.0, 9.0], 30)), "per_interval"),      # goes down in 29 samples
    ([1e6, 1e6 + 1, 1e6 + 2], "cumulative"),               # too few steps to tell: the configured default
])
def test_decide_semantics(values, expect):
    frame = pd.DataFrame({"x": values})
    decision = counters.decide(frame, {}, CONFIG["ingest"]["counter_detection"])["x"]
    assert decision["semantics"] == expect
    assert decision["decided_by"] == ("default" if len(values) < 10 else "data")


def test_node_type_semantics_combine_runs():
    runs = {"a": {"x": "per_interval", "y": "cumulative"}, "b": {"x": "per_interval", "y": "per_interval"}, "c": {}}
    assert counters.combine(runs) == {"x": "per_interval", "y": "mixed"}


def test_forced_semantics_win_over_the_data():
    frame = pd.DataFrame({"sys_a": 1e6 + 3.0 * np.arange(60), "other": 1e6 + 3.0 * np.arange(60)})
    got = counters.decide(frame, {"sys_*": "per_interval"}, CONFIG["ingest"]["counter_detection"])
    assert got["sys_a"]["semantics"] == "per_interval" and got["other"]["semantics"] == "cumulative"


def test_rates_of_both_semantics_and_the_warmup_sample():
    t = np.arange(5.0)
    feats = pd.DataFrame({"cum": [100.0, 103.0, 106.0, 109.0, 112.0], "per": [3.0, 3.0, 3.0, 3.0, 3.0]})
    decisions = {"cum": {"semantics": "cumulative"}, "per": {"semantics": "per_interval"}}
    drop = pd.Series(pd.NA, index=feats.index, dtype="string")
    out = counters.rates(feats, decisions, t, np.ones(5), drop)
    np.testing.assert_allclose(out["cum_rate"].iloc[1:], 3.0)
    np.testing.assert_allclose(out["per_rate"], 3.0)
    assert "cum" not in out and drop.iloc[0] == "rate_warmup" and drop.iloc[1:].isna().all()
