"""``vmpower validate``: exporter watts vs host Kepler watts, per zone MAE/MAPE/bias and a verdict
(exit 0 ok, 3 drift, 2 bad input), from files and end to end against a live serve."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower import cli
from vmpower.paths import CONFIG

T0 = 1.7e9


def truth(t):
    """A VM's package watts: smooth, between 5 and 15 W."""
    return 10 + 5 * np.sin((np.asarray(t) - T0) / 20)


def host_csv(path, seconds=300.0, step=0.1, zones=("package", "core")):
    th = T0 + np.arange(0, seconds, step)
    df = pd.DataFrame({"timestamp": th - T0, "timestamp_iso": "2023-11-14T22:13:20"})
    for i, z in enumerate(zones):
        df[f"total_cpu_watts_{z}"] = truth(th) * (1 - 0.3 * i)
    df["vm_count"], df["collection_interval"], df["vm_filter"] = 1, step, "{'vm-1'}"
    df["timestamp_absolute"] = th
    df.to_csv(path, index=False)
    return path


def exporter_csv(path, *, skew=0.0, step=1.0, scale=None, joules=False, seconds=300.0):
    """The exporter's view: its clock ``skew`` s ahead of the host's."""
    te = T0 + np.arange(0, seconds, step)
    watts = {"package": truth(te), "core": truth(te) * 0.7, "dram": np.full(len(te), 1.0)}
    for zone, k in (scale or {}).items():
        watts[zone] = watts[zone] * k
    df = pd.DataFrame({"timestamp_absolute": te + skew})
    for zone, w in watts.items():
        if joules:  # a counter: the integral of the watts (trapezoid, exact for the rate at midpoints)
            df[f"joules_{zone}"] = np.concatenate([[0.0], np.cumsum((w[1:] + w[:-1]) / 2 * step)])
        else:
            df[f"power_{zone}"] = w
    df.to_csv(path, index=False)
    return path


def run(capsys, *argv):
    code = cli.main(["validate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def config_with(tmp_path, **validate):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["validate"] = {**cfg.get("validate", {}), **validate}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_matching_series_pass_and_the_clock_skew_is_found(tmp_path, capsys):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv", skew=0.7)
    code, out, err = run(capsys, "--exporter", exp, "--host", host, "--json", tmp_path / "r.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["verdict"] == "ok"
    assert rep["alignment"]["clock_offset_seconds"] == pytest.approx(-0.7, abs=0.051)
    assert set(rep["zones"]) == {"package", "core"}
    assert rep["zones_exporter_only"] == ["dram"] and "only the exporter has dram" in out
    pkg = rep["zones"]["package"]
    assert pkg["samples"] >= 55 and pkg["mae_watts"] < 0.05 and abs(pkg["bias_watts"]) < 0.02
    assert pkg["host_mean_watts"] == pytest.approx(truth(T0 + np.arange(0, 300, 0.1)).mean(), abs=0.3)
    assert out.splitlines()[0].startswith("validate: OK")


def test_a_scaled_zone_is_drift_with_its_exact_mape_and_bias(tmp_path, capsys):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv", scale={"package": 1.2})
    code, out, _ = run(capsys, "--exporter", exp, "--host", host, "--json", tmp_path / "r.json",
                       "--max-clock-skew", "0")
    assert code == 3
    rep = json.loads((tmp_path / "r.json").read_text())
    pkg, core = rep["zones"]["package"], rep["zones"]["core"]
    assert rep["verdict"] == "drift" and pkg["verdict"] == "drift" and core["verdict"] == "ok"
    assert pkg["mape_percent"] == pytest.approx(20.0, abs=0.1)  # |1.2 h - h| / h
    assert pkg["bias_watts"] == pytest.approx(0.2 * pkg["host_mean_watts"], rel=0.01)
    assert any(r.startswith("MAPE 20.0 %") for r in pkg["reasons"]) and "drift (MAPE" in out


def test_thresholds_come_from_the_config(tmp_path, capsys):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv", scale={"package": 1.2})
    loose = config_with(tmp_path, max_mape_percent=25.0, max_abs_bias_watts=3.0)
    assert run(capsys, "--exporter", exp, "--host", host, "--config", loose)[0] == 0
    strict = config_with(tmp_path, min_samples=1000)
    code, _, err = run(capsys, "--exporter", exp, "--host", host, "--config", strict)
    assert code == 2 and "min_samples (1000)" in err and len(err.strip().splitlines()) == 1


def test_joules_counters_at_another_interval_are_compared_by_their_rate(tmp_path, capsys):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv", step=2.0, joules=True)
    code, _, err = run(capsys, "--exporter", exp, "--host", host, "--json", tmp_path / "r.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["zones"]["package"]["mae_watts"] < 0.05
    assert rep["sources"]["exporter"]["counter_resets"] == 0


def test_a_counter_reset_is_dropped_and_counted(tmp_path, capsys):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv", joules=True)
    df = pd.read_csv(exp)
    cols = [c for c in df.columns if c.startswith("joules_")]
    df.loc[150:, cols] -= df.loc[150, cols] - 1.0  # serve restarted: counters start again near 0
    df.to_csv(exp, index=False)
    code, _, err = run(capsys, "--exporter", exp, "--host", host, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["sources"]["exporter"]["counter_resets"] == 1


@pytest.mark.parametrize("case, expect", [
    ("missing", "file not found"),
    ("no_time", "no timestamp_absolute"),
    ("no_zone", "no zone in common"),
    ("no_overlap", "does not overlap"),
    ("bad_config", "validate"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, expect):
    host = host_csv(tmp_path / "host.csv")
    exp = exporter_csv(tmp_path / "exp.csv")
    extra = []
    if case == "missing":
        exp = tmp_path / "nope.csv"
    elif case == "no_time":
        pd.read_csv(host).drop(columns="timestamp_absolute").to_csv(host, index=False)
    elif case == "no_zone":
        host = host_csv(tmp_path / "host.csv", zones=("uncore",))
    elif case == "no_overlap":
        exp = exporter_csv(tmp_path / "exp.csv", skew=1000.0)
    elif case == "bad_config":
        extra = ["--config", config_with(tmp_path, max_mape=5)]
    code, _, err = run(capsys, "--exporter", exp, "--host", host, *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("vmpower validate: error:") and expect in err


# -- end to end: a real serve, a Kepler-format host replaying its watts ------------------------------

@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from bench.predict_artifacts import build

    return build(tmp_path_factory.mktemp("validate"))


class Replay:
    """The host side: FakeKepler's kepler_vm_cpu_watts for vm-1 follow what serve publishes,
    times ``factor``, the way Kepler would report the VM's measured power."""

    def __init__(self, serve_url: str, factor: float):
        from kepler_server import FakeKepler, Vm

        self.url, self.factor, self.stop = serve_url, factor, threading.Event()
        self.kepler = FakeKepler([Vm(vm_id="uuid-1", vm_name="vm-1")], update_interval=0.1, fixed_watts={},
                                 zones=("package", "core", "dram", "uncore"))
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        from exporter_helpers import parse, series

        while not self.stop.is_set():
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                watts = series(parse(resp.read().decode()), "kepler_node_cpu_watts")
            self.kepler.fixed_watts = {z: w * self.factor for z, w in watts.items()}
            self.stop.wait(0.05)

    def __enter__(self):
        self.kepler.start()
        self.thread.start()
        deadline = time.monotonic() + 10
        while not all(self.kepler.watts().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.kepler.close()


@pytest.mark.slow
def test_end_to_end_live_serve_against_a_replaying_host_then_a_drifted_one(art, tmp_path):
    from bench.predict_artifacts import NODE_TYPE
    from exporter_helpers import Serve

    cfg = config_with(tmp_path, bin_seconds=1.0, min_samples=5, max_clock_skew_seconds=0.5)
    with Serve(art["results"], art["config"], "--node-type", NODE_TYPE, "--interval", "0.5",
               "--node-name", "vm-1") as srv:
        srv.wait_for(lambda m: len(m.get("kepler_node_cpu_watts", [])) == 4)
        serve_url = f"http://127.0.0.1:{srv.port}/metrics"
        codes, reports = [], []
        for factor in (1.0, 1.5):
            with Replay(serve_url, factor) as rep:
                out = tmp_path / f"r{factor}.json"
                proc = subprocess.run(
                    [sys.executable, "-m", "vmpower", "validate", "--exporter", serve_url, "--host", rep.kepler.url,
                     "--vm-name", "vm-1", "--duration", "8", "--interval", "0.25", "--config", str(cfg),
                     "--json", str(out), "--save-exporter", str(tmp_path / f"exp{factor}.csv"),
                     "--save-host", str(tmp_path / f"host{factor}.csv")],
                    capture_output=True, text=True, timeout=60)
                codes.append(proc.returncode)
                reports.append(json.loads(out.read_text()))
                assert proc.returncode in (0, 3), proc.stderr
    ok, drift = reports
    assert codes == [0, 3], (ok, drift)
    assert set(ok["zones"]) == set(drift["zones"]) == {"package", "core", "dram", "uncore"}
    for zone, r in ok["zones"].items():
        assert r["verdict"] == "ok" and r["samples"] >= 5, (zone, r)
    pkg = drift["zones"]["package"]
    # host = 1.5 x exporter: error / host = -1/3 where the watts hold still (the replay lags
    # serve by a scrape, so bins with a load change deviate either way)
    assert pkg["verdict"] == "drift" and 100 / 3 - 8 < pkg["mape_percent"] < 100 / 3 + 8
    assert pkg["bias_watts"] == pytest.approx(-pkg["host_mean_watts"] / 3, rel=0.25)
    # the saved scrapes give the same verdict offline
    code = cli.main(["validate", "--exporter", str(tmp_path / "exp1.5.csv"), "--host", str(tmp_path / "host1.5.csv"),
                     "--config", str(cfg)])
    assert code == 3


def test_an_unreachable_exporter_is_one_line_and_exit_2(tmp_path, capsys, caplog):
    from exporter_helpers import free_port

    host = host_csv(tmp_path / "host.csv")
    code, _, err = run(capsys, "--exporter", f"http://127.0.0.1:{free_port()}/metrics", "--host", host,
                       "--duration", "1", "--interval", "0.5")
    assert code == 2 and "0 usable reading(s)" in err.strip().splitlines()[-1]
    warned = [r for r in caplog.records if "scrape failed" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warned) == 1  # 3 failed scrapes: repeats are logged at debug level
