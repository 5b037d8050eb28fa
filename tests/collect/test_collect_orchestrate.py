"""The orchestrator against a real sshd on loopback (this machine plays the VM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from collect_helpers import REPO, live_stress_ng, subprocess_env

from kepler_server import Vm
from vmpower.collect.machine import machine_spec
from vmpower.collect.orchestrate import Orchestrator
from vmpower.errors import InputError

pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")]


def _orch(sshd, guest, kepler_url, raw, **kw):
    args = dict(vm_name="fedora40", vm_host="127.0.0.1", vm_port=sshd.port, vm_user=sshd.user,
                vm_key_file=str(sshd.client_key), known_hosts=str(sshd.known_hosts), vm_project_path=str(guest),
                duration=4, workloads="idle", kepler_url=kepler_url, vm_kepler_url="none", data_dir=str(raw),
                node_type="loopback", start_delay=1.5, connect_timeout=10)
    args.update(kw)
    return Orchestrator(**args)


def test_unknown_host_key_is_refused(sshd, guest_project, tmp_path):
    # a known_hosts entry for this host:port, but with another key (a MITM's view)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts_wrong"
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    raw = tmp_path / "raw"
    for known, expect in ((wrong, "host key not verified"), (empty, "host key not verified")):
        o = _orch(sshd, guest_project, "http://127.0.0.1:9/metrics", raw, known_hosts=str(known))
        with pytest.raises(InputError, match=expect) as err:
            o.run()
        assert "\n" not in str(err.value)
    assert not raw.exists()  # nothing collected, no half-made run directory
    assert not (guest_project / "data").exists()  # nothing was started in the "VM"
    # the same through the CLI: exit 2 and one line naming the target
    res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "run", "--vm-name", "fedora40",
                          "--vm-host", "127.0.0.1", "--vm-port", str(sshd.port), "--vm-user", sshd.user,
                          "--vm-key-file", str(sshd.client_key), "--known-hosts", str(wrong),
                          "--vm-project-path", str(guest_project), "--data-dir", str(raw),
                          "--log-file", str(tmp_path / "orchestrator.log")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vmpower collect: error: {sshd.user}@127.0.0.1:{sshd.port}: host key not verified")
    assert not raw.exists()


def test_explicit_flag_accepts_unknown_key_and_verifies_known(sshd, guest_project, tmp_path):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    o = _orch(sshd, guest_project, "", tmp_path / "raw", known_hosts=str(empty), insecure_accept_host_key=True)
    o.connect()
    assert o.run_remote("echo ok")[1].strip() == "ok"
    o.client.close()
    assert empty.read_text() == ""  # the unverified key was used once, never saved
    o = _orch(sshd, guest_project, "", tmp_path / "raw")  # the right known_hosts: verified, no flag
    o.connect()
    o.client.close()


def test_hostile_vm_name_and_path_are_not_injected(sshd, tmp_path, kepler):
    marker = Path(f"/tmp/pwned_{uuid.uuid4().hex}")
    hostile = f"x'; touch {marker}; echo '"
    # a project path with quotes, spaces and $(...) as well (no "/" possible in a name)
    rel_marker = f"pwned_{uuid.uuid4().hex}"
    guest = tmp_path / f"guest dir '$(touch {rel_marker})'"
    guest.mkdir()
    (guest / "src").symlink_to(REPO / "src")
    if (REPO / ".venv").exists():
        (guest / ".venv").symlink_to(REPO / ".venv")
    k = kepler([Vm("vm-1", hostile)], update_interval=0.5, fixed_watts={"package": 10.0, "core": 8.0})
    work = tmp_path / "host"
    work.mkdir()
    # through the real CLI, as a user would type it
    res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "run", "--vm-name", hostile,
                          "--vm-host", "127.0.0.1", "--vm-port", str(sshd.port), "--vm-user", sshd.user,
                          "--vm-key-file", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                          "--vm-project-path", str(guest), "--duration", "3", "--workloads", "idle",
                          "--output-prefix", "a'b;c", "--kepler-url", k.url, "--vm-kepler-url", "none",
                          "--node-type", "loopback", "--run-id", "hostile", "--start-delay", "4"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=90, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not marker.exists()
    for where in (Path.home(), Path("/"), Path.cwd(), REPO, tmp_path, work, guest, guest / "data"):
        assert not (where / rel_marker).exists()
    run_dir = work / "data" / "raw" / "loopback" / "hostile"
    names = sorted(p.name for p in run_dir.iterdir())
    o_stamp = next(run_dir.glob("vm_features_*.json")).stem.removeprefix("vm_features_")
    assert o_stamp.startswith("a-b-c_")  # the hostile prefix became a safe file name
    assert names == sorted([f"bm_power_{o_stamp}.csv", f"gaps_bm_power_{o_stamp}.json", "machine_spec.json",
                            f"vm_features_{o_stamp}.json"])
    # the name reached the guest collector as one literal argument, and filtered the power
    log = (guest / "logs" / "vm_feature_collection.log").read_text()
    assert f"vm={hostile}" in log
    import csv

    with open(next(run_dir.glob("bm_power_*.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 5 and all(r["vm_filter"] == "{" + repr(hostile) + "}" for r in rows)
    assert all(float(r["total_cpu_watts_package"]) == 10.0 for r in rows[5:])
    assert json.loads(next(run_dir.glob("vm_features_*.json")).read_text())
    assert "guest collector started" in (work / "logs" / "orchestrator.log").read_text()
    assert "wrote" in (work / "logs" / "bm_power_collection.log").read_text()


def test_interrupt_stops_remote_processes_and_keeps_partial_data(sshd, guest_project, tmp_path, kepler):
    k = kepler(update_interval=0.5)
    o = _orch(sshd, guest_project, k.url, tmp_path / "raw", duration=60, workloads="cpu_intensive")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", o.run()))
    t.start()
    remote = guest_project / "data"
    deadline = time.monotonic() + 30
    stress = []
    while time.monotonic() < deadline:
        files = list(remote.glob("vm_features_*.json")) if remote.exists() else []
        if files and len(files[0].read_text().splitlines()) >= 3:
            stress = [p.pid for p in live_stress_ng() if "cpu-method" in " ".join(p.cmdline())]
            break
        time.sleep(0.2)
    assert stress, "the guest should be running stress-ng"
    o.stop()  # what Ctrl-C does
    t.join(40)
    assert not t.is_alive() and result["rc"] == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [p for p in live_stress_ng() if p.pid in stress]:
        time.sleep(0.1)
    assert not [p for p in live_stress_ng() if p.pid in stress]
    data = json.loads(o.vm_file.read_text())  # SIGTERM let the guest finish its array
    assert 3 <= len(data) < 30 and all(r["stress_workload"] == "cpu_intensive" for r in data)
    assert len(o.host_file.read_text().splitlines()) > 10


@pytest.mark.stress
def test_end_to_end_run_directory_merges_and_builds_models(sshd, guest_project, tmp_path, kepler, capsys):
    """~20 s: guest = this machine over ssh with real stress-ng, host = loopback Kepler following
    the real load. The run directory must satisfy docs/data-format.md, merge, and the real
    Snakemake workflow must build it into exported models (isolate -> train -> export)."""
    k = kepler(update_interval=1.0)
    raw = tmp_path / "raw"
    o = _orch(sshd, guest_project, k.url, raw, duration=20, workloads="idle:8,cpu_intensive:12",
              run_id="e2e-run.1", start_delay=3.0)
    t0 = time.monotonic()
    assert o.run() == 0
    assert time.monotonic() - t0 < 40
    run_dir = raw / "loopback" / "e2e-run.1"
    names = sorted(p.name for p in run_dir.iterdir())
    assert [n for n in names if n.startswith("vm_features_") and n.endswith(".json")] == [o.vm_file.name]
    assert [n for n in names if n.startswith("bm_power_") and n.endswith((".csv", ".json"))] == [o.host_file.name]
    spec = json.loads((run_dir / "machine_spec.json").read_text())
    assert spec == machine_spec() and spec["cores"] >= 1 and spec["memory"] >= 1
    vm = json.loads(o.vm_file.read_text())
    # 20 windows of 1 s; a guest that came up late on a busy machine joins the grid late
    assert 15 <= len(vm) <= 20
    assert all(0.5 <= r["time_delta_seconds"] <= 3.0 for r in vm)  # no sliver windows
    assert {r["stress_workload"] for r in vm} == {"idle", "cpu_intensive"}
    host = o.host_file.read_text().splitlines()
    assert host[0].startswith("timestamp,timestamp_iso,total_cpu_watts_core,total_cpu_watts_package")
    assert len(host) > 150  # 0.1 s over ~23 s
    # host coverage spans the guest windows (both use --start-at)
    import pandas as pd

    h = pd.read_csv(o.host_file)
    h_start = pd.Timestamp(h["timestamp_iso"].iloc[0])
    h_end = pd.Timestamp(h["timestamp_iso"].iloc[-1])
    v_first = pd.Timestamp(vm[0]["timestamp_iso"]) - pd.Timedelta(seconds=vm[0]["time_delta_seconds"])
    assert h_start <= v_first + pd.Timedelta(seconds=0.3) and h_end >= pd.Timestamp(vm[-1]["timestamp_iso"])

    if not (REPO / "src" / "vmpower" / "pipeline" / "merge.py").exists():
        pytest.skip("vmpower.pipeline.merge not in this checkout; format checked above")
    from vmpower.cli import main

    merged = tmp_path / "merged.parquet"
    quality = tmp_path / "quality.json"
    rc = main(["merge", "--vm-features", str(o.vm_file), "--bm-power", str(o.host_file), "--output", str(merged),
               "--quality", str(quality), "--config", str(REPO / "config.yaml")])
    assert rc == 0
    df = pd.read_parquet(merged)
    q = json.loads(quality.read_text())
    assert q["match_rate"] >= 0.8 and len(df) >= 12
    assert q["time_base"] == "epoch"  # both files carry timestamp_absolute
    # the power the pipeline sees follows the guest's real load
    busy = df.loc[df["stress_workload"] == "cpu_intensive", "power_package"].tail(6).mean()
    idle = df.loc[df["stress_workload"] == "idle", "power_package"].tail(4).mean()
    util_idle = df.loc[df["stress_workload"] == "idle", "cpu_utilization"].tail(4).mean()
    saturated = util_idle > 85
    if not saturated:
        assert busy > idle

    _build_models_from(run_dir, tmp_path / "ws")
    if saturated:
        pytest.skip(f"models built; load check skipped: machine saturated by other work (idle windows at "
                    f"{util_idle:.0f} %)")


def _build_models_from(run_dir: Path, ws: Path) -> None:
    """The real workflow in a scratch copy of the repository with this run as its only data (one
    run: the held-out rows are its last 20 %), limited to one feature group and one trainer."""
    import math

    import pandas as pd
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from workflow import make_workspace, snakemake

    make_workspace(ws, demo=False)
    shutil.copytree(run_dir, ws / "data" / "raw" / "loopback" / run_dir.name)
    overlay = ws / "collect-e2e.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"feature_groups": ["SystemOnly"], "trainers": ["LinearRegression"]}}))
    t0 = time.monotonic()
    snakemake(ws, "--cores", "2", "--configfile", overlay.name, timeout=1200)
    assert time.monotonic() - t0 < 1200
    res = ws / "results"
    models = res / "models"
    names = sorted(p.relative_to(models).as_posix() for p in models.glob("*/*/*.zip"))
    assert names == [f"{ot}/SystemOnly/LinearRegressionTrainer_loopback.zip" for ot in ("AbsPower", "DynPower")]
    for ot in ("AbsPower", "DynPower"):
        model_dir = models / ot / "SystemOnly" / "LinearRegressionTrainer_loopback"
        zones = sorted(p.stem for p in model_dir.glob("*.onnx"))
        assert {"package", "core"} <= set(zones) and (model_dir / "metadata.json").is_file()
        metrics = json.loads((res / "train" / "loopback" / ot / "SystemOnly" / "LinearRegression" /
                              "metrics.json").read_text())
        assert metrics["status"] == "trained"
        assert metrics["evaluation"]["scheme"] == "last 20% of each run"
        assert metrics["rows_heldout"] >= 2 and metrics["rows_train"] >= 8
        assert set(metrics["zones"]) == set(zones)
        assert any(f.startswith("sys_") and f.endswith("_rate") for f in metrics["features"])  # the new rates
    best = json.loads((res / "best.json").read_text())
    assert set(best) == {"loopback"} and set(best["loopback"]) == {"AbsPower", "DynPower"}
    summary = pd.read_csv(res / "summary.csv")
    trained = summary[summary["status"] == "trained"]
    assert len(trained) == 2 * len(zones) and set(trained["node_type"]) == {"loopback"}
    for col in ("mae", "rmse", "onnx_max_abs_diff"):
        assert all(math.isfinite(v) for v in trained[col]), col
    assert (trained["onnx_max_abs_diff"] <= 1e-3).all() and (trained["mae"] >= 0).all()


def _guest_procs(guest: Path) -> list[psutil.Process]:
    """Processes started in this test's "VM": their command line names its directory."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(guest) in a for a in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture
def reap(guest_project):
    """Whatever a failing test left running in its guest is killed afterwards (only ours)."""
    yield
    for p in _guest_procs(guest_project):
        try:
            for c in p.children(recursive=True):
                c.kill()
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _wait_for_samples(guest: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list((guest / "data").glob("vm_features_*.json")) if (guest / "data").exists() else []
        if files and len(files[0].read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the guest collector wrote no {n} samples")


def test_vm_python_cleanup_stops_the_remote_collector_and_its_stress(sshd, guest_project, tmp_path, kepler, reap):
    """With --vm-python the recorded id must be the setsid'd collector's process group, so that
    Ctrl-C stops the collector and, through it, every stress-ng: no orphans."""
    k = kepler(update_interval=0.5)
    py = guest_project / ".venv" / "bin" / "python"
    o = _orch(sshd, guest_project, k.url, tmp_path / "raw", duration=60, workloads="cpu_intensive",
              vm_python=str(py) if py.exists() else sys.executable)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", o.run()))
    t.start()
    _wait_for_samples(guest_project, 3)
    (collector,) = [p for p in _guest_procs(guest_project) if any("vm_features_" in a for a in p.cmdline())
                    and "vmpower" in p.cmdline()]
    stress = [c.pid for c in collector.children(recursive=True) if c.name().startswith("stress-ng")]
    assert stress, "the guest should be running stress-ng"
    assert o.remote.pgid == collector.pid == os.getpgid(collector.pid) == os.getsid(collector.pid)
    o.stop()  # what Ctrl-C does
    t.join(40)
    assert not t.is_alive() and result["rc"] == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (collector.is_running() and collector.status() != psutil.STATUS_ZOMBIE
                                           or [p for p in live_stress_ng() if p.pid in stress]):
        time.sleep(0.1)
    assert not collector.is_running() or collector.status() == psutil.STATUS_ZOMBIE
    assert not [p for p in live_stress_ng() if p.pid in stress]
    data = json.loads(o.vm_file.read_text())  # SIGTERM let the guest finish its array
    assert len(data) >= 3 and all(r["stress_workload"] == "cpu_intensive" for r in data)


@pytest.mark.parametrize("with_vm_python", [True, False], ids=["vm-python", "venv-or-python3"])
def test_wrong_project_path_is_a_clear_error(sshd, tmp_path, with_vm_python):
    missing = tmp_path / "no such checkout"
    raw = tmp_path / "raw"
    o = _orch(sshd, missing, "http://127.0.0.1:9/metrics", raw, vm_python=sys.executable if with_vm_python else None)
    t0 = time.monotonic()
    with pytest.raises(InputError, match="could not start the guest collector") as err:
        o.run()
    assert time.monotonic() - t0 < 20
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "No such file or directory" in msg
    assert not raw.exists() and not missing.exists()


def test_guest_that_cannot_run_is_a_clear_error(sshd, guest_project, tmp_path):
    raw = tmp_path / "raw"
    o = _orch(sshd, guest_project, "http://127.0.0.1:9/metrics", raw, vm_python="/nonexistent/python3")
    with pytest.raises(InputError, match=r"could not start the guest collector \(it exited at once\)") as err:
        o.run()
    assert "/nonexistent/python3" in str(err.value) and "\n" not in str(err.value)
    assert not raw.exists()


def test_vm_name_with_a_leading_dash_and_glob_characters(sshd, guest_project, tmp_path, kepler):
    """`-web[1]` must reach the guest as the value of --vm-name (not as options) and select
    exactly that VM's power on the host (not as a glob, which would not even match itself)."""
    name = "-web[1]"
    k = kepler([Vm("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", name, share=0.5),
                Vm("0e0f4c8e-6d55-4bb1-9a3e-5f2f9c1d77aa", "-web1", share=0.25)],
               update_interval=0.5, fixed_watts={"package": 20.0, "core": 8.0})
    work = tmp_path / "host"
    work.mkdir()
    res = subprocess.run([sys.executable, "-m", "vmpower", "collect", "run", f"--vm-name={name}",
                          "--vm-host", "127.0.0.1", "--vm-port", str(sshd.port), "--vm-user", sshd.user,
                          "--vm-key-file", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                          "--vm-project-path", str(guest_project), "--duration", "3", "--workloads", "idle",
                          "--kepler-url", k.url, "--vm-kepler-url", "none", "--node-type", "loopback",
                          "--run-id", "dash", "--start-delay", "3"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=90, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"vm={name}" in (guest_project / "logs" / "vm_feature_collection.log").read_text()
    import csv

    run_dir = work / "data" / "raw" / "loopback" / "dash"
    with open(next(run_dir.glob("bm_power_*.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 5 and all(r["vm_filter"] == "{'-web[1]'}" and r["vm_count"] == "1" for r in rows)
    assert all(float(r["total_cpu_watts_package"]) == 10.0 for r in rows[5:])
