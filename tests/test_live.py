"""vmpower.serving.live: LiveFeatures equals the pipeline's feature code on live record pairs."""

import json

import numpy as np
import pandas as pd
import pytest

from serving_helpers import PERF_FIELDS, _records
from vmpower.errors import InputError
from vmpower.serving import live



def _reference_features(prev, cur, settings):
    feats, drop = live.frame_features(live.live_frame(prev, cur, settings), settings)
    row = feats.iloc[-1]
    return {c: float(row[c]) for c in feats.columns}, (None if pd.isna(drop.iloc[-1]) else str(drop.iloc[-1]))


def _assert_same(fast, ref):
    (fa, ra), (fb, rb) = fast, ref
    assert ra == rb
    assert set(fa) == set(fb)
    bad = {k: (fa[k], fb[k]) for k in fa if not (fa[k] == fb[k] or (np.isnan(fa[k]) and np.isnan(fb[k])))}
    assert not bad


def test_live_features_equal_the_pipelines_code(art, settings):
    """The exporter's LiveFeatures gives exactly what live_frame + merge.vm_feature_frame give, on
    every consecutive pair of the demo runs and on the awkward cases a live collector produces."""
    import dataclasses

    s = dataclasses.replace(settings, hinges={"cpu_utilization": [50, 70.5], "sys_context_switches_rate": [1000]})
    fast_features = live.LiveFeatures(s)
    pairs = 0
    for run in art["vm_files"]:
        text = art["vm_files"][run].read_text()
        recs = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()[:-1]]
        for a, b in zip(recs, recs[1:]):
            _assert_same(fast_features.compute(a, b), _reference_features(a, b, s))
            pairs += 1
    assert pairs > 250
    r = _records(art)
    a, b = r[10], r[11]
    no_perf = {f: None for f in PERF_FIELDS}
    cases = {
        "gauge missing now": (a, {k: v for k, v in b.items() if k != "memory_usage_percent"}),
        "gauge missing before": ({k: v for k, v in a.items() if k != "memory_usage_percent"}, b),
        "counter missing before": ({k: v for k, v in a.items() if k != "sys_forks"}, b),
        "gauge null now": (a, {**b, "cpu_steal": None}),
        "counter reset": (a, {**b, "sys_interrupts": 5}),
        "gap": (a, {**b, "timestamp_absolute": b["timestamp_absolute"] + 10}),
        "perf off now": (a, {**b, **no_perf, "perf_available": False}),
        "perf off before": ({**a, **no_perf, "perf_available": False}, b),
        "perf off both": ({**a, **no_perf, "perf_available": False}, {**b, **no_perf, "perf_available": False}),
        "old collector zeros": ({**a, **{f: 0 for f in PERF_FIELDS}}, {**b, **{f: 0 for f in PERF_FIELDS}}),
        "perf off, /proc counts": ({**a, **no_perf, "page_faults": 600, "context_switches": 700, "perf_available": False},
                                   {**b, **no_perf, "page_faults": 650, "context_switches": 0, "perf_available": False}),
        "perf flagged zeros": (a, {**b, **{f: 0 for f in PERF_FIELDS}, "page_faults": 5, "perf_available": False}),
        "no epoch time": ({k: v for k, v in a.items() if k != "timestamp_absolute"},
                          {k: v for k, v in b.items() if k != "timestamp_absolute"}),
        "new field": (a, {**b, "new_gauge": 3}),
        "text field": (a, {**b, "new_text": "x"}),
        "bool and null": ({**a, "flag": None}, {**b, "flag": True}),
    }
    for name, (x, y) in cases.items():
        fast = fast_features.compute(x, y)
        _assert_same(fast, _reference_features(x, y, s))
    assert fast_features.compute(*cases["counter reset"])[1] == "counter_reset"
    assert fast_features.compute(*cases["gap"])[1] == "rate_gap"
    assert np.isnan(fast_features.compute(*cases["perf off now"])[0]["cpu_cycles"])
    # a field that is a number in one record and text in the other is refused by both
    with pytest.raises(InputError, match="field cpu_steal is number and text"):
        fast_features.compute(a, {**b, "cpu_steal": "n/a"})
    with pytest.raises(ValueError):
        _reference_features(a, {**b, "cpu_steal": "n/a"}, s)
