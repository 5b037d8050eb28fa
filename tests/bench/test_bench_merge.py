"""Merge at scale (``make bench``): a 2 M-row host CSV (0.1 s) and a 200 k-sample VM JSON array
(VMPOWER_BENCH_HOST_ROWS sets the host rows; the VM file has a tenth of them).

The numbers, written to results/bench/merge.json:

* ``whole_process`` – ``vmpower merge`` as the workflow runs it (rules/merge.smk: a new process
  with --settings JSON and --provenance), wall time from start to exit;
* ``io_floor``  – only parsing the same two files with pyarrow in this process (CSV reader; the
  JSON array wrapped as one object, the only way pyarrow's reader takes an array);
* ``merge``     – ``vmpower.pipeline.merge.merge_run`` in this process;
* ``reference`` – the seed's documented method as a plain implementation: pandas.read_csv,
  json.load (Python objects per row) and, per VM sample, a scan forward through the host samples
  for the nearest one within the tolerance (as ``seed_nearest`` in tests/test_align.py: the
  scan starts at the first host sample, so it is O(VM × host)). Run in full it would take days,
  so it is measured in two parts and extrapolated, saying so in the results: parsing on the
  1/10-size pair (× 10: linear), and the scan for ``SCAN_SAMPLES`` VM samples spread over the
  run against all host times (× VM rows / SCAN_SAMPLES). ``reference_pointer`` is a kinder
  baseline: the same Python loop with a moving pointer (O(VM + host)), on the 1/10 pair × 10.

The whole process and the floor are timed alternately, ``ROUNDS`` times each, and compared by
their medians (the machine may be shared: alternating keeps both under the same load).
Peak memory is the max RSS of a subprocess that only runs merge_run, against the input size.
Goals (issues 8 and 16): whole process ≤ 1.5× io_floor, ≥ 8× faster than the reference, peak
RSS ≤ 3× input.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import results
from bench.merge_data import run_pair
from vmpower.pipeline import merge

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "bench" / "merge.json"

HOST_ROWS = int(os.environ.get("VMPOWER_BENCH_HOST_ROWS", "2000000"))
VM_ROWS = HOST_ROWS // 10
SCALE = 10  # the reference's parsing runs on a pair this many times smaller
SCAN_SAMPLES = int(os.environ.get("VMPOWER_BENCH_SCAN_SAMPLES", "12"))
ROUNDS = int(os.environ.get("VMPOWER_BENCH_ROUNDS", "3"))
# The features keys rules/merge.smk passes to a merge job (common.smk MERGE_FEATURE_KEYS).
MERGE_FEATURE_KEYS = ("lag_feature", "lag_zone", "max_lag_seconds", "hinges")


def record(section: str, values: dict) -> None:
    results.record(OUT, section, values)


def config() -> dict:
    from vmpower import settings as settings_mod

    return settings_mod.load(ROOT / "config.yaml")


def settings():
    return merge.MergeSettings.from_config(config())


def workflow_settings() -> str:
    """The --settings JSON rules/merge.smk gives a merge job (common.smk settings_json)."""
    cfg = config()
    data = {**cfg["merge"], **cfg["ingest"]}
    data.update(zones=cfg["zones"], required_zones=cfg["required_zones"], limits=cfg.get("limits", {}),
                **{k: cfg["features"][k] for k in MERGE_FEATURE_KEYS if k in cfg["features"]})
    return json.dumps(data, sort_keys=True)


@pytest.fixture(scope="module")
def big():
    return run_pair(HOST_ROWS, VM_ROWS)


@pytest.fixture(scope="module")
def small():
    return run_pair(HOST_ROWS // SCALE, VM_ROWS // SCALE)


def input_bytes(pair) -> int:
    return sum(Path(p).stat().st_size for p in pair)


# ---------------------------------------------------------------- (b) the I/O floor


def parse_only(vm, bm):
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    host = pacsv.read_csv(bm)
    data = Path(vm).read_bytes().strip()
    wrapped = b'{"rows":' + data + b"}"
    vm_table = pajson.read_json(
        io.BytesIO(wrapped),
        read_options=pajson.ReadOptions(block_size=len(wrapped) + 1, use_threads=False),
        parse_options=pajson.ParseOptions(newlines_in_values=True),
    )
    return host.num_rows, vm_table.column("rows").combine_chunks().type


# ---------------------------------------------------------------- (a) the seed's method


def seed_parse(vm, bm):
    """The seed's reading: pandas CSV and json.load (a Python dict per sample)."""
    import pandas as pd

    host = pd.read_csv(bm)
    stamps = pd.to_datetime(host["timestamp_iso"]).to_numpy().astype("datetime64[ns]")
    t_host = stamps.astype("int64") / 1e9
    watts = host["total_cpu_watts_package"].to_numpy()
    with open(vm) as fh:
        samples = json.load(fh)
    return samples, t_host, watts


def vm_time(sample) -> float:
    import pandas as pd

    return pd.Timestamp(sample["timestamp_iso"]).value / 1e9


def seed_scan(samples, t_host, watts, tolerance=0.5):
    """Per VM sample, scan forward from the first host sample for the nearest one within the
    tolerance (stops once past t + tolerance)."""
    t_list, out = t_host.tolist(), []
    for s in samples:  # a Python loop per VM sample (and per host sample) is the point
        t = vm_time(s)
        best, best_d = None, None
        for j, th in enumerate(t_list):
            if th > t + tolerance:
                break
            d = abs(th - t)
            if d <= tolerance and (best_d is None or d < best_d):
                best, best_d = j, d
        if best is not None:
            out.append({**s, "power_watts": watts[best], "time_diff": best_d})
    return out


def pointer_scan(samples, t_host, watts, tolerance=0.5):
    """The same loop with a moving pointer: O(VM + host)."""
    out, j, n = [], 0, len(t_host)
    for s in samples:
        t = vm_time(s)
        while j + 1 < n and t_host[j + 1] <= t:
            j += 1
        best, best_d = None, tolerance
        for k in (j, j + 1):
            if k < n and abs(t_host[k] - t) <= best_d:
                best, best_d = k, abs(t_host[k] - t)
        if best is not None:
            out.append({**s, "power_watts": watts[best], "time_diff": best_d})
    return out


# ---------------------------------------------------------------- benchmarks


def whole_process(vm, bm, out: Path) -> float:
    """Wall seconds of `vmpower merge` in a new process, as a merge_run job runs it."""
    cmd = [sys.executable, "-m", "vmpower", "--provenance", str(out / "prov.json"), "merge",
           "--vm-features", str(vm), "--bm-power", str(bm), "--output", str(out / "run.parquet"),
           "--quality", str(out / "run.quality.json"), "--settings", workflow_settings()]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def load_average() -> float:
    return os.getloadavg()[0]


def test_whole_process_and_io_floor(benchmark, big, tmp_path):
    """Alternately: the whole `vmpower merge` process and the pyarrow parse floor."""
    def rounds():
        whole, floor = [], []
        for _ in range(ROUNDS):
            whole.append(whole_process(*big, tmp_path))
            t0 = time.perf_counter()
            rows, _ = parse_only(*big)
            floor.append(time.perf_counter() - t0)
            assert rows == HOST_ROWS
        return whole, floor

    load_before = load_average()
    whole, floor = benchmark.pedantic(rounds, rounds=1, iterations=1)
    quality = json.loads((tmp_path / "run.quality.json").read_text())
    assert quality["match_rate"] > 0.99
    record("whole_process", {"seconds": statistics.median(whole), "runs": whole,
                             "load_average_before": load_before, "load_average_after": load_average()})
    record("io_floor", {"seconds": statistics.median(floor), "runs": floor, "input_mb": input_bytes(big) / 1e6,
                        "host_rows": HOST_ROWS, "vm_rows": VM_ROWS})


def test_merge_run(benchmark, big):
    s = settings()
    out, q = benchmark.pedantic(merge.merge_run, args=(*big, s), rounds=1, iterations=1)
    assert q["match_rate"] > 0.99 and len(out) == q["rows_kept"] > 0
    record("merge", {"seconds": benchmark.stats.stats.min, "rows_out": int(len(out)), "alignment": s.alignment})


def test_seed_reference_extrapolated(benchmark, small, big):
    import pandas as pd

    t0 = time.perf_counter()
    samples, t_host, watts = benchmark.pedantic(seed_parse, args=small, rounds=1, iterations=1)
    parse_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    linear = pointer_scan(samples, t_host, watts)
    pointer_small = time.perf_counter() - t0
    assert len(linear) > 0.99 * len(samples)
    del samples
    # The quadratic scan: a few VM samples spread over the run, against all host times of the big pair.
    host = pd.read_csv(big[1], usecols=["timestamp_iso", "total_cpu_watts_package"])
    t_big = pd.to_datetime(host["timestamp_iso"]).to_numpy().astype("datetime64[ns]").astype("int64") / 1e9
    w_big = host["total_cpu_watts_package"].to_numpy()
    del host
    with open(small[0]) as fh:  # same layout as the big file: take its samples' times, scaled
        few = json.load(fh)[:: max(1, (VM_ROWS // SCALE) // SCAN_SAMPLES)][:SCAN_SAMPLES]
    span = t_big[-1] - t_big[0]
    for i, s in enumerate(few):  # place them evenly over the big run
        ts = pd.Timestamp(t_big[0] * 1e9 + (i + 0.5) / len(few) * span * 1e9)
        s["timestamp_iso"] = ts.isoformat()
    t0 = time.perf_counter()
    got = seed_scan(few, t_big, w_big)
    scan_per_sample = (time.perf_counter() - t0) / len(few)
    assert len(got) == len(few)
    merge_small = min(_timed(merge.merge_run, *small, settings()) for _ in range(1))
    total = parse_small * SCALE + scan_per_sample * VM_ROWS
    record("reference", {
        "method": "seed: pandas.read_csv + json.load + per-VM-sample forward scan from the first host sample",
        "extrapolated": True,
        "parse_seconds_small_pair": parse_small, "scale": SCALE,
        "scan_samples_measured": len(few), "scan_seconds_per_vm_sample": scan_per_sample,
        "seconds_extrapolated": total,
        "pointer_scan_seconds_small_pair": pointer_small,
        "pointer_reference_seconds_extrapolated": (parse_small + pointer_small) * SCALE,
        "merge_seconds_small_pair": merge_small,
    })


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_merge_peak_memory(benchmark, big):
    code = (
        "from vmpower import settings\n"
        "from vmpower.pipeline import merge\n"
        "s = merge.MergeSettings.from_config(settings.load('config.yaml'))\n"
        "import pandas, pyarrow.json, pyarrow.csv\n"
        "def hwm():  # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "base = hwm()\n"
        f"out, q = merge.merge_run({str(big[0])!r}, {str(big[1])!r}, s)\n"
        "print(base, hwm())\n"
    )
    run = lambda: subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    res = benchmark.pedantic(run, rounds=1, iterations=1)
    base_kb, peak_kb = map(int, res.stdout.split())
    size = input_bytes(big)
    values = {"peak_rss_mb": peak_kb / 1024, "interpreter_rss_mb": base_kb / 1024, "input_mb": size / 1e6,
              "peak_over_input": peak_kb * 1024 / size}
    record("memory", values)
    assert values["peak_over_input"] <= 3.0


def test_summary(benchmark):
    """Ratios of the numbers above (runs last: pytest keeps file order)."""
    data = benchmark.pedantic(lambda: json.loads(OUT.read_text()), rounds=1, iterations=1)
    whole_s, merge_s, floor_s = data["whole_process"]["seconds"], data["merge"]["seconds"], data["io_floor"]["seconds"]
    ref = data["reference"]
    ratios = {"whole_process_over_floor": whole_s / floor_s,
              "merge_over_floor": merge_s / floor_s,
              "reference_over_whole_process": ref["seconds_extrapolated"] / whole_s,
              "pointer_reference_over_whole_process": ref["pointer_reference_seconds_extrapolated"] / whole_s,
              "pointer_reference_over_merge_small_pair":
                  (ref["parse_seconds_small_pair"] + ref["pointer_scan_seconds_small_pair"]) / ref["merge_seconds_small_pair"]}
    record("ratios", ratios)
    assert ratios["whole_process_over_floor"] <= 1.5
    assert ratios["reference_over_whole_process"] >= 8.0
