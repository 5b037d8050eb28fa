"""vmpower pinning (pipeline/pinning.py) on the demo's pinned and unpinned variants (known answer),
and the variants themselves (demo/pinning_variant.py)."""

import json
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import predict_artifacts
from vmpower import cli
from vmpower.errors import InputError
from vmpower.pipeline import pinning

NT = predict_artifacts.NODE_TYPE
MODELS = [("AbsPower", "Full", ["LinearRegression", "GradientBoostingRegressor"]),
          ("AbsPower", "SystemOnly", ["LinearRegression"])]


def build_variant(root, variant: str) -> dict:
    """The predict tests' small demo build with synth.pinning.variant set."""
    real = yaml.safe_load

    def load(text):
        cfg = real(text)
        if isinstance(cfg, dict) and "synth" in cfg:
            cfg["synth"]["pinning"]["variant"] = variant
        return cfg

    with mock.patch.object(predict_artifacts, "MODELS", MODELS), mock.patch.object(predict_artifacts.yaml, "safe_load", load):
        return predict_artifacts.build(root)


def mape(holdout: pd.DataFrame, zone: str = "package") -> float:
    return float(np.mean(np.abs(holdout[f"pred_{zone}"] - holdout[f"power_{zone}"]) / holdout[f"power_{zone}"].abs()))


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return {v: build_variant(tmp_path_factory.mktemp(v), v) for v in ("pinned", "unpinned")}


def _run_cli(art, tmp_path, capsys):
    out = tmp_path / "pinning.json"
    md = tmp_path / "pinning.md"
    res = art["results"]
    code = cli.main(["pinning", "--merged", str(res / "merged" / NT), "--best", str(res / "best.json"),
                     "--train-dir", str(res / "train" / NT), "--json", str(out), "--markdown", str(md)])
    assert code == 0
    return json.loads(out.read_text()), md.read_text(), capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("variant,should_pin", [("pinned", False), ("unpinned", True)])
def test_known_answer_on_demo_variants(variants, variant, should_pin, tmp_path, capsys):
    report, md, out = _run_cli(variants[variant], tmp_path, capsys)
    assert report["should_pin"] is should_pin
    assert report["node_type"] == NT and len(report["runs"]) == len(predict_artifacts.RUNS)
    m = report["metrics"]
    if should_pin:
        assert report["confidence"] > 0.5 and m["steal_mean"] > 3.0
        assert "less scheduler interference (context-switch variability)" in report["primary_benefits"]
    else:
        assert report["confidence"] <= 0.5 and m["steal_mean"] == 0.0 and m["utilization_variance"] == 0.0
    assert f"should_pin={'yes' if should_pin else 'no'}" in out
    assert f"### CPU pinning: {NT}" in md and "| **median** |" in md


@pytest.mark.slow
def test_variants_change_the_guest_view_not_the_power(variants):
    """Same seed, same workloads: the host's power files are byte-identical; the guest's steal differs."""
    raws = {v: art["raw"] / NT for v, art in variants.items()}
    for run in (d.name for d in sorted(raws["pinned"].iterdir()) if d.is_dir()):
        host = {v: next((r / run).glob("bm_power_*")).read_bytes() for v, r in raws.items()}
        assert host["pinned"] == host["unpinned"], run
        vm = {v: next((r / run).glob("vm_features_*")).read_bytes() for v, r in raws.items()}
        assert vm["pinned"] != vm["unpinned"], run


def _frame(steal, util, cs):
    return pd.DataFrame({"cpu_steal": steal, "cpu_utilization": util, "sys_context_switches_rate": cs})


def test_run_metrics_values():
    n = 200
    rng = np.random.default_rng(0)
    util = 50 + np.cumsum(rng.choice([-1.0, 1.0], n))  # |Δ| = 1 everywhere
    quiet = pinning.run_metrics(_frame(np.zeros(n), util, np.full(n, 1000.0)))
    assert quiet["utilization_variance"] == 0.0 and quiet["context_switch_variability"] == 0.0
    assert quiet["steal_mean"] == 0.0 and quiet["samples"] == n
    steal = np.tile([0.0, 0.5], n // 2)  # |Δ steal| = 0.5
    cs = 1000.0 * np.exp(np.tile([0.0, 0.3], n // 2))  # |Δ ln| = 0.3
    noisy = pinning.run_metrics(_frame(steal, util, cs))
    assert noisy["utilization_variance"] == pytest.approx(0.5)
    assert noisy["context_switch_variability"] == pytest.approx(0.3)


def test_recommend_scores_as_the_ep():
    assert pinning.recommend({}) == {"should_pin": False, "confidence": 0.0, "primary_benefits": []}
    r = pinning.recommend({"utilization_variance": 0.2, "context_switch_variability": 0.25, "accuracy_variance": 0.05})
    assert r["should_pin"] and r["confidence"] == pytest.approx(0.7) and len(r["primary_benefits"]) == 2
    # 0.3 + 0.3 = 0.6 > 0.5; exactly at a threshold does not count
    r = pinning.recommend({"utilization_variance": 0.16, "context_switch_variability": 0.2, "accuracy_variance": 0.11})
    assert r["should_pin"] and r["confidence"] == pytest.approx(0.6)
    assert not pinning.recommend({"context_switch_variability": 0.5})["should_pin"]  # 0.4 alone


def test_residual_spread_per_run():
    h = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 4, "power_package": [10.0] * 8,
                      "pred_package": [9, 11, 9, 11, 10, 10, 10, 10]})
    assert pinning.residual_spread(h, "package") == {"a": pytest.approx(0.1), "b": 0.0}
    with pytest.raises(ValueError, match="pred_core"):
        pinning.residual_spread(h, "core")


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert cli.main(["pinning", "--merged", str(tmp_path / "m")]) == 2
    assert "no merged runs" in capsys.readouterr().err
    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "m" / "r.parquet")
    assert cli.main(["pinning", "--merged", str(tmp_path / "m")]) == 2
    assert "not a merged run" in capsys.readouterr().err
    with pytest.raises(InputError, match="no AbsPower best model"):
        pinning.best_holdout(tmp_path / "best.json", tmp_path, NT)
