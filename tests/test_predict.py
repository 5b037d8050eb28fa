"""vmpower predict / serve on real exported models (built once by the pipeline's own steps)."""

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
from vmpower import cli, predict
from vmpower.errors import InputError

SYS_GBR = ("AbsPower", "SystemOnly", "GradientBoostingRegressor")
SYS_LR = ("AbsPower", "SystemOnly", "LinearRegression")
CNT_LR = ("AbsPower", "CounterOnly", "LinearRegression")


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
    from vmpower.ingest import naive_seconds

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
                                "power_uncore", "skip_reason"]
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
    assert predict.load_settings(None, {"ingest": {"cumulative_features": ["x"]}}).cumulative_features == ["x"]
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
            if info.filename == "weight.json":
                data = data.replace(b'"Bias_Weight": ', b'"Bias_Weight": 1')
            zout.writestr(info, data)
    code = cli.main(["predict", "--model", str(dst), "--input", str(art["vm_files"]["run02-mix"]),
                     "--config", str(art["config"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"vmpower predict: error: {dst}: weight.json does not match its sha256 in manifest.sha256 (file changed)"


# ---------------------------------------------------------------- selection


def test_select_by_node_type_and_exact_spec(art, caplog):
    res = art["results"]
    sel = predict.select_model(res, node_type=NODE_TYPE)
    best = json.loads((res / "best.json").read_text())[NODE_TYPE]["AbsPower"]
    group = min(best, key=lambda g: best[g]["mae_mean"])
    assert sel.exact and sel.feature_group == group and sel.path.name.startswith(best[group]["model_name"])
    assert predict.select_model(res, node_type=NODE_TYPE, feature_group="CounterOnly").path.parent.name == "CounterOnly"
    # Inside a VM cores and memory are the VM's: the processor model decides the match.
    spec = json.loads(art["spec"].read_text())
    vm_view = {**spec, "cores": 8, "chips": 1, "memory": 16}
    with caplog.at_level(logging.WARNING, logger="vmpower.predict"):
        sel = predict.select_model(res, machine_spec=vm_view)
    assert sel.exact and sel.node_type == NODE_TYPE and not caplog.records
    with pytest.raises(InputError, match=r"best\.json: no model for node_type nope \(known: demo-xeon-gold\)"):
        predict.select_model(res, node_type="nope")
    with pytest.raises(InputError, match="has no DynPower model"):
        predict.select_model(res, node_type=NODE_TYPE, output_type="DynPower")


def test_select_nearest_spec_warns(art, caplog, tmp_path, capsys):
    epyc = {"processor": "AMD EPYC 7763 64-Core Processor", "cores": 128, "chips": 2, "memory": 512, "frequency": 2450}
    with caplog.at_level(logging.WARNING, logger="vmpower.predict"):
        sel = predict.select_model(art["results"], machine_spec=epyc)
    assert not sel.exact and sel.node_type == NODE_TYPE and sel.distance > 4
    assert any("nearest" in r.getMessage() and NODE_TYPE in r.getMessage() for r in caplog.records)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(epyc))
    assert cli.main(["predict", "--model", str(art["results"]), "--machine-spec", str(spec_file), "--input",
                     str(art["vm_files"]["run02-mix"]), "--config", str(art["config"]), "--output",
                     str(tmp_path / "o.csv")]) == 0


def test_spec_distance_orders_the_demo_hardware():
    import yaml

    specs = {k: v["machine_spec"] for k, v in yaml.safe_load(open("config.yaml"))["synth"]["node_types"].items()}
    gold, e5, epyc = specs["demo-xeon-gold"], specs["demo-xeon-e5"], specs["demo-epyc"]
    assert predict.spec_distance(gold, gold) == 0
    assert predict.processor_family(gold["processor"]) == ("intel", "xeon gold")
    assert predict.processor_family(epyc["processor"]) == ("amd", "epyc")
    assert 0 < predict.spec_distance(gold, e5) < predict.spec_distance(gold, epyc)
    assert predict.spec_distance(gold, e5) == pytest.approx(predict.spec_distance(e5, gold))
    assert predict.spec_distance(gold, {**gold, "memory": None}) == pytest.approx(0.5)


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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


def _zones(m) -> dict:
    return {s.labels["zone"]: s for s in m.get("kepler_node_cpu_watts", [])}


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
    dur = {s.labels["zone"]: s.value for s in m["kepler_vm_model_inference_duration_seconds"]}
    assert set(dur) == set(model.zones) and all(0 < v < 0.1 for v in dur.values())
    ver = m["kepler_vm_model_version"]
    assert {(s.labels["zone"], s.labels["version"], s.value) for s in ver} == {(z, model.version, 1.0) for z in model.zones}
    errors = {s.labels["feature"]: s.value for s in m["kepler_vm_feature_collection_errors"] if s.name.endswith("_total")}
    assert set(errors) == set(model.features) and not any(errors.values())
    (coll,) = m["kepler_vm_feature_collection_duration_seconds"]
    assert 0 < coll.value < 5


def test_serve_without_a_models_features_drops_its_zones(art):
    """CounterOnly needs perf counters; --no-perf makes them unavailable: no watts, errors rise."""
    srv = Server(art["models"][CNT_LR], art["config"], "--interval", "0.2")
    try:
        m = srv.wait_for(lambda m: any(s.value >= 2 for s in m.get("kepler_vm_feature_collection_errors", [])
                                       if s.name.endswith("_total")))
    finally:
        assert srv.stop() == 0
    assert _zones(m) == {}
    errors = {s.labels["feature"]: s.value for s in m["kepler_vm_feature_collection_errors"] if s.name.endswith("_total")}
    assert errors["cpu_cycles"] >= 2 and errors["instructions_per_cycle"] >= 2
    assert len(m["kepler_vm_model_version"]) == 4  # the model is loaded, only its inputs are missing


def test_serve_refuses_a_tampered_model(art, tmp_path):
    d = _copy(art, SYS_LR, tmp_path)
    (d / "metadata.json").write_text((d / "metadata.json").read_text().replace('"core"', '"cor"', 1))
    res = subprocess.run([sys.executable, "-m", "vmpower", "serve", "--model", str(d), "--config", str(art["config"]),
                          "--address", "127.0.0.1", "--port", str(free_port())], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("metadata.json does not match its sha256 in manifest.sha256 (file changed)")
