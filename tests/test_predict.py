"""vmpower predict / serve on real exported models (built once by the pipeline's own steps)."""

import argparse
import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.predict_artifacts import NODE_TYPE, build
from vmpower import cli
from vmpower.serving import fallback, predict, selection
from vmpower.errors import InputError

SYS_GBR = ("AbsPower", "SystemOnly", "GradientBoostingRegressor")
SYS_LR = ("AbsPower", "SystemOnly", "LinearRegression")
SYS_XGB = ("AbsPower", "SystemOnly", "XGBRegressor")
CNT_LR = ("AbsPower", "CounterOnly", "LinearRegression")
ACT_LR = ("AbsPower", "Activity", "LinearRegression")
DYN_LR = ("DynPower", "SystemOnly", "LinearRegression")
PERF_FIELDS = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
               "page_faults", "context_switches", "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")


@pytest.fixture(scope="session")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="session")
def settings(art):
    return predict.load_settings(str(art["config"]))


def _native(art, key):
    import joblib

    return joblib.load(art["trained"][key] / "model.joblib")


# ---------------------------------------------------------------- batch predictions


@pytest.mark.parametrize("key", [SYS_GBR, SYS_LR, CNT_LR], ids=lambda k: f"{k[1]}-{k[2]}")
def test_predictions_equal_native_model_on_pipeline_features(art, settings, key):
    """predict's features equal the merged training rows, and ONNX watts equal the native model's."""
    model = predict.Model.load(art["models"][key])
    bundle = _native(art, key)
    assert model.features == bundle["features"] and model.zones == bundle["zones"] == ["package", "core", "dram", "uncore"]
    run = "run02-mix"
    out = predict.predict_file(model, art["vm_files"][run], settings)
    merged = pd.read_parquet(art["results"] / "merged" / NODE_TYPE / f"{run}.parquet")
    # merged "time" is on the clock both files share (naive local here: the host CSV has no epoch)
    from vmpower.pipeline.ingest import naive_seconds

    key_time = naive_seconds(out["timestamp_iso"], Path("x")).round(6)
    rows = out.set_index(key_time).loc[merged["time"].to_numpy().round(6)]
    X = merged[model.features].to_numpy("float64")
    ok = np.isfinite(X).all(axis=1)
    assert ok.sum() > 50
    for zone in model.zones:
        native = bundle["models"][zone].predict(X[ok])
        got = rows[f"power_{zone}"].to_numpy()[ok]
        assert np.max(np.abs(got - native)) < 1e-3, zone
        assert np.max(np.abs(model.predict(X[ok])[:, model.zones.index(zone)] - native)) < 1e-3


def test_hinge_inputs_come_from_the_model_not_the_config(art, settings):
    """SystemOnly selects cpu_utilization, so its hinge basis too; predict computes the hinges a
    model needs from its feature names even when --config sets none."""
    import dataclasses

    model = predict.Model.load(art["models"][SYS_LR])
    hinges = [f for f in model.features if "_hinge" in f]
    assert hinges and settings.hinges
    assert model.metadata["feature_engineering"]["hinge_features"][hinges[0]]["base"] == "cpu_utilization"
    src = art["vm_files"]["run02-mix"]
    a = predict.predict_file(model, src, settings)
    b = predict.predict_file(model, src, dataclasses.replace(settings, hinges={}))
    pd.testing.assert_frame_equal(a, b)
    assert a["power_package"].notna().sum() > 50


def test_jsonl_and_array_inputs_give_the_same_watts(art, settings, tmp_path):
    model = predict.Model.load(art["models"][SYS_GBR])
    src = art["vm_files"]["run02-mix"]
    records = json.loads(src.read_text())
    assert isinstance(records, list)
    jsonl = tmp_path / "vm.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    a = predict.predict_file(model, src, settings)
    b = predict.predict_file(model, jsonl, settings)
    pd.testing.assert_frame_equal(a, b)
    assert a["skip_reason"].iloc[0] == "rate_warmup" and a["power_package"].iloc[1:].notna().all()
    # the demo's run03 was written as JSON Lines by a "killed" collector (cut last line)
    c = predict.predict_file(model, art["vm_files"]["run03-mix"], settings)
    assert c["power_core"].notna().sum() > 100


def test_cli_predict_writes_csv_and_parquet(art, tmp_path, capsys):
    model_dir = art["models"][SYS_GBR]
    zip_path = model_dir.with_name(model_dir.name + ".zip")
    src = art["vm_files"]["run02-mix"]
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--config", str(art["config"]),
                     "--output", str(tmp_path / "w.csv")]) == 0
    assert cli.main(["predict", "--model", str(zip_path), "--input", str(src), "--config", str(art["config"]),
                     "--output", str(tmp_path / "w.parquet")]) == 0
    csv, pq = pd.read_csv(tmp_path / "w.csv"), pd.read_parquet(tmp_path / "w.parquet")
    assert list(pq.columns) == ["timestamp_absolute", "timestamp_iso", "power_package", "power_core", "power_dram",
                                "power_uncore", "skip_reason", "model_package", "model_core", "model_dram", "model_uncore"]
    assert set(pq["model_package"].dropna()) == {"SystemOnly/GradientBoostingRegressorTrainer_demo-xeon-gold"}
    np.testing.assert_allclose(csv["power_package"], pq["power_package"], atol=1e-6)
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--config", str(art["config"]),
                     "--output", str(tmp_path / "w.txt")]) == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err


def test_ingest_settings_come_from_the_model_without_config(art, tmp_path, monkeypatch):
    """The archive records how raw fields become features, so predict needs no config.yaml."""
    model_dir = art["models"][SYS_LR]
    meta = json.loads((model_dir / "metadata.json").read_text())
    cfg = yaml.safe_load(art["config"].read_text())
    assert meta["ingest"] == cfg["ingest"]
    # --config wins; without it the metadata's settings, not a config file that happens to be near
    assert predict.load_settings(None, {"ingest": {**cfg["ingest"], "cumulative_features": ["x"]}}).cumulative_features == ["x"]
    # A model whose metadata lacks an ingest key is refused in one line (no second set of defaults).
    with pytest.raises(InputError, match="missing setting.*non_features"):
        predict.load_settings(None, {"ingest": {"cumulative_features": ["x"]}})
    src = art["vm_files"]["run02-mix"]
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--config", str(art["config"]),
                     "--output", str(tmp_path / "with.csv")]) == 0
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--output", "without.csv"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "with.csv"), pd.read_csv(tmp_path / "without.csv"))


def test_missing_feature_columns_are_an_error(art, settings, tmp_path):
    model = predict.Model.load(art["models"][SYS_GBR])
    records = json.loads(art["vm_files"]["run02-mix"].read_text())
    for r in records:
        del r["cpu_steal"]
    bad = tmp_path / "vm.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(InputError, match=r"vm\.json: model .* needs feature\(s\) cpu_steal"):
        predict.predict_file(model, bad, settings)


# ---------------------------------------------------------------- integrity


def _copy(art, key, tmp_path) -> Path:
    return Path(shutil.copytree(art["models"][key], tmp_path / art["models"][key].name))


def _rewrite_manifest(d: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(d.iterdir())
             if p.name != predict.MANIFEST]
    (d / predict.MANIFEST).write_text("\n".join(lines) + "\n")


def test_untouched_model_and_archive_load(art):
    d = art["models"][SYS_GBR]
    a, b = predict.Model.load(d), predict.Model.load(d.with_name(d.name + ".zip"))
    assert a.version == b.version and len(a.version) == 12 and a.features == b.features


def test_byte_flip_in_onnx_is_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    data = bytearray((d / "core.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "core.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"core\.onnx does not match its sha256 in manifest\.sha256"):
        predict.Model.load(d)


def test_edited_metadata_is_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta["features"] = meta["features"][::-1]  # same width, other order: silently wrong watts
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"metadata\.json does not match its sha256"):
        predict.Model.load(d)


def test_missing_and_extra_files_are_refused(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    (d / "dram.onnx").unlink()
    with pytest.raises(InputError, match=r"dram\.onnx is listed in manifest\.sha256 but missing"):
        predict.Model.load(d)
    d2 = _copy(art, SYS_LR, tmp_path / "x")
    shutil.copy(d2 / "core.onnx", d2 / "gpu.onnx")
    with pytest.raises(InputError, match=r"gpu\.onnx is not listed in manifest\.sha256"):
        predict.Model.load(d2)
    _rewrite_manifest(d2)  # even with a consistent manifest, an onnx that is no zone is refused
    with pytest.raises(InputError, match=r"gpu\.onnx is not a zone of metadata\.json"):
        predict.Model.load(d2)
    (d2 / predict.MANIFEST).unlink()
    with pytest.raises(InputError, match="no manifest.sha256"):
        predict.Model.load(d2)


def test_metadata_onnx_mismatch_is_refused_even_with_a_matching_manifest(art, tmp_path):
    d = _copy(art, SYS_GBR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta["features"] = meta["features"][:-1]
    meta["input"]["shape"] = [None, len(meta["features"])]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    n = len(meta["features"])
    with pytest.raises(InputError, match=rf"package\.onnx takes {n + 1} features, metadata\.json lists {n}"):
        predict.Model.load(d)
    meta["zones"] = ["package", "core", "dram"]  # uncore.onnx left over
    meta["features"].append("x")
    meta["input"]["shape"] = [None, n + 1]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match=r"uncore\.onnx is not a zone"):
        predict.Model.load(d)


def test_tampered_zip_is_refused_and_cli_prints_one_line(art, tmp_path, capsys):
    d = art["models"][SYS_LR]
    src, dst = d.with_name(d.name + ".zip"), tmp_path / "m.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "metadata.json":
                data = data.replace(b'"mae": ', b'"mae": 1')
            zout.writestr(info, data)
    code = cli.main(["predict", "--model", str(dst), "--input", str(art["vm_files"]["run02-mix"]),
                     "--config", str(art["config"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"vmpower predict: error: {dst}: metadata.json does not match its sha256 in manifest.sha256 (file changed)"


# ---------------------------------------------------------------- training data in metadata.json


def test_metadata_records_training_rows_time_and_feature_ranges(art):
    """training_data: what train recorded over the isolated data set's rows it used."""
    for key in (SYS_XGB, ACT_LR, DYN_LR):
        meta = json.loads((art["models"][key] / "metadata.json").read_text())
        report = json.loads((art["trained"][key] / "metrics.json").read_text())
        data = pd.read_parquet(art["datasets"][key[0]])
        rows = data[data[meta["features"]].notna().all(axis=1)]
        td = meta["training_data"]
        assert td["rows"] == report["rows_train"] == len(rows) == td["ranges_rows"] and td["ranges_from"] == "training rows"
        assert td["last_sample_time"] == rows["time"].max()
        assert list(td["feature_ranges"]) == sorted(meta["features"])
        for f, r in td["feature_ranges"].items():
            assert (r["min"], r["max"]) == (rows[f].min(), rows[f].max())
    model = predict.Model.load(art["models"][SYS_XGB])
    lo, hi = model.ranges
    assert model.confidence(lo) == model.confidence(hi) == 1.0
    x = lo.copy()
    x[:3] = hi[:3] + 1
    assert model.confidence(x) == pytest.approx(1 - 3 / len(lo))


def test_dynpower_metadata_records_its_isolator(art):
    iso = json.loads(art["isolation"].read_text())
    dyn = json.loads((art["models"][DYN_LR] / "metadata.json").read_text())
    assert dyn["isolator"] == iso["method"] == "profile"  # the demo has an idle run
    assert dyn["idle_power_watts"] == iso["idle_power_watts"] and set(dyn["idle_power_watts"]) == set(dyn["zones"])
    absm = json.loads((art["models"][SYS_LR] / "metadata.json").read_text())
    assert "isolator" not in absm and "idle_power_watts" not in absm
    assert art["isolation"].as_posix() in dyn["provenance"]["inputs"]


def test_bad_training_ranges_are_refused(art, tmp_path):
    d = _copy(art, SYS_LR, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    r = meta["training_data"]["feature_ranges"]["cpu_utilization"]
    r["min"], r["max"] = r["max"], r["min"]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match="feature_ranges has a min above its max"):
        predict.Model.load(d)
    del meta["training_data"]["feature_ranges"]["cpu_utilization"]
    (d / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)
    with pytest.raises(InputError, match="does not give min/max for every feature"):
        predict.Model.load(d)


# ---------------------------------------------------------------- selection


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


def _args(art, **kw) -> argparse.Namespace:
    base = {"model": str(art["results"]), "node_type": NODE_TYPE, "machine_spec": None, "output_type": "AbsPower",
            "feature_group": None, "config": None, "no_fallback": False}
    return argparse.Namespace(**{**base, **kw})


def _groups(models) -> list[str]:
    return [m.metadata["feature_group"] for m in models]


def test_fallback_chain_orders_groups_by_mae_and_skips_perf_models_without_perf(art):
    best = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    by_mae = sorted(best, key=lambda g: best[g]["mae_mean"])
    assert by_mae[0] in ("Activity", "CounterOnly")  # the demo's best group needs perf counters
    chain = fallback.resolve_chain(_args(art), use_perf=True)
    assert _groups(chain) == by_mae and [m.name for m in chain] == [best[g]["model_name"] for g in by_mae]
    # Without perf only SystemOnly can be computed: it is chosen, with no fallback left.
    assert _groups(fallback.resolve_chain(_args(art), use_perf=False)) == ["SystemOnly"]
    # An explicit group stays first (with a warning), the collectable ones follow.
    assert _groups(fallback.resolve_chain(_args(art, feature_group="Activity"), use_perf=False)) == ["Activity", "SystemOnly"]
    assert _groups(fallback.resolve_chain(_args(art, no_fallback=True), use_perf=True)) == [by_mae[0]]
    # a single model directory is served alone
    assert len(fallback.resolve_chain(_args(art, model=str(art["models"][CNT_LR]), node_type=None), use_perf=False)) == 1


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


# ---------------------------------------------------------------- predict's fallback chain


def _variant(art, tmp_path, name, edit) -> Path:
    """run02-mix with every record passed through edit(index, record)."""
    records = _records(art)
    for i, r in enumerate(records):
        edit(i, r)
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def _strip_perf(r: dict) -> None:
    """As the seed's collector writes a sample without perf: counters 0, no flag."""
    r.update(dict.fromkeys(PERF_FIELDS, 0))
    r.pop("perf_available", None)


def _best_label(art, group: str) -> tuple[str, tuple]:
    entry = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"][group]
    return f"{group}/{entry['model_name']}", ("AbsPower", group, entry["trainer"])


def test_choose_follows_serves_rule():
    ok = np.array([[True, True], [False, True], [True, True], [True, True], [False, False]])
    conf = np.array([[0.9, 0.9], [0.9, 0.9], [0.5, 0.8], [0.5, 0.6], [1.0, 1.0]])
    assert fallback.choose(ok, conf, 0.7).tolist() == [0, 1, 1, 0, -1]
    assert fallback.choose(ok, conf, 0.7, "drop").tolist() == [0, 1, 1, -1, -1]
    assert fallback.choose(ok, np.full(ok.shape, np.nan), 0.7).tolist() == [0, 1, 0, 0, -1]  # no ranges: passes


def test_predict_without_perf_is_answered_by_the_fallback_group(art, settings, tmp_path, capsys):
    """The demo's best group (Activity) needs perf: a guest file without perf gets SystemOnly's
    watts on every row that has its inputs, and each row names the model."""
    src = _variant(art, tmp_path, "noperf.json", lambda i, r: _strip_perf(r))
    target = tmp_path / "w.csv"
    assert cli.main(["predict", "--model", str(art["results"]), "--node-type", NODE_TYPE, "--input", str(src),
                     "--output", str(target)]) == 0
    line = capsys.readouterr().out.strip()
    got = pd.read_csv(target)
    sys_label, sys_key = _best_label(art, "SystemOnly")
    n = len(got)
    served = got["power_package"].notna()
    assert served.sum() == n - 1 and got["skip_reason"].iloc[0] == "rate_warmup"  # rates need two samples
    for zone in ("package", "core", "dram", "uncore"):
        assert set(got.loc[served, f"model_{zone}"]) == {sys_label} and got[f"model_{zone}"].iloc[0] != sys_label
    alone = predict.predict_file(predict.Model.load(art["models"][sys_key]), src, settings)
    np.testing.assert_allclose(got["power_core"], alone["power_core"], atol=1e-6)
    assert line.startswith(f"watts for {n - 1}/{n} samples (package,core,dram,uncore: {sys_label} {n - 1}); "
                           "1 lacked the inputs of every model (")
    assert "rate_warmup 1" in line and line.endswith(f"-> {target}")


def test_mixed_perf_file_walks_the_same_chain_as_serve(art, tmp_path):
    """Half the samples without perf (flagged perf_available=false), half with: per row and zone
    predict picks the model serve picks on the same records, with the same watts."""
    half = len(_records(art)) // 2

    def edit(i, r):
        if i < half:
            _strip_perf(r)
        r["perf_available"] = i >= half

    src = _variant(art, tmp_path, "mixed.json", edit)
    models = fallback.resolve_chain(_args(art))
    labels = [fallback.label(m) for m in models]
    settings = [predict.load_settings(None, m.metadata) for m in models]
    out, line = fallback.predict_chain(models, settings, src)
    act_label, _ = _best_label(art, _groups(models)[0])  # the best group, which needs perf
    sys_label, _ = _best_label(art, "SystemOnly")
    assert labels[0] == act_label
    assert set(out["model_package"].iloc[1:half]) == {sys_label}
    assert (out["model_package"].iloc[half:] == act_label).mean() > 0.9  # in range of its training data
    assert out["power_package"].iloc[1:].notna().all() and line.startswith(f"watts for {len(out) - 1}/{len(out)}")
    exp = predict.Exporter(models, settings, "vm-1")
    for i, record in enumerate(_records_of(src)):
        watts = exp.update(record)
        for zone in models[0].zones:
            who = labels[exp.served[zone]] if zone in watts else None
            assert (out[f"model_{zone}"].iloc[i] if out[f"model_{zone}"].notna().iloc[i] else None) == who, (i, zone)
            if who:
                assert out[f"power_{zone}"].iloc[i] == pytest.approx(watts[zone], abs=1e-9)


def _records_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_predict_without_any_models_inputs_exits_nonzero_with_one_line(art, tmp_path):
    """No perf and no cpu_utilization: no model of the chain can answer. Exit 2, one line naming
    what the best candidates lack, no traceback, no output file."""

    def edit(i, r):
        _strip_perf(r)
        del r["cpu_utilization"]

    src = _variant(art, tmp_path, "bare.json", edit)
    target = tmp_path / "w.csv"
    res = subprocess.run([sys.executable, "-m", "vmpower", "predict", "--model", str(art["results"]), "--node-type",
                          NODE_TYPE, "--input", str(src), "--output", str(target)],
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and res.stdout == "" and len(lines) == 1, res.stderr
    n = len(_records(art))
    assert lines[0].startswith(f"vmpower predict: error: {src}: no watts (no model's inputs) in any of its {n} samples: ")
    assert "cpu_utilization (not in the file)" in lines[0] and "cpu_cycles" in lines[0]
    assert not target.exists()


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


# ---------------------------------------------------------------- exporter (in process)


def _watts(registry) -> dict:
    return {s.labels["zone"]: s.value for s in registry.collect() if s.name == "kepler_node_cpu_watts" for s in s.samples}


def test_exporter_matches_batch_and_degrades_per_feature(art, settings):
    """Live path (collector records -> Exporter) gives the batch watts; a missing feature drops
    the zones and counts an error; its return brings them back."""
    model = predict.Model.load(art["models"][SYS_GBR])
    src = art["vm_files"]["run02-mix"]
    batch = predict.predict_file(model, src, settings)
    records = json.loads(src.read_text())
    exp = predict.Exporter(model, settings, "vm-1")
    assert exp.update(records[0]) == {}
    for i in (1, 2):
        got = exp.update(records[i])
        assert set(got) == set(model.zones)
        for zone, w in got.items():
            assert w == pytest.approx(batch[f"power_{zone}"].iloc[i], abs=1e-9)
    assert set(_watts(exp.registry)) == set(model.zones)
    broken = {k: v for k, v in records[3].items() if k != "cpu_utilization"}
    assert exp.update(broken) == {}
    assert _watts(exp.registry) == {}
    assert exp.registry.get_sample_value("kepler_vm_feature_collection_errors_total", {"feature": "cpu_utilization"}) == 1
    exp.update(records[4])  # rates need both windows: back on the tick after
    assert set(_watts(exp.registry)) == set(model.zones)


def _records(art, run="run02-mix") -> list[dict]:
    return json.loads(art["vm_files"][run].read_text())


def _who(model) -> dict:
    return {"model_name": model.name, "feature_group": model.metadata["feature_group"]}


def _sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def _series(registry, name) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples if s.name == name}


def _reference_features(prev, cur, settings):
    feats, drop = predict.frame_features(predict.live_frame(prev, cur, settings), settings)
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
    live = predict.LiveFeatures(s)
    pairs = 0
    for run in art["vm_files"]:
        text = art["vm_files"][run].read_text()
        recs = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()[:-1]]
        for a, b in zip(recs, recs[1:]):
            _assert_same(live.compute(a, b), _reference_features(a, b, s))
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
        fast = live.compute(x, y)
        _assert_same(fast, _reference_features(x, y, s))
    assert live.compute(*cases["counter reset"])[1] == "counter_reset"
    assert live.compute(*cases["gap"])[1] == "rate_gap"
    assert np.isnan(live.compute(*cases["perf off now"])[0]["cpu_cycles"])
    # a field that is a number in one record and text in the other is refused by both
    with pytest.raises(InputError, match="field cpu_steal is number and text"):
        live.compute(a, {**b, "cpu_steal": "n/a"})
    with pytest.raises(ValueError):
        _reference_features(a, {**b, "cpu_steal": "n/a"}, s)


def test_perf_less_tick_is_served_by_the_systemonly_fallback(art, settings):
    """Chain by MAE, a perf group first; samples without perf counters: the SystemOnly model
    serves every zone, with the watts batch predict gives, and says so."""
    chain = fallback.resolve_chain(_args(art), use_perf=True)
    sysm = next(m for m in chain if m.metadata["feature_group"] == "SystemOnly")
    act, cnt = [m for m in chain if m is not sysm]
    assert act is chain[0]  # the best model needs perf (Activity or CounterOnly)
    batch = predict.predict_file(sysm, art["vm_files"]["run02-mix"], settings)
    exp = predict.Exporter(chain, settings, "vm-1")
    recs = [{**r, **{f: None for f in PERF_FIELDS}, "perf_available": False} for r in _records(art)]
    exp.update(recs[0])
    for i in (1, 2, 3):
        got = exp.update(recs[i])
        assert set(got) == set(sysm.zones)
        for zone, w in got.items():
            assert w == pytest.approx(batch[f"power_{zone}"].iloc[i], abs=1e-9)
    r = exp.registry
    for zone in sysm.zones:
        assert _sample(r, "kepler_vm_model_version", zone=zone, version=sysm.version, **_who(sysm)) == 1
        assert _sample(r, "kepler_vm_model_version", zone=zone, version=act.version, **_who(act)) == 0
        assert _sample(r, "kepler_vm_model_version", zone=zone, version=cnt.version, **_who(cnt)) == 0
        assert _sample(r, "kepler_vm_model_accuracy_mae", zone=zone) == sysm.metadata[f"{zone}_mae"]
        assert 0 < _sample(r, "kepler_vm_model_confidence_score", zone=zone) <= 1
        assert _sample(r, "kepler_vm_zone_unavailable_total", zone=zone) == 0
    # perf features were unavailable on each of the 3 ticks; SystemOnly's were not
    assert _sample(r, "kepler_vm_feature_collection_errors_total", feature="cpu_cycles") == 3
    assert _sample(r, "kepler_vm_feature_collection_errors_total", feature="cpu_utilization") == 0
    # perf is back: the best (perf) model takes over
    exp.update(_records(art)[4])
    got = exp.update(_records(art)[5])
    assert set(got) == set(act.zones)
    assert _sample(r, "kepler_vm_model_version", zone="package", version=act.version, **_who(act)) == 1
    assert _sample(r, "kepler_vm_model_version", zone="package", version=sysm.version, **_who(sysm)) == 0
    assert _sample(r, "kepler_vm_model_accuracy_mae", zone="package") == act.metadata["package_mae"]


def test_no_model_can_serve_zone_is_absent_and_counted(art, settings):
    chain = fallback.resolve_chain(_args(art), use_perf=True)
    exp = predict.Exporter(chain, settings, "vm-1")
    recs = _records(art)
    exp.update(recs[0])
    assert set(exp.update(recs[1])) == set(chain[0].zones)
    assert len(_series(exp.registry, "kepler_vm_model_inference_duration_seconds")) == 4
    broken = {k: v for k, v in recs[2].items() if k != "cpu_utilization"}
    broken.update({f: None for f in PERF_FIELDS}, perf_available=False)
    assert exp.update(broken) == {}
    r = exp.registry
    assert _watts(r) == {}
    # no stale per-tick series for absent zones
    assert _series(r, "kepler_vm_model_inference_duration_seconds") == {}
    assert _series(r, "kepler_vm_model_confidence_score") == {}
    assert set(_series(r, "kepler_vm_model_version").values()) == {0.0}
    for zone in chain[0].zones:
        assert _sample(r, "kepler_vm_zone_unavailable_total", zone=zone) == 1
    assert _sample(r, "kepler_vm_feature_collection_errors_total", feature="cpu_utilization") == 1
    assert _sample(r, "kepler_vm_feature_collection_errors_total", feature="instructions") == 1
    # the static model information stays
    assert _sample(r, "kepler_vm_training_data_points", zone="core") == chain[0].training_rows


def test_inference_error_falls_back_to_the_next_model_and_is_counted(art, settings):
    chain = fallback.resolve_chain(_args(art), use_perf=True)
    act, sysm = chain[0], chain[1]
    act.output_names["core"] = "no_such_output"  # onnxruntime itself raises on this session
    exp = predict.Exporter(chain, settings, "vm-1")
    recs = _records(art)
    exp.update(recs[0])
    got = exp.update(recs[1])
    assert set(got) == set(act.zones)
    r = exp.registry
    assert _sample(r, "kepler_vm_inference_errors_total", zone="core", **_who(act)) == 1
    assert _sample(r, "kepler_vm_inference_errors_total", zone="package", **_who(act)) == 0
    assert _sample(r, "kepler_vm_model_version", zone="core", version=sysm.version, **_who(sysm)) == 1
    assert _sample(r, "kepler_vm_model_version", zone="package", version=act.version, **_who(act)) == 1
    x = np.array([[predict.LiveFeatures(predict.for_model(settings, sysm)).compute(recs[0], recs[1])[0][f]
                   for f in sysm.features]])
    assert got["core"] == pytest.approx(float(sysm.predict_zone("core", x)[0]), abs=1e-12)


def _out_of_range(art, model, record, prev, changes, settings, tmp_path):
    """The record with changes, and the confidence the pipeline's batch features give it."""
    rec = {**record, **changes}
    f = tmp_path / "two.json"
    f.write_text(json.dumps([prev, rec]))
    from vmpower.pipeline import ingest

    s = predict.for_model(settings, model)
    feats, drop = predict.frame_features(ingest.read_vm_features(f), s)
    x = predict.model_matrix(model, feats, drop, s, f)[-1]
    ranges = model.metadata["training_data"]["feature_ranges"]
    inside = [ranges[n]["min"] <= v <= ranges[n]["max"] for n, v in zip(model.features, x)]
    return rec, sum(inside) / len(inside)


def test_confidence_threshold_report_drop_and_fallback(art, settings, tmp_path):
    recs = _records(art)
    sysm = predict.Model.load(art["models"][SYS_XGB])
    far = {"memory_usage_percent": 99.0, "process_count": 5000, "load_average_1min": 80.0, "disk_io_read_mb": 5e3,
           "disk_io_write_mb": 5e3, "network_bytes_recv": 1e11, "network_bytes_sent": 1e11, "cpu_steal": 60.0,
           "cpu_irq": 20.0, "cpu_softirq": 20.0, "sys_procs_running": 500, "sys_procs_blocked": 100}
    rec, expected = _out_of_range(art, sysm, recs[11], recs[10], far, settings, tmp_path)
    assert expected < 0.7
    for mode in ("report", "drop"):
        exp = predict.Exporter(sysm, settings, "vm-1", low_confidence=mode)
        exp.update(recs[9])
        normal = exp.update(recs[10])
        assert set(normal) == set(sysm.zones)
        assert _sample(exp.registry, "kepler_vm_model_confidence_score", zone="core") == 1.0
        got = exp.update(rec)
        r = exp.registry
        assert _sample(r, "kepler_vm_model_confidence_score", zone="core") == pytest.approx(expected)
        assert _sample(r, "kepler_vm_low_confidence_total", zone="core") == 1
        if mode == "report":
            assert set(got) == set(sysm.zones) and _sample(r, "kepler_vm_zone_unavailable_total", zone="core") == 0
        else:
            assert got == {} and _watts(r) == {} and _sample(r, "kepler_vm_zone_unavailable_total", zone="core") == 1
    # A lower threshold accepts it.
    exp = predict.Exporter(sysm, settings, "vm-1", threshold=0.5)
    exp.update(recs[10])
    assert set(exp.update(rec)) == set(sysm.zones)
    assert _sample(exp.registry, "kepler_vm_low_confidence_total", zone="core") == 0
    # Chain: the first model's inputs far outside its training range, the fallback's inside.
    act = predict.Model.load(art["models"][ACT_LR])
    big = {f: recs[11][f] * 1000 for f in ("cpu_cycles", "instructions", "cache_misses", "page_faults")}
    rec2, conf_act = _out_of_range(art, act, recs[11], recs[10], big, settings, tmp_path)
    assert conf_act < 0.7
    exp = predict.Exporter([act, sysm], settings, "vm-1")
    exp.update(recs[10])
    assert set(exp.update(rec2)) == set(sysm.zones)
    r = exp.registry
    assert _sample(r, "kepler_vm_model_version", zone="dram", version=sysm.version, **_who(sysm)) == 1
    assert _sample(r, "kepler_vm_low_confidence_total", zone="dram") == 0
    assert _sample(r, "kepler_vm_model_confidence_score", zone="dram") == 1.0


def test_training_metrics_and_collection_durations(art, settings):
    model = predict.Model.load(art["models"][SYS_XGB])
    data = pd.read_parquet(art["datasets"]["AbsPower"])
    exp = predict.Exporter(model, settings, "vm-1")
    recs = _records(art)
    exp.update(recs[0], {"proc": 0.004, "perf": 0.25})
    exp.update(recs[1], {"proc": 0.003})
    r = exp.registry
    for zone in model.zones:
        assert _sample(r, "kepler_vm_training_data_points", zone=zone) == len(data[data[model.features].notna().all(axis=1)])
        assert _sample(r, "kepler_vm_last_training_timestamp", zone=zone) == data["time"].max()
        assert 0 < _sample(r, "kepler_vm_model_inference_duration_seconds", zone=zone) < 0.1
    assert _sample(r, "kepler_vm_feature_collection_duration_seconds", feature="proc") == 0.003
    assert _sample(r, "kepler_vm_feature_collection_duration_seconds", feature="perf") == 0.25
    assert 0 < _sample(r, "kepler_vm_feature_collection_duration_seconds", feature="features") < 0.1


def test_serve_loop_survives_injected_errors(art, settings, monkeypatch):
    """An OSError while reading /proc and a RuntimeError inside the collector's sample: each
    tick is counted (feature="_sample"), the server keeps serving, and watts come back."""
    import threading

    from vmpower.collect import features as collect_features

    real_snapshot, real_sample = collect_features.take_snapshot, collect_features.FeatureCollector._sample
    calls = {"snapshot": 0, "sample": 0}

    def snapshot(*a, **kw):
        calls["snapshot"] += 1
        if calls["snapshot"] in (4, 5):
            raise OSError(5, "injected: /proc/stat unreadable")
        return real_snapshot(*a, **kw)

    def sample(self, *a, **kw):
        calls["sample"] += 1
        if calls["sample"] == 6:
            raise RuntimeError("injected: psutil failed")
        return real_sample(self, *a, **kw)

    monkeypatch.setattr(collect_features, "take_snapshot", snapshot)
    monkeypatch.setattr(collect_features.FeatureCollector, "_sample", sample)
    model = predict.Model.load(art["models"][SYS_XGB])
    port, stop, errors = free_port(), [], []

    def run():
        try:
            predict.run_exporter([model], [settings], port=port, address="127.0.0.1", interval=0.2, node_name="vm-t",
                                 use_perf=False, kepler_url=None, stop=stop)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline, m = time.monotonic() + 30, {}
        while time.monotonic() < deadline and not errors:
            try:
                m = scrape(port)
            except OSError:
                m = {}
            failed = {s.labels["feature"]: s.value for s in m.get("kepler_vm_feature_collection_errors", [])
                      if s.name.endswith("_total")}
            if failed.get("_sample", 0) >= 3 and len(_zones(m)) == 4:
                break
            time.sleep(0.1)
    finally:
        for s in stop:
            s()
        t.join(timeout=10)
    assert not errors and not t.is_alive()
    assert failed["_sample"] == 3 and len(_zones(m)) == 4
    assert calls["snapshot"] > 7
    unavailable = {s.labels["zone"]: s.value for s in m["kepler_vm_zone_unavailable"] if s.name.endswith("_total")}
    assert set(unavailable) == set(model.zones) and all(v >= 3 for v in unavailable.values())


# ---------------------------------------------------------------- exporter (real server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


class Server:
    """``vmpower serve`` in a subprocess on loopback; stopped with SIGTERM."""

    def __init__(self, model_dir, config, *extra):
        self.port = free_port()
        cmd = [sys.executable, "-m", "vmpower", "serve", "--model", str(model_dir), "--config", str(config),
               "--address", "127.0.0.1", "--port", str(self.port), "--no-perf", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                last = scrape(self.port)
                if predicate(last):
                    return last
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"condition not met within {timeout} s; last scrape: {last}")

    def stop(self):
        from exporter_helpers import stop_process

        self.stderr = stop_process(self.proc)
        return self.proc.returncode


def _zones(m) -> dict:
    return {s.labels["zone"]: s for s in m.get("kepler_node_cpu_watts", [])}


def _by(m, name, label="zone") -> dict:
    return {s.labels[label]: s.value for s in m.get(name, []) if not s.name.endswith("_created")}


def _active(m) -> dict:
    """zone -> "<feature_group>/<model_name>" of the model serving it (kepler_vm_model_version == 1)."""
    return {s.labels["zone"]: f"{s.labels['feature_group']}/{s.labels['model_name']}"
            for s in m["kepler_vm_model_version"] if s.value == 1}


def test_serve_exports_every_zone_and_health_metrics(art):
    model = predict.Model.load(art["models"][SYS_GBR])
    srv = Server(art["models"][SYS_GBR], art["config"], "--interval", "0.2", "--node-name", "vm-test")
    try:
        m = srv.wait_for(lambda m: len(_zones(m)) == 4)
    finally:
        assert srv.stop() == 0
    zones = _zones(m)
    assert set(zones) == set(model.zones)
    assert all(s.labels["node_name"] == "vm-test" and np.isfinite(s.value) for s in zones.values())
    dur = _by(m, "kepler_vm_model_inference_duration_seconds")
    assert set(dur) == set(model.zones) and all(0 < v < 0.1 for v in dur.values())
    ver = m["kepler_vm_model_version"]
    assert {(s.labels["zone"], s.labels["version"], s.labels["feature_group"], s.value) for s in ver} == {
        (z, model.version, "SystemOnly", 1.0) for z in model.zones}
    errors = _by(m, "kepler_vm_feature_collection_errors", "feature")
    assert set(errors) == set(model.features) | {"_sample"} and not any(errors.values())
    coll = _by(m, "kepler_vm_feature_collection_duration_seconds", "feature")
    assert set(coll) == {"proc", "features"} and 0 < coll["proc"] < 5 and 0 < coll["features"] < 1  # --no-perf, no Kepler
    conf = _by(m, "kepler_vm_model_confidence_score")
    assert set(conf) == set(model.zones) and all(0 <= v <= 1 for v in conf.values())
    td = model.metadata["training_data"]
    assert _by(m, "kepler_vm_training_data_points") == {z: td["rows"] for z in model.zones}
    assert _by(m, "kepler_vm_last_training_timestamp") == {z: pytest.approx(td["last_sample_time"]) for z in model.zones}
    assert _by(m, "kepler_vm_model_accuracy_mae") == {z: pytest.approx(model.metadata[f"{z}_mae"]) for z in model.zones}
    assert not any(_by(m, "kepler_vm_zone_unavailable").values())


def test_serve_without_a_models_features_drops_its_zones(art):
    """CounterOnly needs perf counters; --no-perf makes them unavailable: no watts, errors rise."""
    srv = Server(art["models"][CNT_LR], art["config"], "--interval", "0.2")
    try:
        m = srv.wait_for(lambda m: any(s.value >= 2 for s in m.get("kepler_vm_feature_collection_errors", [])
                                       if s.name.endswith("_total")))
    finally:
        assert srv.stop() == 0
    assert _zones(m) == {}
    errors = _by(m, "kepler_vm_feature_collection_errors", "feature")
    assert errors["cpu_cycles"] >= 2 and errors["instructions"] >= 2
    # the model is loaded (its version series are there, all 0), only its inputs are missing
    assert sorted(s.value for s in m["kepler_vm_model_version"]) == [0.0] * 4
    assert all(v >= 2 for v in _by(m, "kepler_vm_zone_unavailable").values())
    assert "needs perf counters" in srv.stderr


def test_serve_selects_for_this_machine_and_skips_perf_models_without_perf(art):
    """--model results without --node-type/--machine-spec reads this machine's spec; with
    --no-perf the best group (Activity, needs perf) is skipped for SystemOnly."""
    from vmpower.collect.orchestrate import machine_spec

    here = machine_spec()["processor"]
    demo = json.loads(art["spec"].read_text())["processor"]
    best = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    srv = Server(art["results"], art["config"], "--interval", "0.2")
    try:
        m = srv.wait_for(lambda m: len(_zones(m)) == 4)
    finally:
        assert srv.stop() == 0
    assert set(_active(m).values()) == {f"SystemOnly/{best['SystemOnly']['model_name']}"}
    assert {s.labels["feature_group"] for s in m["kepler_vm_model_version"]} == {"SystemOnly"}
    warned = f"no node_type has processor {here!r}: using the nearest, {NODE_TYPE}" in srv.stderr
    assert warned == (selection._norm_processor(here) != selection._norm_processor(demo))
    assert "/SystemOnly/" in srv.stderr.split("selected ", 1)[1].splitlines()[0]


def test_serve_node_type_and_machine_spec_select_and_fall_back(art, tmp_path):
    best = json.loads((art["results"] / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    act, sysm = f"Activity/{best['Activity']['model_name']}", f"SystemOnly/{best['SystemOnly']['model_name']}"
    # --node-type with the perf-needing Activity group asked for: it stays first in the chain and
    # SystemOnly serves while perf is off; the perf features count errors.
    srv = Server(art["results"], art["config"], "--interval", "0.2", "--node-type", NODE_TYPE,
                 "--feature-group", "Activity")
    try:
        m = srv.wait_for(lambda m: len(_zones(m)) == 4)
    finally:
        assert srv.stop() == 0
    assert set(_active(m).values()) == {sysm}
    assert {f"{s.labels['feature_group']}/{s.labels['model_name']}" for s in m["kepler_vm_model_version"]} == {act, sysm}
    assert _by(m, "kepler_vm_feature_collection_errors", "feature")["cpu_cycles"] >= 1
    assert "Activity of demo-xeon-gold needs features that cannot be collected here" in srv.stderr
    # --machine-spec with the node_type's own hardware: an exact match, no warning.
    spec = tmp_path / "spec.json"
    spec.write_text(art["spec"].read_text())
    srv = Server(art["results"], art["config"], "--interval", "0.2", "--machine-spec", spec)
    try:
        m = srv.wait_for(lambda m: len(_zones(m)) == 4)
    finally:
        assert srv.stop() == 0
    assert set(_active(m).values()) == {sysm} and "nearest" not in srv.stderr


def test_serve_refuses_a_tampered_model(art, tmp_path):
    d = _copy(art, SYS_LR, tmp_path)
    (d / "metadata.json").write_text((d / "metadata.json").read_text().replace('"core"', '"cor"', 1))
    res = subprocess.run([sys.executable, "-m", "vmpower", "serve", "--model", str(d), "--config", str(art["config"]),
                          "--address", "127.0.0.1", "--port", str(free_port())], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("metadata.json does not match its sha256 in manifest.sha256 (file changed)")
