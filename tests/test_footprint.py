"""vmpower.serving.footprint: serve defers pandas (and so pyarrow) without changing a served
value, and a real serve never loads the training stack (pandas, pyarrow, scikit-learn, xgboost,
snakemake). The RSS/CPU budget itself is measured in tests/bench/test_bench_serve_footprint.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.predict_artifacts import NODE_TYPE
from exporter_helpers import free_port, parse
from serving_helpers import _chain, _records, artifacts
from vmpower.serving import footprint, live
from vmpower.serving.exporter import Exporter

# Libraries of the training side that serve must never load (each costs 10-35 MB of RSS).
TRAINING_STACK = ("pandas", "pyarrow", "sklearn", "xgboost", "snakemake")
# Their shared objects as /proc/<pid>/maps names them (snakemake has none: checked by name).
STACK_SO = re.compile(r"site-packages/(pandas|pyarrow|sklearn|scikit_learn\.libs|xgboost)/")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return artifacts(tmp_path_factory)


def test_defer_leaves_imported_and_missing_modules_alone():
    assert "json" in sys.modules
    before = sys.modules["json"]
    assert footprint.defer(["json", "vmpower_no_such_module"]) == []
    assert sys.modules["json"] is before and "vmpower_no_such_module" not in sys.modules


# Run in a fresh interpreter (this one has pandas loaded): serve's start-up path with pandas
# deferred, then the chain's watts on consecutive records of a real run; prints JSON.
_DEFERRED_RUN = r"""
import json, sys
from vmpower.serving import footprint
assert footprint.defer() == ["pandas"]
from pathlib import Path
from vmpower.serving import fallback, live, selection
from vmpower.serving.exporter import Exporter
art = json.loads(sys.argv[1])
request = selection.ModelRequest(Path(art["results"]), art["node_type"], None, "AbsPower", None)
models = fallback.resolve_chain(request, art["config"])
exporter = Exporter(models, [live.load_settings(art["config"])] * len(models), "vm")
records = json.loads(Path(art["records"]).read_text())
watts = [exporter.update(r) for r in records[:40]]
mid = {n: type(sys.modules.get(n)).__name__ for n in ("pandas", "pyarrow")}
import pandas as pd
pd.DataFrame({"a": [1]})  # the first real use loads the real pandas
after = type(sys.modules["pandas"]).__name__
print(json.dumps({"watts": watts, "mid": mid, "after": after, "packages": footprint.loaded_packages()}))
"""


def test_deferred_pandas_serves_identical_watts_and_loads_on_first_use(art):
    """The chain from the results directory, in a process with pandas deferred, gives exactly
    the watts this process (pandas loaded) gives for the same records, never loading pandas
    or pyarrow until pandas is really used."""
    args = {"results": str(art["results"]), "node_type": NODE_TYPE, "config": str(art["config"]),
            "records": str(art["vm_files"]["run02-mix"])}
    out = subprocess.run([sys.executable, "-c", _DEFERRED_RUN, json.dumps(args)], capture_output=True, text=True,
                         check=True)
    got = json.loads(out.stdout)
    assert got["mid"] == {"pandas": "Deferred", "pyarrow": "NoneType"}
    assert got["after"] == "module"
    assert "onnxruntime" in got["packages"] and "numpy" in got["packages"]

    models = _chain(art)
    exporter = Exporter(models, [live.load_settings(str(art["config"]))] * len(models), "vm")
    want = [exporter.update(r) for r in _records(art)[:40]]
    assert sum(bool(w) for w in want) >= 30 and {z for w in want for z in w} == {"package", "core", "dram", "uncore"}
    assert got["watts"] == json.loads(json.dumps(want))  # bit for bit (JSON floats round-trip exactly)


@pytest.mark.slow
def test_serve_process_never_loads_the_training_stack(art, tmp_path):
    """A real serve of the whole chain (results directory, perf when it counts): after the first
    watts for all four zones, none of the training stack's shared objects is mapped, and its
    own list of loaded packages (debug log) has none of them."""
    port = free_port()
    err = tmp_path / "serve.err"
    cmd = [sys.executable, "-m", "vmpower", "-v", "serve", "--model", str(art["results"]), "--node-type", NODE_TYPE,
           "--config", str(art["config"]), "--address", "127.0.0.1", "--port", str(port), "--interval", "1"]
    with open(err, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline, zones = time.monotonic() + 60, set()
        while zones != {"package", "core", "dram", "uncore"}:
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, err.read_text()[-2000:]
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    zones = {s.labels["zone"] for s in parse(resp.read().decode()).get("kepler_node_cpu_watts", [])}
            except OSError:
                pass
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "site-packages/onnxruntime/" in maps  # the check sees the libraries serve does load
    assert sorted(set(STACK_SO.findall(maps))) == []
    line = re.search(r"third-party packages loaded: (.*)", err.read_text())
    assert line, err.read_text()[-2000:]
    packages = line.group(1).split()
    assert "onnxruntime" in packages and "prometheus_client" in packages
    assert [p for p in TRAINING_STACK if p in packages] == []
