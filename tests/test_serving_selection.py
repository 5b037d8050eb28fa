"""vmpower.serving.selection: which exported model serves (node_type, machine spec, MAE, status)."""

import json
import logging
import shutil
from pathlib import Path

import pytest

from serving_helpers import SYS_LR, _best_label
from bench.predict_artifacts import NODE_TYPE
from vmpower import cli
from vmpower.errors import InputError
from vmpower.serving import live, selection



def test_select_by_node_type_and_exact_spec(art, caplog):
    res = art["results"]
    sel = selection.select_model(res, node_type=NODE_TYPE)
    best = json.loads((res / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    group = min(best, key=lambda g: best[g]["mae_mean"])
    assert sel.exact and sel.feature_group == group and sel.path.name.startswith(best[group]["model_name"])
    assert selection.select_model(res, node_type=NODE_TYPE, feature_group="CounterOnly").path.parent.name == "CounterOnly"
    # Inside a VM cores and memory are the VM's: the processor model decides the match.
    spec = json.loads(art["spec"].read_text())
    vm_view = {**spec, "cores": 8, "chips": 1, "memory": 16}
    with caplog.at_level(logging.WARNING, logger="vmpower.serving.selection"):
        sel = selection.select_model(res, machine_spec=vm_view)
    assert sel.exact and sel.node_type == NODE_TYPE and not caplog.records
    with pytest.raises(InputError, match=r"best\.json: no model for node_type nope \(known: demo-xeon-gold\)"):
        selection.select_model(res, node_type="nope")
    with pytest.raises(InputError, match="has no GpuPower model"):
        selection.select_model(res, node_type=NODE_TYPE, output_type="GpuPower")


def test_select_nearest_spec_warns(art, caplog, tmp_path, capsys):
    epyc = {"processor": "AMD EPYC 7763 64-Core Processor", "cores": 128, "chips": 2, "memory": 512, "frequency": 2450}
    with caplog.at_level(logging.WARNING, logger="vmpower.serving.selection"):
        sel = selection.select_model(art["results"], machine_spec=epyc)
    assert not sel.exact and sel.node_type == NODE_TYPE and sel.distance > 4
    assert any("nearest" in r.getMessage() and NODE_TYPE in r.getMessage() for r in caplog.records)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(epyc))
    assert cli.main(["predict", "--model", str(art["results"]), "--machine-spec", str(spec_file), "--input",
                     str(art["vm_files"]["run02-mix"]), "--config", str(art["config"]), "--output",
                     str(tmp_path / "o.csv")]) == 0


def test_select_from_a_directory_of_models_without_best_json(art):
    """results/models (no best.json): the lowest-MAE model per group, as select wrote best.json."""
    for output_type in ("AbsPower", "DynPower"):
        a = selection.select_model(art["results"], node_type=NODE_TYPE, output_type=output_type)
        b = selection.select_model(art["results"] / "models", node_type=NODE_TYPE, output_type=output_type)
        assert (a.path, a.feature_group, a.fallbacks) == (b.path, b.feature_group, b.fallbacks)
    assert selection.is_model_collection(art["results"] / "models" / "AbsPower")
    assert not selection.is_model_collection(art["models"][SYS_LR])


def test_spec_distance_orders_the_demo_hardware():
    import yaml

    specs = {k: v["machine_spec"] for k, v in yaml.safe_load(open("config.yaml"))["synth"]["node_types"].items()}
    gold, e5, epyc = specs["demo-xeon-gold"], specs["demo-xeon-e5"], specs["demo-epyc"]
    assert selection.spec_distance(gold, gold) == 0
    assert selection.processor_family(gold["processor"]) == ("intel", "xeon gold")
    assert selection.processor_family(epyc["processor"]) == ("amd", "epyc")
    assert 0 < selection.spec_distance(gold, e5) < selection.spec_distance(gold, epyc)
    assert selection.spec_distance(gold, e5) == pytest.approx(selection.spec_distance(e5, gold))
    assert selection.spec_distance(gold, {**gold, "memory": None}) == pytest.approx(0.5)


def test_selection_skips_models_whose_status_is_not_ok(art, tmp_path, caplog):
    """A model recorded as failed (e.g. onnx_mismatch) is never selected; the next group serves."""
    act_label, act_key = _best_label(art, "Activity")
    sys_label, sys_key = _best_label(art, "SystemOnly")
    res = tmp_path / "res"
    dirs = {k: Path(shutil.copytree(art["models"][k], res / "models" / k[1] / art["models"][k].name))
            for k in (act_key, sys_key)}
    meta = json.loads((dirs[act_key] / "metadata.json").read_text())
    assert selection.select_model(res, node_type=NODE_TYPE).feature_group == "Activity"  # by MAE
    (dirs[act_key] / "metadata.json").write_text(json.dumps({**meta, "status": "onnx_mismatch"}))
    sel = selection.select_model(res, node_type=NODE_TYPE)
    assert (sel.feature_group, sel.fallbacks) == ("SystemOnly", [])
    # the same through best.json entries
    best = {NODE_TYPE: {"AbsPower": {k[1]: {"model_name": d.name, "trainer": k[2], "mae_mean": 0.1 + i, "path": str(d)}
                                     for i, (k, d) in enumerate(dirs.items())}}}
    (res / "best.json").write_text(json.dumps(best))
    with caplog.at_level(logging.WARNING, logger="vmpower.serving.selection"):
        sel = selection.select_model(res, node_type=NODE_TYPE)
    assert (sel.feature_group, sel.fallbacks) == ("SystemOnly", [])
    assert any("AbsPower/Activity (status onnx_mismatch)" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="AbsPower/Activity of node_type .* cannot serve \\(status onnx_mismatch\\)"):
        selection.select_model(res, node_type=NODE_TYPE, feature_group="Activity")
