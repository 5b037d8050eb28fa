"""vmpower.serving.fallback: the chain predict and serve walk, and its per-row rule."""

import json

import numpy as np
import pytest

from serving_helpers import (CNT_LR, _best_label, _chain, _groups, _records, _records_of, _strip_perf, _variant)
from bench.predict_artifacts import NODE_TYPE
from vmpower.serving import exporter, fallback, live



def test_fallback_chain_orders_groups_by_mae_and_skips_perf_models_without_perf(art):
    best = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    by_mae = sorted(best, key=lambda g: best[g]["mae_mean"])
    assert by_mae[0] in ("Activity", "CounterOnly")  # the demo's best group needs perf counters
    chain = _chain(art, use_perf=True)
    assert _groups(chain) == by_mae and [m.name for m in chain] == [best[g]["model_name"] for g in by_mae]
    # Without perf only SystemOnly can be computed: it is chosen, with no fallback left.
    assert _groups(_chain(art, use_perf=False)) == ["SystemOnly"]
    # An explicit group stays first (with a warning), the collectable ones follow.
    assert _groups(_chain(art, feature_group="Activity", use_perf=False)) == ["Activity", "SystemOnly"]
    assert _groups(_chain(art, no_fallback=True, use_perf=True)) == [by_mae[0]]
    # a single model directory is served alone
    assert len(_chain(art, model=art["models"][CNT_LR], node_type=None, use_perf=False)) == 1


def test_choose_follows_serves_rule():
    ok = np.array([[True, True], [False, True], [True, True], [True, True], [False, False]])
    conf = np.array([[0.9, 0.9], [0.9, 0.9], [0.5, 0.8], [0.5, 0.6], [1.0, 1.0]])
    assert fallback.choose(ok, conf, 0.7).tolist() == [0, 1, 1, 0, -1]
    assert fallback.choose(ok, conf, 0.7, "drop").tolist() == [0, 1, 1, -1, -1]
    assert fallback.choose(ok, np.full(ok.shape, np.nan), 0.7).tolist() == [0, 1, 0, 0, -1]  # no ranges: passes


def test_mixed_perf_file_walks_the_same_chain_as_serve(art, tmp_path):
    """Half the samples without perf (flagged perf_available=false), half with: per row and zone
    predict picks the model serve picks on the same records, with the same watts."""
    half = len(_records(art)) // 2

    def edit(i, r):
        if i < half:
            _strip_perf(r)
        r["perf_available"] = i >= half

    src = _variant(art, tmp_path, "mixed.json", edit)
    models = _chain(art)
    labels = [fallback.label(m) for m in models]
    settings = [live.load_settings(None, m.metadata) for m in models]
    out, line = fallback.predict_chain(models, settings, src)
    act_label, _ = _best_label(art, _groups(models)[0])  # the best group, which needs perf
    sys_label, _ = _best_label(art, "SystemOnly")
    assert labels[0] == act_label
    assert set(out["model_package"].iloc[1:half]) == {sys_label}
    assert (out["model_package"].iloc[half:] == act_label).mean() > 0.9  # in range of its training data
    assert out["power_package"].iloc[1:].notna().all() and line.startswith(f"watts for {len(out) - 1}/{len(out)}")
    exp = exporter.Exporter(models, settings, "vm-1")
    for i, record in enumerate(_records_of(src)):
        watts = exp.update(record)
        for zone in models[0].zones:
            who = labels[exp.served[zone]] if zone in watts else None
            assert (out[f"model_{zone}"].iloc[i] if out[f"model_{zone}"].notna().iloc[i] else None) == who, (i, zone)
            if who:
                assert out[f"power_{zone}"].iloc[i] == pytest.approx(watts[zone], abs=1e-9)
