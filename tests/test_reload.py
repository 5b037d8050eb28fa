"""Live model updates with rollback (serve --model-versions): real exported models dropped into
a store under a Switch fed with real collector records, and a file swap under a running
``vmpower serve`` (new version served, a broken one rolled back, no gap in the series)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest

from bench.predict_artifacts import build
from exporter_helpers import Serve, parse, series
from vmpower import cli
from vmpower import limits as limits_mod
from vmpower.pipeline.artifact import write_manifest
from vmpower.serving import reload, signing, versions, vmconfig
from vmpower.serving.fallback import ChainSpec
from vmpower.serving.live import load_settings

SYS_LR = ("AbsPower", "SystemOnly", "LinearRegression")
SYS_XGB = ("AbsPower", "SystemOnly", "XGBRegressor")
SYS_GB = ("AbsPower", "SystemOnly", "GradientBoostingRegressor")
ZONES = {"package", "core", "dram", "uncore"}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("reload"))


@pytest.fixture(autouse=True)
def _restore():
    old = signal.getsignal(signal.SIGHUP)
    signing.configure(None)
    yield
    signal.signal(signal.SIGHUP, old)


def drop(art, store, name, key=SYS_LR, zip_=False):
    """Put a version in the store the documented way: a hidden name, then a rename."""
    src = art["models"][key]
    tmp = store / f".{name}.tmp"
    if zip_:
        shutil.copy(src.with_suffix(".zip"), tmp)
        os.replace(tmp, store / f"{name}.zip")
        return store / f"{name}.zip"
    shutil.copytree(src, tmp)
    os.replace(tmp, store / name)
    return store / name


def tampered(art, store, name):
    d = drop(art, store, f".{name}.x")
    data = bytearray((d / "core.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "core.onnx").write_bytes(bytes(data))
    os.replace(d, store / name)


def nan_model(art, store, name):
    """A real exported model whose package graph outputs NaN (manifest rewritten: only the probe catches it)."""
    import onnx
    from onnx import TensorProto, helper

    d = drop(art, store, f".{name}.x")
    meta = json.loads((d / "metadata.json").read_text())
    n = len(meta["features"])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["features", "axes"], ["s"], keepdims=1), helper.make_node("Mul", ["s", "nan"], ["variable"])],
        "nan", [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, n])],
        [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("nan", TensorProto.DOUBLE, [], [float("nan")])])
    (d / "package.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    onnx.checker.check_model(onnx.load(str(d / "package.onnx")))
    (d / "manifest.sha256").unlink()
    write_manifest(d)
    os.replace(d, store / name)


def narrow_ranges(art, store, name, records):
    """A real model whose recorded training ranges are a point no live record has: every tick's
    confidence collapses to 0 (the checks pass: its outputs there are finite)."""
    d = drop(art, store, f".{name}.x")
    meta = json.loads((d / "metadata.json").read_text())
    for f, r in meta["training_data"]["feature_ranges"].items():
        r["min"] = r["max"]  # the training data's max corner: plausible watts, no live record there
    (d / "metadata.json").write_text(json.dumps(meta))
    (d / "manifest.sha256").unlink()
    write_manifest(d)
    os.replace(d, store / name)


def make_switch(art, store, *extra):
    args = cli.build_parser("serve").parse_args(["serve", "--model-versions", str(store), "--config",
                                                 str(art["config"]), "--no-perf", *extra])
    cfg, resolved = vmconfig.apply(vars(args), "serve")
    vars(args).update(resolved)
    spec = ChainSpec.from_flags({**vars(args), "model": args.model_versions})
    models, make, serving = reload.start(args.model_versions, spec, cfg, limits_mod.defaults(), use_perf=False)
    settings = [load_settings(args.config, m.metadata) for m in models]
    sw = make(models, settings, "vm", threshold=args.confidence_threshold, low_confidence="report", idle=None,
              max_fields=None)
    # the spec of the version serving first: serve's options, that version's path
    assert serving == spec.for_model(next(v.path for v in versions.scan(store) if v.name == sw.active))
    return sw


def counters(sw) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in sw.registry.collect()
            if m.type == "counter" for s in m.samples if s.name.endswith("_total")}


def serving(sw) -> set:
    return {(s.labels["zone"], s.labels["version"]) for m in sw.registry.collect() if m.name == "kepler_vm_model_version"
            for s in m.samples if s.value == 1}


def rollbacks(sw) -> dict:
    return {(s.labels["version"], s.labels["reason"]): s.value for m in sw.registry.collect()
            if m.name == "kepler_vm_model_rollbacks" for s in m.samples if s.name.endswith("_total")}


def test_swaps_refusals_runtime_rollback_and_pruning(art, tmp_path):
    """One store, one Switch, 60 real collector records: v1 serves; v2 dropped in serves from
    the next tick with no tick without the four zones and every counter continuing; v3
    (tampered), v4 (NaN output) are refused and counted; v5 (confidence collapse at run time)
    serves, then is rolled back to v2 after rollback_after_ticks; older versions are pruned."""
    store = tmp_path / "store"
    store.mkdir()
    drop(art, store, "v1")
    sw = make_switch(art, store)
    assert sw.active == "v1"
    records = json.loads(art["vm_files"]["run02-mix"].read_text())[:60]
    events = {8: lambda: drop(art, store, "v2", SYS_XGB, zip_=True), 16: lambda: tampered(art, store, "v3"),
              24: lambda: nan_model(art, store, "v4"), 32: lambda: narrow_ranges(art, store, "v5", records)}
    before, history = counters(sw), []
    for i, rec in enumerate(records):
        if i in events:
            events[i]()
        out = sw.update(rec)
        if i:
            assert set(out) == ZONES, (i, sw.active)  # no gap across swaps and rollbacks
        now = counters(sw)
        assert all(now.get(k, 0.0) >= v for k, v in before.items()), i  # no counter goes down or vanishes
        before = now
        history.append(sw.active)
        assert {v for _, v in serving(sw)} == {sw.active} and {z for z, _ in serving(sw)} == ZONES
    assert history[8] == "v2" and history[7] == "v1"
    assert set(history[8:32]) == {"v2"}  # v3 and v4 never served
    assert history[32] == "v5" and "v5" not in history[36:] and history[-1] == "v2"
    assert rollbacks(sw) == {("v3", "check"): 1, ("v4", "check"): 1, ("v5", "runtime"): 1}
    # v5's activation pruned to the newest 3 (v3-v5) plus the loaded v2 (its rollback target)
    assert [v.name for v in versions.scan(store)] == ["v2", "v3", "v4", "v5"]
    # joules carried: the scraped counter equals the sum of every tick's watts x window
    joules = sw.snapshot_joules()
    assert all(j > 0 for j in joules.values())


def test_sighup_retries_refused_versions(art, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    drop(art, store, "v1")
    sw = make_switch(art, store)
    tampered(art, store, "v2")
    records = json.loads(art["vm_files"]["run02-mix"].read_text())[:6]
    sw.update(records[0])
    sw.update(records[1])
    assert rollbacks(sw) == {("v2", "check"): 1}
    sw.update(records[2])
    assert rollbacks(sw) == {("v2", "check"): 1}  # not retried while unchanged
    os.kill(os.getpid(), signal.SIGHUP)
    sw.update(records[3])
    assert rollbacks(sw) == {("v2", "check"): 2} and sw.active == "v1"


def test_startup_skips_a_broken_newest_version_and_counts_it(art, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    drop(art, store, "v1")
    nan_model(art, store, "v2")
    sw = make_switch(art, store)
    assert sw.active == "v1" and rollbacks(sw) == {("v2", "check"): 1}


def test_unsigned_version_is_refused_when_a_key_is_configured(art, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    signing.generate_key(tmp_path / "k")
    v1 = drop(art, store, "v1")
    signing.sign_model(signing.load_private(tmp_path / "k"), v1)
    drop(art, store, "v2", SYS_XGB)  # unsigned
    cfg = tmp_path / "vm.yaml"
    cfg.write_text(f"vm_energy_modeling:\n  validation: {{public_key_file: {tmp_path / 'k.pub'}}}\n")
    sw = make_switch(art, store, "--config-file", str(cfg))
    assert sw.active == "v1" and rollbacks(sw) == {("v2", "check"): 1}


@pytest.mark.slow
def test_file_swap_under_a_running_serve(art, tmp_path):
    """A running ``vmpower serve --model-versions``: v2 dropped in serves without a restart, a
    broken v3 is refused and counted while v2 keeps serving; scraped continuously, every scrape
    has the four zones and no counter ever goes down."""
    store = tmp_path / "store"
    store.mkdir()
    drop(art, store, "v1")
    scrapes, stop = [], threading.Event()
    srv = _serve_versions(store, art)
    try:
        srv.wait_for(lambda m: len(series(m, "kepler_node_cpu_watts")) == 4)

        def scrape():
            while not stop.is_set():
                try:
                    scrapes.append(parse(srv.text()))
                except OSError as exc:  # a failed scrape is a gap too
                    scrapes.append(exc)
                time.sleep(0.03)

        t = threading.Thread(target=scrape)
        t.start()
        time.sleep(1.0)
        drop(art, store, "v2", SYS_XGB)
        srv.wait_for(lambda m: {s.labels["version"] for s in m.get("kepler_vm_model_version", [])} == {"v2"})
        time.sleep(1.0)
        tampered(art, store, "v3")
        srv.wait_for(lambda m: any(s.labels.get("version") == "v3" and s.value == 1
                                   for s in m.get("kepler_vm_model_rollbacks", []) if s.name.endswith("_total")))
        time.sleep(1.0)
        stop.set()
        t.join()
    finally:
        stop.set()
        code = srv.stop()
    assert code == 0, srv.stderr[-2000:]
    assert len(scrapes) > 50 and not [s for s in scrapes if isinstance(s, Exception)]
    seen_versions, last = [], {}
    for m in scrapes:
        assert set(series(m, "kepler_node_cpu_watts")) == ZONES
        seen_versions.append({s.labels["version"] for s in m["kepler_vm_model_version"]})
        for fam in m.values():
            for s in fam:
                if s.name.endswith("_total"):
                    k = (s.name, tuple(sorted(s.labels.items())))
                    assert s.value >= last.get(k, 0.0), k
                    last[k] = s.value
    assert {"v1"} in seen_versions and seen_versions[-1] == {"v2"} and {"v3"} not in seen_versions
    assert "model version v3 refused (check)" in srv.stderr and "model version v2 serves (was v1)" in srv.stderr


def _serve_versions(store, art):
    """exporter_helpers.Serve's process, started with --model-versions instead of --model."""
    import subprocess
    import sys

    from exporter_helpers import free_port

    srv = Serve.__new__(Serve)
    srv.port = free_port()
    srv.proc = subprocess.Popen([sys.executable, "-m", "vmpower", "serve", "--model-versions", str(store), "--config",
                                 str(art["config"]), "--address", "127.0.0.1", "--port", str(srv.port), "--no-perf",
                                 "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return srv


def test_predict_uses_the_newest_version_that_loads(art, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    drop(art, store, "v1", SYS_LR)
    drop(art, store, "v2", SYS_XGB, zip_=True)
    tampered(art, store, "v3")
    cfg = tmp_path / "vm.yaml"
    cfg.write_text(f"vm_energy_modeling:\n  model_path: {store}\n")
    vm = str(art["vm_files"]["run02-mix"])
    common = ["--config", str(art["config"]), "--input", vm]
    assert cli.main(["predict", "--config-file", str(cfg), *common, "--output", str(tmp_path / "a.csv")]) == 0
    assert cli.main(["predict", "--model", str(store / "v2.zip"), *common, "--output", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    for name in ("v1", "v2.zip", "v3"):
        shutil.rmtree(store / name) if (store / name).is_dir() else (store / name).unlink()
    assert cli.main(["predict", "--config-file", str(cfg), *common]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vmpower predict: error: {store}: no usable model version (empty)"
