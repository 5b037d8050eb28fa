"""`vmpower synth`: determinism, the collectors' file formats and Kepler-like host power."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vmpower import synth
from vmpower.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
ZONES = ("package", "core", "dram", "uncore")
VM_FIELDS = [
    "timestamp", "timestamp_absolute", "timestamp_iso", "time_delta_seconds", "collection_interval",
    "vm_hostname", "target_zones", "stress_workload",
    "cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
    "page_faults", "context_switches",
    "cpu_utilization", "cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq",
    "cpu_softirq", "cpu_steal", "cpu_idle", "memory_usage_percent", "memory_available_gb",
    "disk_io_read_mb", "disk_io_write_mb", "network_bytes_sent", "network_bytes_recv", "process_count",
    "load_average_1min", "load_average_5min", "load_average_15min",
    "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio", "cpu_efficiency",
    "node_process_cpu_seconds_total", "node_process_cpu_seconds_delta", "node_process_cpu_seconds_rate",
    "sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_idle_seconds", "sys_cpu_iowait_seconds",
    "sys_context_switches", "sys_interrupts", "sys_forks", "sys_procs_running", "sys_procs_blocked",
]
CUMULATIVE = ["sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_idle_seconds", "sys_cpu_iowait_seconds",
              "sys_context_switches", "sys_interrupts", "sys_forks", "node_process_cpu_seconds_total"]
HOST_CSV_COLUMNS = ["timestamp", "timestamp_iso", "total_cpu_watts_core", "total_cpu_watts_package",
                    "total_cpu_watts_dram", "total_cpu_watts_uncore", "vm_count", "collection_interval", "vm_filter"]
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vmpower")
    synth.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return synth.load_config(CONFIG)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_a")
    assert _cli("synth", "--config", str(CONFIG), "--out", str(root)) == 0
    return root


def _seconds(iso: pd.Series) -> np.ndarray:
    """Naive ISO times as float seconds (unit-independent)."""
    return (pd.to_datetime(iso) - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_dir())


def _read_vm(path: Path) -> tuple[list[dict], str, bool]:
    """(samples, 'array'|'lines', last line cut off)"""
    text = path.read_text(encoding="utf-8")
    if text.startswith("["):
        return json.loads(text), "array", False
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]
    return [json.loads(line) for line in complete], "lines", last != ""


@functools.cache
def _host(run: Path) -> tuple[pd.DataFrame, str]:
    (path,) = list(run.glob("bm_power_*"))
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False), "csv"
    return pd.DataFrame(json.loads(path.read_text(encoding="utf-8"))), "json"


@functools.cache
def _vm(run: Path) -> pd.DataFrame:
    (path,) = list(run.glob("vm_features_*.json"))
    return pd.DataFrame(_read_vm(path)[0])


def test_same_seed_gives_identical_bytes(out, tmp_path):
    again = tmp_path / "b"
    assert _cli("synth", "--config", str(CONFIG), "--out", str(again)) == 0
    a, b = _hashes(out), _hashes(again)
    assert len(a) >= 3 * 5 * 3 + 3
    assert a == b


def test_different_seed_differs(out, tmp_path, cfg):
    # One node_type is enough: streams are keyed by (node_type, run), so these runs equal the full set's.
    subset = dict(cfg, node_types={"demo-epyc": cfg["node_types"]["demo-epyc"]})
    synth.generate(subset, tmp_path / "same")
    synth.generate(dict(subset, seed=cfg["seed"] + 1), tmp_path / "other")
    a = _hashes(out / "demo-epyc")
    assert _hashes(tmp_path / "same" / "demo-epyc") == a
    b = _hashes(tmp_path / "other" / "demo-epyc")
    vm_a = {h for k, h in a.items() if "vm_features_" in k}
    vm_b = {h for k, h in b.items() if "vm_features_" in k}
    assert len(vm_b) == len(vm_a) == len(cfg["runs"])
    assert not vm_a & vm_b
    floor_a = json.loads((out / "demo-epyc" / "synth_noise_floor.json").read_text())
    floor_b = json.loads((tmp_path / "other" / "demo-epyc" / "synth_noise_floor.json").read_text())
    assert floor_a["zones"]["package"]["empirical_noise_mae_watts"] != floor_b["zones"]["package"]["empirical_noise_mae_watts"]


def test_layout_and_file_names(out, cfg):
    node_types = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert node_types == sorted(cfg["node_types"]) and len(node_types) >= 3
    assert all(n.startswith("demo-") for n in node_types)
    specs = set()
    for run in _runs(out):
        vm = list(run.glob("vm_features_*.json"))
        host = list(run.glob("bm_power_*.csv")) + list(run.glob("bm_power_*.json"))
        assert len(vm) == 1 and len(host) == 1, run
        m_vm = re.fullmatch(r"vm_features_([A-Za-z0-9_.-]+)_(\d{8}_\d{6})\.json", vm[0].name)
        m_host = re.fullmatch(r"bm_power_([A-Za-z0-9_.-]+)_(\d{8}_\d{6})\.(csv|json)", host[0].name)
        assert m_vm and m_host and m_vm.group(1, 2) == m_host.group(1, 2)
        spec = json.loads((run / "machine_spec.json").read_text())
        assert list(spec) == ["processor", "cores", "chips", "memory", "frequency"]
        assert spec["cores"] > 0 and spec["memory"] > 0 and spec["frequency"] > 0
        specs.add(json.dumps(spec))
    assert len(specs) == len(node_types)  # different hardware per node_type


def test_vm_files_have_documented_fields_and_exact_layout(out, cfg):
    forms = set()
    for run in _runs(out):
        (path,) = list(run.glob("vm_features_*.json"))
        samples, form, cut = _read_vm(path)
        forms.add(form)
        text = path.read_text(encoding="utf-8")
        if form == "array":
            assert text == json.dumps(samples, indent=2)  # as the collector's json.dump(indent=2)
        else:
            complete = text.split("\n")[:-1]
            assert [json.dumps(s) for s in samples] == complete
            assert cut, "the killed collector's last line is cut off"
            with pytest.raises(json.JSONDecodeError):
                json.loads(text.split("\n")[-1])
        df = pd.DataFrame(samples)
        missing = [f for f in VM_FIELDS if f not in df.columns]
        assert not missing, (path, missing)
        assert set(df["stress_workload"]) <= set(cfg["workloads"])
        assert df["timestamp_iso"].str.match(ISO).all()
        assert (df["collection_interval"] == 1.0).all()
        assert df["target_zones"].map(lambda z: z == ["package", "core"]).all()
        # time_delta_seconds is the exact window; consecutive samples tile the time line
        d = np.diff(df["timestamp_absolute"].to_numpy())
        consecutive = d < 1.5
        assert consecutive.mean() > 0.98 and (~consecutive).sum() >= 1  # a few lost samples
        assert np.abs(d[consecutive] - df["time_delta_seconds"].to_numpy()[1:][consecutive]).max() < 2e-6
        assert df["time_delta_seconds"].between(0.99, 1.05).all()
        np.testing.assert_allclose(df["timestamp"].diff()[1:], d, atol=2e-6)
        for c in CUMULATIVE:
            assert (np.diff(df[c].to_numpy()) >= 0).all(), (path, c)
            assert df[c].iloc[-1] > df[c].iloc[0]
        pct = df[["cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq", "cpu_softirq",
                  "cpu_steal", "cpu_idle"]].sum(axis=1)
        assert pct.between(99.0, 101.0).all()
        assert df["cpu_utilization"].between(0, 100).all() and df["memory_usage_percent"].between(1, 99).all()
    assert forms == {"array", "lines"}


def test_host_csv_has_exactly_the_documented_columns(out, cfg):
    n_csv = 0
    for run in _runs(out):
        host, form = _host(run)
        if form != "csv":
            continue
        n_csv += 1
        assert list(host.columns) == HOST_CSV_COLUMNS
        assert (host["vm_filter"] == "{'fedora40'}").all()
        assert host["timestamp_iso"].str.match(ISO).all()
        assert host["timestamp"].iloc[0] == 0.0 and host["timestamp"].is_monotonic_increasing
        assert (host["vm_count"] == 1).all() and (host["collection_interval"] == 0.1).all()
    assert n_csv >= 3 * 3


def test_host_json_has_absolute_time_and_vms(out, cfg):
    n_json = 0
    for run in _runs(out):
        host, form = _host(run)
        if form != "json":
            continue
        n_json += 1
        if n_json == 1:  # one file suffices for the byte layout (same writer), they are large
            (path,) = list(run.glob("bm_power_*.json"))
            text = path.read_text(encoding="utf-8")
            assert text == json.dumps(json.loads(text), indent=2)  # as the collector's json.dump(indent=2)
        assert {"timestamp_absolute", "vms", *HOST_CSV_COLUMNS} == set(host.columns)
        # naive local ISO = epoch + the configured UTC offset
        local = pd.to_datetime(host["timestamp_iso"]) - pd.to_datetime(host["timestamp_absolute"], unit="s")
        assert np.allclose(local.dt.total_seconds(), cfg["utc_offset_hours"] * 3600, atol=1e-5)
        for i in (0, len(host) // 2):
            vms = host["vms"].iloc[i]
            assert [v["zone"] for v in vms] == ["core", "package", "dram", "uncore"]
            assert set(vms[0]) == {"vm_id", "vm_name", "hypervisor", "node_name", "zone", "watts", "state"}
            for v in vms:
                assert v["watts"] == host[f"total_cpu_watts_{v['zone']}"].iloc[i]
    assert n_json >= 1


def test_host_power_is_kepler_like(out):
    for run in _runs(out):
        host, _ = _host(run)
        first = host.iloc[0]
        for z in ZONES:
            assert first[f"total_cpu_watts_{z}"] == 0.0, run
        pkg = host["total_cpu_watts_package"].to_numpy()
        assert pkg.max() > 1.0
        change = np.flatnonzero(np.diff(pkg) != 0)
        runs_len = np.diff(change)
        # recomputed about every 5 s: 0.1 s samples repeat ~50 times (a gap shortens one run)
        assert 45 <= np.median(runs_len) <= 55, run
        assert (runs_len >= 30).mean() > 0.95
        # zero only before Kepler's first update (< 5.2 s after the host collector started)
        zero_t = host["timestamp"].to_numpy()[pkg == 0.0]
        assert zero_t.max() < 5.2
        # the host collector has one gap of a few seconds
        gaps = np.diff(host["timestamp"].to_numpy())
        assert 2.0 <= gaps.max() <= 4.5 and np.median(gaps) == pytest.approx(0.1, abs=0.005)


def test_collectors_overlap_like_real_runs(out):
    for run in _runs(out):
        vm, (host, _) = _vm(run), _host(run)
        v = pd.to_datetime(vm["timestamp_iso"])
        h = pd.to_datetime(host["timestamp_iso"])
        lead = (v.iloc[0] - h.iloc[0]).total_seconds()
        tail = (h.iloc[-1] - v.iloc[-1]).total_seconds()
        assert 1.0 < lead < 8.0, run
        assert tail > 2.0, run


def test_power_follows_load(out):
    """The label carries the load signal: cycling run, guest utilisation vs host package power."""
    for nt in ("demo-xeon-gold", "demo-epyc", "demo-xeon-e5"):
        run = out / nt / "run02-cycling"
        vm, (host, _) = _vm(run), _host(run)
        vt, ht = _seconds(vm["timestamp_iso"]), _seconds(host["timestamp_iso"])
        util = vm["cpu_utilization"].rolling(5, min_periods=1).mean().to_numpy()
        idx = np.searchsorted(ht, vt + 3.0) - 1  # Kepler reports ~3-5 s late
        ok = (idx >= 0) & (vt + 3.0 < ht[-1])
        power = host["total_cpu_watts_package"].to_numpy()[idx[ok]]
        assert np.corrcoef(util[ok], power)[0, 1] > 0.85, nt


def test_idle_runs_show_small_background_power(out, cfg):
    for nt in cfg["node_types"]:
        idle_runs = [r for r in (out / nt).iterdir() if r.is_dir() and set(_vm(r)["stress_workload"]) == {"idle"}]
        assert idle_runs, nt
        idle_pkg = _host(idle_runs[0])[0]["total_cpu_watts_package"].iloc[60:].mean()
        busy_pkg = _host(out / nt / "run02-cycling")[0]["total_cpu_watts_package"].iloc[60:].mean()
        assert 0.5 < idle_pkg < 0.35 * busy_pkg, nt
        assert idle_pkg < 0.1 * cfg["node_types"][nt]["idle_watts"]["package"]  # node idle power never attributed


def test_perf_absent_runs_are_all_zero(out, cfg):
    perf = {r["id"]: r.get("perf", True) for r in cfg["runs"]}
    assert not all(perf.values()) and any(perf.values())
    counters = ["cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
                "page_faults", "context_switches", "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio"]
    for run in _runs(out):
        vm = _vm(run)
        if perf[run.name]:
            assert (vm["cpu_cycles"] > 0).all() and vm["perf_available"].all()
            assert vm["instructions_per_cycle"].between(0.1, 4.0).all()
        else:
            assert (vm[counters] == 0).all().all(), run
            assert "perf_available" not in vm.columns  # older collector
            assert (vm["cpu_utilization"] > 0).all()


def test_workloads_and_sequence(out, cfg):
    seen = set()
    for run in _runs(out):
        seen |= set(_vm(run)["stress_workload"])
    assert seen == set(cfg["workloads"])  # every stress workload of the seed appears
    vm = _vm(out / "demo-xeon-gold" / "run02-cycling")
    # cpu_cycling:60,cpu_intensive:45 loops: phases change about every 60/45 s
    changes = np.flatnonzero(vm["stress_workload"].to_numpy()[1:] != vm["stress_workload"].to_numpy()[:-1])
    assert len(changes) >= 9
    assert vm.loc[vm["stress_workload"] == "cpu_intensive", "cpu_utilization"].mean() > 85


def test_noise_floor_file(out, cfg):
    for nt, spec in cfg["node_types"].items():
        floor = json.loads((out / nt / "synth_noise_floor.json").read_text())
        assert set(floor["zones"]) == set(ZONES)
        for z, e in floor["zones"].items():
            expected = spec["sigma"][z] * math.sqrt(2 / math.pi)
            assert e["noise_floor_mae_watts"] == pytest.approx(expected, abs=1e-6)
            assert e["noise_floor_mae_watts"] > 0
            assert e["empirical_noise_mae_watts"] == pytest.approx(expected, rel=0.2)
            assert e["window_truth_mae_watts"] >= e["noise_floor_mae_watts"] * 0.5
            assert e["label_mean_watts"] > 5 * e["noise_floor_mae_watts"]  # signal dominates


def test_sizes_are_demo_sized(out):
    total = sum(len(_vm(r)) for r in _runs(out))
    assert 5000 <= total <= 8000


def test_second_invocation_rewrites_nothing(out, caplog):
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with caplog.at_level("INFO", logger="vmpower.synth"):
        assert _cli("synth", "--config", str(CONFIG), "--out", str(out)) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert "0 files written" in caplog.text


def test_stale_collector_files_are_removed_and_foreign_files_kept(tmp_path, cfg):
    small = dict(cfg, runs=cfg["runs"][:2], node_types={"demo-xeon-e5": cfg["node_types"]["demo-xeon-e5"]})
    synth.generate(small, tmp_path)
    run = tmp_path / "demo-xeon-e5" / "run01-idle"
    stale = run / "vm_features_demo_run01_idle_20000101_000000.json"
    stale.write_text("[]")
    gone = tmp_path / "demo-xeon-e5" / "run99-old"
    gone.mkdir()
    (gone / "bm_power_demo_run99_old_20000101_000000.csv").write_text("timestamp\n")
    (gone / "machine_spec.json").write_text("{}")
    foreign = tmp_path / "demo-xeon-e5" / "real-run"
    foreign.mkdir()
    (foreign / "vm_features_real_20000101_000000.json").write_text("[]")
    (foreign / "notes.txt").write_text("keep me")
    summary = synth.generate(small, tmp_path)
    assert summary["written"] == 0 and summary["removed"] == 3
    assert not stale.exists() and not gone.exists()
    assert (foreign / "notes.txt").exists() and (foreign / "vm_features_real_20000101_000000.json").exists()


def test_bad_config_is_a_one_line_input_error(tmp_path):
    doc = yaml.safe_load(CONFIG.read_text())
    doc["synth"]["runs"][0]["workload"] = "no_such_workload:30"
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="no_such_workload"):
        synth.load_config(bad)
    doc = yaml.safe_load(CONFIG.read_text())
    doc["synth"]["surprise"] = 1
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="surprise"):
        synth.load_config(bad)


def test_docs_noise_floor_table_is_the_generated_one(out, cfg):
    """docs/demo-data.md quotes the noise floors the default config actually produces."""
    table = synth.noise_floor_table(out, list(cfg["node_types"]), ["package", "core", "dram", "uncore"])
    docs = (Path(__file__).resolve().parent.parent / "docs/demo-data.md").read_text()
    assert table in docs, f"docs/demo-data.md is stale; `vmpower synth --noise-table` gives:\n{table}"
