"""``vmpower serve``'s Kepler >= 0.10 node metric family: joules integrated from the published
watts, idle/active split, promtool on the live output."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from bench.predict_artifacts import NODE_TYPE, build
from exporter_helpers import Serve, need, parse, series
from vmpower.serving import predict
from vmpower.serving.energy import find_idle
from vmpower.serving.exporter import Exporter

SYS_XGB = ("AbsPower", "SystemOnly", "XGBRegressor")
CNT_LR = ("AbsPower", "CounterOnly", "LinearRegression")
DYN_LR = ("DynPower", "SystemOnly", "LinearRegression")
PERF = ("cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
        "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio")
NODE = ("kepler_node_cpu_joules_total", "kepler_node_cpu_watts", "kepler_node_cpu_active_joules_total",
        "kepler_node_cpu_active_watts", "kepler_node_cpu_idle_joules_total", "kepler_node_cpu_idle_watts")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("exporter"))


@pytest.fixture(scope="module")
def settings(art):
    return predict.load_settings(str(art["config"]))


def _family(registry, name) -> dict:
    return {s.labels["zone"]: s.value for m in registry.collect() for s in m.samples if s.name == name}


def _idle(art) -> dict:
    return json.loads(art["isolation"].read_text())["idle_power_watts"]


def test_idle_power_comes_from_the_node_types_dynpower_model(art):
    absm = predict.Model.load(art["models"][SYS_XGB])
    dyn = predict.Model.load(art["models"][DYN_LR])
    assert find_idle([dyn])[0] == _idle(art)
    idle, where = find_idle([absm], art["results"])  # serve --model results: its DynPower model
    assert idle == _idle(art) and "DynPower" in where
    idle, where = find_idle([absm], art["models"][SYS_XGB])  # a single AbsPower model: none
    assert idle is None and "no DynPower model" in where


def test_joules_integrate_published_watts_across_fallbacks_and_gaps(art, settings):
    """Every tick adds exactly (published watts x the record's window) to each zone's joules,
    whichever model served it; an absent zone adds nothing; counters never go down; active +
    idle = total with idle = min(isolated idle power, total)."""
    chain = [predict.Model.load(art["models"][k]) for k in (CNT_LR, SYS_XGB)]
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
    model = predict.Model.load(art["models"][DYN_LR])
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
        text = srv.wait_for(lambda m: len(series(m, "kepler_node_cpu_idle_watts")) == 4
                            and all(v > 0 for v in series(m, "kepler_node_cpu_joules_total").values()))
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
