"""vmpower.serving.exporter: the chain served tick by tick (fallback, confidence, degradation,
health metrics) and Kepler >= 0.10's node metric family (joules integrated from the published
watts, idle/active split, promtool on the live output)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from bench.predict_artifacts import NODE_TYPE
from exporter_helpers import Serve, need, parse, series
from serving_helpers import (ACT_LR, CNT_LR, DYN_LR, PERF_FIELDS, SYS_GBR, SYS_XGB, _chain, _records, _sample, _series,  # noqa: F401
                             _watts, _who)
from vmpower.serving import artifact, live, predict
from vmpower.serving.energy import find_idle
from vmpower.serving.exporter import Exporter

PERF = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
        "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")
NODE = ("kepler_node_cpu_joules_total", "kepler_node_cpu_watts", "kepler_node_cpu_active_joules_total",
        "kepler_node_cpu_active_watts", "kepler_node_cpu_idle_joules_total", "kepler_node_cpu_idle_watts")



def _family(registry, name) -> dict:
    return {s.labels["zone"]: s.value for m in registry.collect() for s in m.samples if s.name == name}


def _idle(art) -> dict:
    return json.loads(art["isolation"].read_text())["idle_power_watts"]


def test_idle_power_comes_from_the_node_types_dynpower_model(art):
    absm = artifact.Model.load(art["models"][SYS_XGB])
    dyn = artifact.Model.load(art["models"][DYN_LR])
    assert find_idle([dyn])[0] == _idle(art)
    idle, where = find_idle([absm], art["results"])  # serve --model results: its DynPower model
    assert idle == _idle(art) and "DynPower" in where
    idle, where = find_idle([absm], art["models"][SYS_XGB])  # a single AbsPower model: none
    assert idle is None and "no DynPower model" in where


def test_joules_integrate_published_watts_across_fallbacks_and_gaps(art, settings):
    """Every tick adds exactly (published watts x the record's window) to each zone's joules,
    whichever model served it; an absent zone adds nothing; counters never go down; active +
    idle = total with idle = min(isolated idle power, total)."""
    chain = [artifact.Model.load(art["models"][k]) for k in (CNT_LR, SYS_XGB)]
    idle = _idle(art)
    exp = Exporter(chain, [settings] * 2, "vm-1", idle=idle)
    r = exp.registry
    records = json.loads(art["vm_files"]["run02-mix"].read_text())[:40]
    for i in range(10, 20):  # perf lost: SystemOnly serves
        records[i] = {k: (None if k in PERF else v) for k, v in records[i].items()}
    for i in (25, 26):  # no input for any model: zones absent
        records[i] = {k: v for k, v in records[i].items() if k != "cpu_utilization"}
    served_by, before = [], _family(r, "kepler_node_cpu_joules_total")
    assert before == dict.fromkeys(chain[0].zones, 0.0)
    for rec in records:
        out = exp.update(rec)
        after = _family(r, "kepler_node_cpu_joules_total")
        watts = _family(r, "kepler_node_cpu_watts")
        assert watts == out
        served_by.append(exp.served.get("package"))
        for zone in chain[0].zones:
            step = after[zone] - before[zone]
            assert step >= 0
            assert step == pytest.approx(watts.get(zone, 0.0) * rec["time_delta_seconds"], abs=1e-9)
        active, idle_w = _family(r, "kepler_node_cpu_active_watts"), _family(r, "kepler_node_cpu_idle_watts")
        for zone, w in watts.items():
            assert idle_w[zone] == pytest.approx(min(idle[zone], w)) and active[zone] + idle_w[zone] == pytest.approx(w)
        before = after
    assert {0, 1} <= set(served_by) and None in served_by  # both models served, and a gap
    aj, ij = _family(r, "kepler_node_cpu_active_joules_total"), _family(r, "kepler_node_cpu_idle_joules_total")
    assert all(aj[z] + ij[z] == pytest.approx(before[z]) and before[z] > 0 for z in before)
    ratio = r.get_sample_value("kepler_node_cpu_usage_ratio", {"node_name": "vm-1"})
    assert ratio == pytest.approx(records[-1]["cpu_utilization"] / 100)


def test_dynpower_total_is_dynamic_plus_idle(art, settings):
    """A DynPower model predicts power above idle: the node's total adds the isolated idle power
    back (clipped at 0), and active is then exactly the model's output where it is positive."""
    model = artifact.Model.load(art["models"][DYN_LR])
    src = art["vm_files"]["run02-mix"]
    batch = predict.predict_file(model, src, settings)
    records = json.loads(src.read_text())
    exp = Exporter(model, settings, "vm-1", idle=_idle(art))
    exp.update(records[0])
    for i in (1, 2, 3):
        got = exp.update(records[i])
        for zone, w in got.items():
            dyn = batch[f"power_{zone}"].iloc[i]
            assert w == pytest.approx(max(0.0, dyn + _idle(art)[zone]), abs=1e-9)


def _promtool(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def test_live_output_is_promtool_clean_and_has_keplers_node_family(art, tmp_path):
    """promtool (Debian's prometheus package) lints the live /metrics of a running serve."""
    bad = "# HELP x_total a gauge\n# TYPE x_total gauge\nx_total 1\n"
    assert _promtool(bad).returncode != 0  # the lint is live: a gauge named like a counter fails
    with Serve(art["results"], art["config"], "--node-type", NODE_TYPE, "--interval", "0.2", "--node-name", "vm-p",
               "--powercap-dir", tmp_path / "powercap") as srv:
        # The pinning state is published once 10 samples show whether the host steals time.
        text = srv.wait_for(lambda m: len(series(m, "kepler_node_cpu_idle_watts")) == 4
                            and all(v > 0 for v in series(m, "kepler_node_cpu_joules_total").values())
                            and "kepler_vm_cpu_pinning_enabled" in m)
    res = _promtool(text)
    assert res.returncode == 0 and res.stdout.strip() == res.stderr.strip() == "", res.stdout + res.stderr
    m = parse(text)
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    for name in NODE:
        assert types[name] == ("counter" if name.endswith("_total") else "gauge")  # as Kepler's Go client writes
        samples = [s for s in m[name.removesuffix("_total")] if s.name == name]
        assert {s.labels["zone"] for s in samples} == {"package", "core", "dram", "uncore"}
        assert all(set(s.labels) == {"node_name", "zone", "path"} and s.labels["node_name"] == "vm-p" for s in samples)
        assert {s.labels["zone"]: s.labels["path"] for s in samples} == {
            "package": "/sys/class/powercap/intel-rapl:0", "core": "/sys/class/powercap/intel-rapl:0:0",
            "uncore": "/sys/class/powercap/intel-rapl:0:1", "dram": "/sys/class/powercap/intel-rapl:0:2"}
    assert types["kepler_node_cpu_usage_ratio"] == "gauge"
    assert 0 <= m["kepler_node_cpu_usage_ratio"][0].value <= 1
    assert types["kepler_vm_training_data_points"] == "gauge"  # was a gauge named *_total
    for fam in ("kepler_vm_model_inference_duration_seconds", "kepler_vm_model_confidence_score",
                "kepler_vm_model_version", "kepler_vm_model_accuracy_mae", "kepler_vm_last_training_timestamp",
                "kepler_vm_feature_collection_errors_total", "kepler_vm_feature_collection_duration_seconds",
                "kepler_vm_inference_errors_total", "kepler_vm_low_confidence_total", "kepler_vm_zone_unavailable_total"):
        assert fam in types, fam
    # EP-003's pinning metrics: unlabelled gauges, the state 0/1, the others in [0, 1]
    assert m["kepler_vm_cpu_pinning_enabled"][0].value in (0.0, 1.0)
    for fam in ("kepler_vm_cpu_isolation_ratio", "kepler_vm_pinning_recommendation_score"):
        assert types[fam] == "gauge" and 0 <= m[fam][0].value <= 1 and not m[fam][0].labels


def test_live_joules_equal_the_integral_of_the_published_watts(art):
    """Over a window of live ticks, the rise of kepler_node_cpu_joules_total equals the integral
    of kepler_node_cpu_watts within 1 % per zone.

    Each tick publishes the watts of the window that just ended, so the scrape loop (every
    20 ms) integrates each newly published value over the time since the previous one was first
    seen: 60 s at serve's default 1 s interval, the window the 1 % bound is stated for."""
    window = 60.0
    interval = 1.0
    with Serve(art["results"], art["config"], "--node-type", NODE_TYPE, "--interval", interval) as srv:
        srv.wait_for(lambda m: len(series(m, "kepler_node_cpu_watts")) == 4)
        seen, last = [], None
        end = time.monotonic() + window
        while time.monotonic() < end or len(seen) < 2:
            m = parse(srv.text())
            t = time.monotonic()
            joules = series(m, "kepler_node_cpu_joules_total")
            if joules != last:
                seen.append((t, joules, series(m, "kepler_node_cpu_watts")))
                last = joules
            time.sleep(0.02)
    assert len(seen) >= 0.8 * window / interval, f"only {len(seen)} ticks seen in {window} s"
    (t0, j0, _), (tn, jn, _) = seen[0], seen[-1]
    assert tn - t0 >= 0.9 * window
    for zone in j0:
        energy = jn[zone] - j0[zone]
        integral = sum(w.get(zone, 0.0) * (t - tp) for (tp, _, _), (t, _, w) in zip(seen, seen[1:]))
        print(f"{zone}: {energy:.4f} J counted, {integral:.4f} J integrated over {tn - t0:.1f} s, "
              f"{len(seen) - 1} ticks ({(energy - integral) / energy:+.3%})")
        assert energy > 0 and abs(energy - integral) <= 0.01 * energy, (zone, energy, integral)


# ---------------------------------------------------------------- the chain, tick by tick (in process)


def test_exporter_matches_batch_and_degrades_per_feature(art, settings):
    """Live path (collector records -> Exporter) gives the batch watts; a missing feature drops
    the zones and counts an error; its return brings them back."""
    model = artifact.Model.load(art["models"][SYS_GBR])
    src = art["vm_files"]["run02-mix"]
    batch = predict.predict_file(model, src, settings)
    records = json.loads(src.read_text())
    exp = Exporter(model, settings, "vm-1")
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


def test_perf_less_tick_is_served_by_the_systemonly_fallback(art, settings):
    """Chain by MAE, a perf group first; samples without perf counters: the SystemOnly model
    serves every zone, with the watts batch predict gives, and says so."""
    chain = _chain(art, use_perf=True)
    sysm = next(m for m in chain if m.metadata["feature_group"] == "SystemOnly")
    act, cnt = [m for m in chain if m is not sysm]
    assert act is chain[0]  # the best model needs perf (Activity or CounterOnly)
    batch = predict.predict_file(sysm, art["vm_files"]["run02-mix"], settings)
    exp = Exporter(chain, settings, "vm-1")
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
    chain = _chain(art, use_perf=True)
    exp = Exporter(chain, settings, "vm-1")
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
    chain = _chain(art, use_perf=True)
    act, sysm = chain[0], chain[1]
    act.output_names["core"] = "no_such_output"  # onnxruntime itself raises on this session
    exp = Exporter(chain, settings, "vm-1")
    recs = _records(art)
    exp.update(recs[0])
    got = exp.update(recs[1])
    assert set(got) == set(act.zones)
    r = exp.registry
    assert _sample(r, "kepler_vm_inference_errors_total", zone="core", **_who(act)) == 1
    assert _sample(r, "kepler_vm_inference_errors_total", zone="package", **_who(act)) == 0
    assert _sample(r, "kepler_vm_model_version", zone="core", version=sysm.version, **_who(sysm)) == 1
    assert _sample(r, "kepler_vm_model_version", zone="package", version=act.version, **_who(act)) == 1
    x = np.array([[live.LiveFeatures(live.for_model(settings, sysm)).compute(recs[0], recs[1])[0][f]
                   for f in sysm.features]])
    assert got["core"] == pytest.approx(float(sysm.predict_zone("core", x)[0]), abs=1e-12)


def _out_of_range(art, model, record, prev, changes, settings, tmp_path):
    """The record with changes, and the confidence the pipeline's batch features give it."""
    rec = {**record, **changes}
    f = tmp_path / "two.json"
    f.write_text(json.dumps([prev, rec]))
    from vmpower.pipeline import ingest

    s = live.for_model(settings, model)
    feats, drop = live.frame_features(ingest.read_vm_features(f), s)
    x = live.model_matrix(model, feats, drop, s, f)[-1]
    ranges = model.metadata["training_data"]["feature_ranges"]
    inside = [ranges[n]["min"] <= v <= ranges[n]["max"] for n, v in zip(model.features, x)]
    return rec, sum(inside) / len(inside)


def test_confidence_threshold_report_drop_and_fallback(art, settings, tmp_path):
    recs = _records(art)
    sysm = artifact.Model.load(art["models"][SYS_XGB])
    far = {"memory_usage_percent": 99.0, "process_count": 5000, "load_average_1min": 80.0, "disk_io_read_mb": 5e3,
           "disk_io_write_mb": 5e3, "network_bytes_recv": 1e11, "network_bytes_sent": 1e11, "cpu_steal": 60.0,
           "cpu_irq": 20.0, "cpu_softirq": 20.0, "sys_procs_running": 500, "sys_procs_blocked": 100}
    rec, expected = _out_of_range(art, sysm, recs[11], recs[10], far, settings, tmp_path)
    assert expected < 0.7
    for mode in ("report", "drop"):
        exp = Exporter(sysm, settings, "vm-1", low_confidence=mode)
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
    exp = Exporter(sysm, settings, "vm-1", threshold=0.5)
    exp.update(recs[10])
    assert set(exp.update(rec)) == set(sysm.zones)
    assert _sample(exp.registry, "kepler_vm_low_confidence_total", zone="core") == 0
    # Chain: the first model's inputs far outside its training range, the fallback's inside.
    act = artifact.Model.load(art["models"][ACT_LR])
    big = {f: recs[11][f] * 1000 for f in ("cpu_cycles", "instructions", "cache_misses", "page_faults")}
    rec2, conf_act = _out_of_range(art, act, recs[11], recs[10], big, settings, tmp_path)
    assert conf_act < 0.7
    exp = Exporter([act, sysm], settings, "vm-1")
    exp.update(recs[10])
    assert set(exp.update(rec2)) == set(sysm.zones)
    r = exp.registry
    assert _sample(r, "kepler_vm_model_version", zone="dram", version=sysm.version, **_who(sysm)) == 1
    assert _sample(r, "kepler_vm_low_confidence_total", zone="dram") == 0
    assert _sample(r, "kepler_vm_model_confidence_score", zone="dram") == 1.0


def test_training_metrics_and_collection_durations(art, settings):
    model = artifact.Model.load(art["models"][SYS_XGB])
    data = pd.read_parquet(art["datasets"]["AbsPower"])
    exp = Exporter(model, settings, "vm-1")
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
