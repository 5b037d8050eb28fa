"""vmpower predict / serve end to end (integration) on real exported models (built once by the
pipeline's own steps); the parts have their own files (test_artifact, test_live,
test_serving_selection, test_fallback, test_exporter)."""

import json
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

from bench.predict_artifacts import NODE_TYPE
from serving_helpers import (CNT_LR, PERF_FIELDS, SYS_GBR, SYS_LR, SYS_XGB, _best_label, _copy, _records,  # noqa: F401
                             _strip_perf, _variant)
from vmpower import cli
from vmpower.serving import artifact, exporter, live, predict, selection
from vmpower.errors import InputError




def _native(art, key):
    import joblib

    return joblib.load(art["trained"][key] / "model.joblib")


# ---------------------------------------------------------------- batch predictions


@pytest.mark.parametrize("key", [SYS_GBR, SYS_LR, CNT_LR], ids=lambda k: f"{k[1]}-{k[2]}")
def test_predictions_equal_native_model_on_pipeline_features(art, settings, key):
    """predict's features equal the merged training rows, and ONNX watts equal the native model's."""
    model = artifact.Model.load(art["models"][key])
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

    model = artifact.Model.load(art["models"][SYS_LR])
    hinges = [f for f in model.features if "_hinge" in f]
    assert hinges and settings.hinges
    assert model.metadata["feature_engineering"]["hinge_features"][hinges[0]]["base"] == "cpu_utilization"
    src = art["vm_files"]["run02-mix"]
    a = predict.predict_file(model, src, settings)
    b = predict.predict_file(model, src, dataclasses.replace(settings, hinges={}))
    pd.testing.assert_frame_equal(a, b)
    assert a["power_package"].notna().sum() > 50


def test_jsonl_and_array_inputs_give_the_same_watts(art, settings, tmp_path):
    model = artifact.Model.load(art["models"][SYS_GBR])
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
    assert live.load_settings(None, {"ingest": {**cfg["ingest"], "cumulative_features": ["x"]}}).cumulative_features == ["x"]
    # A model whose metadata lacks an ingest key is refused in one line (no second set of defaults).
    with pytest.raises(InputError, match="missing setting.*non_features"):
        live.load_settings(None, {"ingest": {"cumulative_features": ["x"]}})
    src = art["vm_files"]["run02-mix"]
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--config", str(art["config"]),
                     "--output", str(tmp_path / "with.csv")]) == 0
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(src), "--output", "without.csv"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "with.csv"), pd.read_csv(tmp_path / "without.csv"))


def test_missing_feature_columns_are_an_error(art, settings, tmp_path):
    model = artifact.Model.load(art["models"][SYS_GBR])
    records = json.loads(art["vm_files"]["run02-mix"].read_text())
    for r in records:
        del r["cpu_steal"]
    bad = tmp_path / "vm.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(InputError, match=r"vm\.json: model .* needs feature\(s\) cpu_steal"):
        predict.predict_file(model, bad, settings)


# ---------------------------------------------------------------- integrity


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


# ---------------------------------------------------------------- predict's fallback chain


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
    alone = predict.predict_file(artifact.Model.load(art["models"][sys_key]), src, settings)
    np.testing.assert_allclose(got["power_core"], alone["power_core"], atol=1e-6)
    assert line.startswith(f"watts for {n - 1}/{n} samples (package,core,dram,uncore: {sys_label} {n - 1}); "
                           "1 lacked the inputs of every model (")
    assert "rate_warmup 1" in line and line.endswith(f"-> {target}")


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


# ---------------------------------------------------------------- exporter (in process)


def test_serve_loop_survives_injected_errors(art, settings, monkeypatch):
    """An OSError while reading /proc and a RuntimeError inside the collector's sample: each
    tick is counted (feature="_sample"), the server keeps serving, and watts come back."""
    import threading

    from vmpower.collect import procfs, sampler

    real_snapshot, real_sample = procfs.take_snapshot, sampler.Sampler.record
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

    monkeypatch.setattr(procfs, "take_snapshot", snapshot)
    monkeypatch.setattr(sampler.Sampler, "record", sample)
    model = artifact.Model.load(art["models"][SYS_XGB])
    port, stop, errors = free_port(), [], []

    def run():
        try:
            options = exporter.ServeOptions(port=port, address="127.0.0.1", interval=0.2, node_name="vm-t",
                                            use_perf=False, kepler_url=None, threshold=0.7, low_confidence="report",
                                            idle_source=None, powercap_dir=None)
            exporter.run_exporter([model], [settings], options, stop=stop)
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
    model = artifact.Model.load(art["models"][SYS_GBR])
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
    from vmpower.collect.machine import machine_spec

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
