"""vmpower.pipeline.selection: the one rule for the best model, its files and their readers."""

from __future__ import annotations

import json

import pytest

from vmpower.errors import InputError
from vmpower.pipeline import selection


def _model(root, trainer, status="trained", maes=(1.0, 2.0)):
    d = root / f"{trainer}Trainer_nt"
    d.mkdir(parents=True)
    zones = ["package", "core"]
    meta = {"node_type": "nt", "output_type": "AbsPower", "feature_group": "Full", "trainer": f"{trainer}Trainer",
            "status": status, "features": ["a"], "model_name": f"{trainer}Trainer_nt",
            "metrics": {z: {"mae": m, "mape": 5.0, "rmse": m, "r2": 0.9, "rows": 10} for z, m in zip(zones, maes)}
            if status == "trained" else {},
            "onnx": {z: {"max_abs_diff_watts": 0.0} for z in zones}, "mae": sum(maes) / 2}
    (d / "metadata.json").write_text(json.dumps(meta))
    return str(d), meta


def test_select_marks_the_lowest_mean_mae_and_every_reader_agrees(tmp_path):
    dirs = [_model(tmp_path, "A", maes=(1.0, 3.0))[0], _model(tmp_path, "B", maes=(2.0, 2.0))[0],
            _model(tmp_path, "C", status="onnx_mismatch")[0]]
    summary, best = tmp_path / "s.csv", tmp_path / "b.json"
    assert selection.select(dirs, str(summary), str(best)) == (1, 1)
    # Ties on the mean (2.0 each): the lower trainer name wins.
    entry = selection.read_best(best)["nt"]["AbsPower"]["Full"]
    assert entry["trainer"] == "A" and entry["model_name"] == "ATrainer_nt" and entry["mae_mean"] == 2.0
    gate_view = selection.best_zone_metrics(summary)
    assert gate_view == {"nt": {"AbsPower": {"Full": {"trainer": "A", "zones": {"package": {"mae": 1.0, "mape": 5.0},
                                                                                  "core": {"mae": 3.0, "mape": 5.0}}}}}}
    picked = selection.pick_best([(d, json.loads((tmp_path / d / "metadata.json").read_text())) for d in dirs])
    assert picked["nt"]["AbsPower"]["Full"]["trainer"] == "A"


def test_join_refuses_a_node_type_in_two_selections(tmp_path):
    d, _ = _model(tmp_path, "A")
    selection.select([d], str(tmp_path / "1.csv"), str(tmp_path / "1.json"))
    with pytest.raises(InputError, match="more than one selection"):
        selection.join([str(tmp_path / "1.csv")] * 2, [str(tmp_path / "1.json"), str(tmp_path / "1.json")],
                       str(tmp_path / "s.csv"), str(tmp_path / "b.json"))
    assert not (tmp_path / "b.json").exists()


def test_read_best_is_one_line_for_a_broken_file(tmp_path):
    p = tmp_path / "best.json"
    p.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        selection.read_best(p)


def test_best_per_output_takes_the_lowest_group():
    best = {"AbsPower": {"Full": {"trainer": "A", "mae_mean": 2.0}, "Small": {"trainer": "B", "mae_mean": 1.0}}}
    assert selection.best_per_output(best) == {"AbsPower": {"feature_group": "Small", "trainer": "B", "mae_mean": 1.0}}
