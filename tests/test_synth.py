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

from vmpower.demo import synth
from vmpower.demo.config import load_config
from vmpower.demo.generate import generate
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
    return load_config(CONFIG)


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
    generate(subset, tmp_path / "same")
    generate(dict(subset, seed=cfg["seed"] + 1), tmp_path / "other")
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
    with caplog.at_level("INFO", logger="vmpower.demo.synth"):
        assert _cli("synth", "--config", str(CONFIG), "--out", str(out)) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert "0 files written" in caplog.text


def test_stale_collector_files_are_removed_and_foreign_files_kept(tmp_path, cfg):
    small = dict(cfg, runs=cfg["runs"][:2], node_types={"demo-xeon-e5": cfg["node_types"]["demo-xeon-e5"]})
    generate(small, tmp_path)
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
    summary = generate(small, tmp_path)
    assert summary["written"] == 0 and summary["removed"] == 3
    assert not stale.exists() and not gone.exists()
    assert (foreign / "notes.txt").exists() and (foreign / "vm_features_real_20000101_000000.json").exists()


def test_bad_config_is_a_one_line_input_error(tmp_path):
    doc = yaml.safe_load(CONFIG.read_text())
    doc["synth"]["runs"][0]["workload"] = "no_such_workload:30"
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="no_such_workload"):
        load_config(bad)
    doc = yaml.safe_load(CONFIG.read_text())
    doc["synth"]["surprise"] = 1
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="surprise"):
        load_config(bad)


def test_docs_noise_floor_table_is_the_generated_one(out, cfg):
    """docs/demo-data.md quotes the noise floors the default config actually produces."""
    table = synth.noise_floor_table(out, list(cfg["node_types"]), ["package", "core", "dram", "uncore"])
    docs = (Path(__file__).resolve().parent.parent / "docs/demo-data.md").read_text()
    assert table in docs, f"docs/demo-data.md is stale; `vmpower synth --noise-table` gives:\n{table}"


# ------------------------------------------------------------------ legacy profile (seed collectors)

LEGACY = ROOT / "tests" / "data" / "legacy.yaml"
LEGACY_NT = "demo-legacy-kvm"
# Key order of the seed guest collector's samples (dataclasses.asdict(VMFeaturePoint)); version 2
# (the seed's HEAD) appends core_count.
LEGACY_VM_KEYS = [
    "timestamp", "timestamp_absolute", "timestamp_iso",
    "cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
    "page_faults", "context_switches",
    "cpu_utilization", "cpu_user_time", "cpu_system_time", "cpu_nice_time", "cpu_iowait", "cpu_irq",
    "cpu_softirq", "cpu_steal", "cpu_idle", "memory_usage_percent", "memory_available_gb",
    "disk_io_read_mb", "disk_io_write_mb", "network_bytes_sent", "network_bytes_recv", "process_count",
    "load_average_1min", "load_average_5min", "load_average_15min",
    "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio", "cpu_efficiency",
    "sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_total_seconds", "sys_context_switches",
    "sys_processes_created", "sys_procs_running", "sys_procs_blocked",
    "collection_interval", "time_delta_seconds", "vm_hostname",
]
LEGACY_INTS = {"cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
               "page_faults", "context_switches", "network_bytes_sent", "network_bytes_recv", "process_count",
               "sys_context_switches", "sys_processes_created", "sys_procs_running", "sys_procs_blocked",
               "core_count"}
LEGACY_PERF = ["cpu_cycles", "instructions", "cache_references", "cache_misses", "branches", "branch_misses",
               "page_faults", "context_switches", "instructions_per_cycle", "cache_miss_ratio", "branch_miss_ratio"]
LEGACY_HOST_HEADER = ("timestamp,timestamp_iso,total_cpu_watts_core,total_cpu_watts_package,vm_count,"
                      "collection_interval,vm_filter")
LEGACY_HOST_JSON_KEYS = ["timestamp", "timestamp_absolute", "timestamp_iso", "total_cpu_watts_core",
                         "total_cpu_watts_package", "vm_count", "vms", "collection_interval", "kepler_endpoint",
                         "vm_filter"]


@pytest.fixture(scope="module")
def legacy_cfg() -> dict:
    return load_config([CONFIG, LEGACY])


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_legacy")
    assert _cli("synth", "--config", str(CONFIG), "--config", str(LEGACY), "--node-type", LEGACY_NT,
                "--out", str(root)) == 0
    return root


def _legacy_runs(root: Path, legacy_cfg) -> list[tuple[Path, dict]]:
    specs = {s["id"]: s for s in legacy_cfg["node_types"][LEGACY_NT]["runs"]}
    return [(p, specs[p.name]) for p in sorted((root / LEGACY_NT).iterdir()) if p.is_dir()]


def test_legacy_overlay_merges_and_selects_node_types(legacy, legacy_cfg):
    assert set(legacy_cfg["node_types"]) == {*load_config(CONFIG)["node_types"], LEGACY_NT}
    assert [p.name for p in legacy.iterdir()] == [LEGACY_NT]  # --node-type: only that one


def test_legacy_layout_is_the_orchestrators(legacy, legacy_cfg):
    runs = _legacy_runs(legacy, legacy_cfg)
    assert len(runs) == 3
    for run, spec in runs:
        names = sorted(p.name for p in run.iterdir())
        assert len(names) == 2, names  # no machine_spec.json: the seed writes none
        ext = spec.get("host_format", "csv")
        assert re.fullmatch(rf"bm_power_training_(\d{{8}}_\d{{6}})\.{ext}", names[0])
        assert re.fullmatch(r"vm_features_training_(\d{8}_\d{6})\.json", names[1])
        assert names[0][len("bm_power_"):].split(".")[0] == names[1][len("vm_features_"):].split(".")[0]


def test_legacy_vm_keys_order_types_and_layout(legacy, legacy_cfg):
    versions = set()
    for run, spec in _legacy_runs(legacy, legacy_cfg):
        (path,) = run.glob("vm_features_*.json")
        text = path.read_text(encoding="utf-8")
        samples = json.loads(text)
        assert text == json.dumps(samples, indent=2)  # json.dump(indent=2): repr floats, no final newline
        version = spec.get("collector_version", 2)
        versions.add(version)
        keys = LEGACY_VM_KEYS + (["core_count"] if version == 2 else [])
        assert all(list(s) == keys for s in samples), path
        for k in keys:
            types = {type(s[k]) for s in samples}
            want = {int} if k in LEGACY_INTS else {str} if k in ("timestamp_iso", "vm_hostname") else {float}
            assert types == want, (path, k, types)
        assert {s["vm_hostname"] for s in samples} == {"fedora"}
        assert {s["collection_interval"] for s in samples} == {1.0}
        if version == 2:
            assert {s["core_count"] for s in samples} == {legacy_cfg["node_types"][LEGACY_NT]["vm"]["vcpus"]}
        # full float precision, as time.time() and psutil give them (not rounded to 6 decimals)
        assert max(len(repr(s["cpu_utilization"]).split(".")[1]) for s in samples) >= 12
    assert versions == {1, 2}


def test_legacy_perf_counters_are_zero(legacy, legacy_cfg):
    for run, _ in _legacy_runs(legacy, legacy_cfg):
        df = _vm(run)
        for c in LEGACY_PERF:
            assert (df[c] == 0).all(), (run, c)
        assert "perf_available" not in df and "stress_workload" not in df and "target_zones" not in df


def test_legacy_sys_fields_are_per_interval(legacy, legacy_cfg):
    vcpus = legacy_cfg["node_types"][LEGACY_NT]["vm"]["vcpus"]
    for run, _ in _legacy_runs(legacy, legacy_cfg):
        df = _vm(run)
        n = len(df)
        for c in ("sys_cpu_user_seconds", "sys_cpu_system_seconds", "sys_cpu_total_seconds", "sys_context_switches"):
            down = (np.diff(df[c].to_numpy()) < 0).sum()
            assert down > 0.2 * n, (run, c, down)  # not a counter since boot
        user = df["sys_cpu_user_seconds"].to_numpy()
        np.testing.assert_allclose(user * 100, np.round(user * 100), atol=1e-9)  # jiffies / USER_HZ
        cap = vcpus * df["time_delta_seconds"].to_numpy() + 0.03
        assert (df["sys_cpu_total_seconds"] <= cap).all() and (df["sys_cpu_total_seconds"] >= 0).all()
        np.testing.assert_allclose(df["sys_cpu_total_seconds"], user + df["sys_cpu_system_seconds"], atol=1e-9)
        assert 50 <= df["sys_context_switches"].median() <= 400  # per ~1 s interval
        assert (df["sys_processes_created"] == 0).mean() > 0.7
        # psutil's share and the jiffy delta describe the same window of ~vcpus * 100 ticks
        busy = user > 0
        ticks = user[busy] * 100 / (df["cpu_user_time"].to_numpy()[busy] / 100)
        assert ((ticks > vcpus * 100 - 1) & (ticks < vcpus * 100 + 4)).all()
        assert (df["cpu_utilization"] == 100.0 - df["cpu_idle"]).all()


def test_legacy_utilisation_steps_give_repeated_feature_vectors(legacy, legacy_cfg):
    for run, _ in _legacy_runs(legacy, legacy_cfg):
        df = _vm(run)
        # quarter-percent steps (1 of ~400 ticks): irq/steal/softirq take few distinct values
        for c in ("cpu_irq", "cpu_steal", "cpu_softirq"):
            assert df[c].round(1).nunique() <= 12, (run, c)
        assert df["cpu_nice_time"].eq(0).all() and df["disk_io_read_mb"].eq(0).all()
        # instantaneous snapshots: load averages change every 5 s only, as multiples of 1/2048
        la = df["load_average_1min"].to_numpy()
        assert (np.diff(la) != 0).mean() < 0.3
        np.testing.assert_array_equal(la * 2048, np.round(la * 2048))
        assert ((df["memory_usage_percent"] * 10).round(6) % 1 == 0).all()


def test_legacy_timestamps(legacy, legacy_cfg):
    off = legacy_cfg["legacy"]["utc_offset_hours"] * 3600
    for run, spec in _legacy_runs(legacy, legacy_cfg):
        df = _vm(run)
        ts, ab = df["timestamp"].to_numpy(), df["timestamp_absolute"].to_numpy()
        assert ts[0] == 0.0 and df["timestamp_iso"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$").all()
        assert df["time_delta_seconds"].between(1.00005, 1.01).all()
        iso = _seconds(df["timestamp_iso"])
        if spec.get("collector_version", 2) == 1:  # measured times; 2 s before the second sample
            np.testing.assert_allclose(ts, ab - ab[0], atol=1e-6)
            d = np.diff(ts)
            assert 1.99 < d[0] < 2.01 and np.all((d[1:] > 1.001) & (d[1:] < 1.01))
            np.testing.assert_allclose(iso - ab, off, atol=1e-6)
        else:  # target times k * interval; the window end falls behind them
            np.testing.assert_array_equal(ts, np.arange(len(ts)) * 1.0)
            lag = ab - (ab[0] - 1.0) - ts
            assert (np.diff(lag) > 0).all() and 0.3 < lag[-1] - lag[0] < 2.0
            np.testing.assert_allclose(iso - iso[0], ts, atol=1e-6)  # timestamp_iso: the target time
            assert 1.0 < ab[0] - (iso[0] - off) < 1.02  # timestamp_absolute: the first window's end


def test_legacy_host_csv_exact_header_and_filter(legacy, legacy_cfg):
    n = 0
    for run, spec in _legacy_runs(legacy, legacy_cfg):
        if spec.get("host_format", "csv") != "csv":
            continue
        n += 1
        (path,) = run.glob("bm_power_*.csv")
        raw = path.read_bytes()
        lines = raw.decode().split("\r\n")  # csv.DictWriter's line terminator
        assert lines[0] == LEGACY_HOST_HEADER and lines[-1] == "" and "\n" not in raw.decode().replace("\r\n", "")
        host = pd.read_csv(path, keep_default_na=False)
        assert (host["vm_filter"] == "{'fedora40'}").all()
        assert all(line.endswith(",1.0,{'fedora40'}") for line in lines[1:-1])
        assert host["timestamp"].is_monotonic_increasing
        assert np.median(np.diff(host["timestamp"])) == pytest.approx(1.0, abs=0.01)
    assert n == 2


def test_legacy_host_json_has_vms(legacy, legacy_cfg):
    n = 0
    for run, spec in _legacy_runs(legacy, legacy_cfg):
        if spec.get("host_format", "csv") != "json":
            continue
        n += 1
        (path,) = run.glob("bm_power_*.json")
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text)
        assert text == json.dumps(rows, indent=2)
        assert all(list(r) == LEGACY_HOST_JSON_KEYS for r in rows)
        assert {r["vm_filter"] for r in rows} == {"{'fedora40'}"}
        assert {r["kepler_endpoint"] for r in rows} == {"http://localhost:28283/metrics"}
        for r in rows:
            if r["vm_count"] == 0:  # Kepler listed no VM: sum([]) == 0, an int
                assert r["vms"] == [] and r["total_cpu_watts_package"] == 0 and type(r["total_cpu_watts_core"]) is int
                continue
            assert [v["zone"] for v in r["vms"]] == ["core", "package"]
            assert [v["watts"] for v in r["vms"]] == [r["total_cpu_watts_core"], r["total_cpu_watts_package"]]
    assert n == 1


def test_legacy_kepler_steps_and_magnitudes(legacy, legacy_cfg):
    for run, _ in _legacy_runs(legacy, legacy_cfg):
        host, _ = _host(run)
        host = host[host["vm_count"] == 1]
        pkg, core = host["total_cpu_watts_package"].to_numpy(), host["total_cpu_watts_core"].to_numpy()
        change = np.flatnonzero(np.diff(pkg) != 0)
        hold = np.diff(change)
        assert set(np.unique(hold)) <= {1, 2, 3}, run  # 1 s samples, Kepler every ~1.7 s
        assert 1.4 <= hold.mean() <= 2.1
        assert np.array_equal(np.diff(core) != 0, np.diff(pkg) != 0)  # both zones update together
        assert 0.005 < pkg.min() and pkg.max() < 5.0 and (pkg > core).all()
        ratio = pkg / core
        assert 1.2 < np.median(ratio) < 2.5


def test_legacy_power_follows_load(legacy, legacy_cfg):
    """The generator's physics: package watts rise with the guest's utilisation."""
    for run, _ in _legacy_runs(legacy, legacy_cfg):
        host, _ = _host(run)
        vm = _vm(run)
        h_t = _seconds(host["timestamp_iso"])
        v_t = _seconds(vm["timestamp_iso"])
        keep = host["vm_count"].to_numpy() == 1
        util_at_host = np.interp(h_t[keep], v_t, vm["cpu_utilization"].rolling(3, min_periods=1).mean())
        r = np.corrcoef(util_at_host, host["total_cpu_watts_package"].to_numpy()[keep])[0, 1]
        assert r > 0.8, (run, r)


def test_legacy_rerun_is_byte_identical(legacy, tmp_path, caplog):
    again = tmp_path / "again"
    assert _cli("synth", "--config", str(CONFIG), "--config", str(LEGACY), "--node-type", LEGACY_NT,
                "--out", str(again)) == 0
    assert _hashes(again) == _hashes(legacy) and len(_hashes(legacy)) == 7
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _cli("synth", "--config", str(CONFIG), "--config", str(LEGACY), "--node-type", LEGACY_NT,
                    "--out", str(again)) == 0
    assert "0 files written" in caplog.text


def test_legacy_config_errors_are_one_line(tmp_path):
    doc = yaml.safe_load(LEGACY.read_text())
    doc["synth"]["node_types"][LEGACY_NT]["runs"][0]["perf"] = True
    bad = tmp_path / "legacy.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="perf-less"):
        load_config([CONFIG, bad])
    del doc["synth"]["legacy"]
    del doc["synth"]["node_types"][LEGACY_NT]["runs"][0]["perf"]
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="needs a synth.legacy section"):
        load_config([CONFIG, bad])
    with pytest.raises(InputError, match="no such synth.node_types entry: nope"):
        _cli("synth", "--config", str(CONFIG), "--node-type", "nope", "--out", str(tmp_path / "o"))
