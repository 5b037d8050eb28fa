"""Fault tests (issue 19) of hostile input files: zip bombs and damaged model archives, JSON
nested thousands of levels deep or a million columns wide (arrays and JSON Lines), deeply
nested machine specs. Each asserts the exit code, one error line naming the file, no traceback,
the time, and for the bomb the peak memory (VmHWM, measured in a subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import vm_records, write_vm
from vmpower.pipeline import artifact as archive
from vmpower.serving import predict
from vmpower.pipeline import ingest
from vmpower import jsonguard, limits
from vmpower.errors import InputError

pytestmark = pytest.mark.fault
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}
GIB = 1 << 30


def _onnx_linear(n_features: int) -> bytes:
    """watts = 2 * features[:, 0] + 10: a tiny ONNX graph in the export's input/output form."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((n_features, 1))
    w[0, 0] = 2.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["variable"])],
        "linear", [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([10.0]), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what opset 17 needs; onnxruntime may not know the newest IR
    return model.SerializeToString()


def write_model(path: Path, extra: dict[str, bytes] | None = None, compression=zipfile.ZIP_STORED) -> Path:
    """A verifiable one-zone model .zip (metadata, ONNX, manifest), plus ``extra`` files."""
    meta = {"model_name": "TinyTrainer_test", "status": "trained", "features": ["cpu_utilization"],
            "zones": ["package"], "input": {"name": "features", "shape": [None, 1]}, "output_type": "AbsPower",
            "ingest": yaml.safe_load((ROOT / "config.yaml").read_text())["ingest"]}
    files = {"metadata.json": json.dumps(meta).encode(), "package.onnx": _onnx_linear(1), **(extra or {})}
    manifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items()))
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in sorted({**files, "manifest.sha256": manifest.encode()}.items()):
            zf.writestr(name, data)
    return path


def run(*argv, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmpower", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def one_line_error(proc, command: str, names) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"vmpower {command}: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert str(names) in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "TinyTrainer_test.zip")


def test_the_tiny_model_predicts(model, tmp_path):
    vm = write_vm(tmp_path / "vm.json", vm_records(5))
    proc = run("predict", "--model", model, "--input", vm)
    assert proc.returncode == 0, proc.stderr
    assert "watts for 5/5 samples" in proc.stderr and ",200.000000," in proc.stdout  # 2 x 95 % + 10 W


# ------------------------------------------------------------------------ archives


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """~1 MB zip whose extra member inflates to 1 GiB of zeros (written streamed, never in memory)."""
    path = tmp_path_factory.mktemp("bomb") / "TinyTrainer_bomb.zip"
    write_model(path)
    zero = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("weights.bin", "w", force_zip64=True) as fh:
            for _ in range(GIB // len(zero)):
                fh.write(zero)
    assert path.stat().st_size < 8 << 20
    return path


def test_zip_bomb_is_refused_at_once_with_bounded_memory(bomb):
    code = textwrap.dedent(f"""
        import sys, time
        from vmpower.serving import predict
        from vmpower.errors import InputError

        def peak_kb():  # this process's own peak RSS (ru_maxrss would include the forking parent's)
            return int([ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1])

        import onnxruntime  # loaded before the baseline: the measured growth is the archive's
        before = peak_kb()
        t0 = time.perf_counter()
        try:
            predict.Model.load({str(bomb)!r})
        except InputError as err:
            print(time.perf_counter() - t0, before, peak_kb())
            print(err)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    timing, message = proc.stdout.splitlines()
    seconds, before_kb, after_kb = map(float, timing.split())
    assert seconds < 0.5 and (after_kb - before_kb) / 1024 < 32, timing  # was 4.7 s and 2 GB
    assert message.startswith(str(bomb)) and "weights.bin is 1073741824 bytes" in message
    assert "max_archive_member_bytes" in message


def test_zip_bomb_cli_is_one_line(bomb, tmp_path):
    vm = write_vm(tmp_path / "vm.json", vm_records(5))
    t0 = time.monotonic()
    proc = run("predict", "--model", bomb, "--input", vm)
    assert time.monotonic() - t0 < 15
    one_line_error(proc, "predict", bomb)


def test_total_size_cap(tmp_path):
    path = write_model(tmp_path / "m.zip", {f"pad{i}.bin": bytes(4000) for i in range(5)})
    small = limits.defaults().replace(max_archive_member_bytes=5000, max_archive_total_bytes=15000)
    with pytest.raises(InputError, match="max_archive_total_bytes"):
        archive.read_model_files(path, small)
    assert predict.Model.load(path).name == "TinyTrainer_test"  # the defaults allow it


def test_understated_size_cannot_blow_memory(tmp_path):
    """A directory entry that says 1 KiB for a 64 MiB member: the read stops at 1 KiB and fails its CRC."""
    path = write_model(tmp_path / "m.zip", {"big.bin": bytes(64 << 20)}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("big.bin")
    name = data.rfind(b"big.bin")  # the last copy of the name is the central directory's
    header = data.rfind(b"PK\x01\x02", 0, name)
    assert int.from_bytes(data[header + 24 : header + 28], "little") == info.file_size
    data[header + 24 : header + 28] = (1024).to_bytes(4, "little")  # uncompressed size
    lying = tmp_path / "lying.zip"
    lying.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        predict.Model.load(lying)
    assert str(err.value).startswith(str(lying)) and "\n" not in str(err.value)


def test_flipped_byte_is_one_line(model, tmp_path):
    data = bytearray(model.read_bytes())
    with zipfile.ZipFile(model) as zf:
        info = zf.getinfo("package.onnx")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # first data byte (stored)
    data[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / model.name
    bad.write_bytes(bytes(data))
    vm = write_vm(tmp_path / "vm.json", vm_records(5))
    line = one_line_error(run("predict", "--model", bad, "--input", vm), "predict", bad)
    assert "Bad CRC-32" in line


def test_garbage_zip_is_one_line(tmp_path):
    bad = tmp_path / "m.zip"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    proc = run("predict", "--model", bad, "--input", tmp_path / "vm.json")
    one_line_error(proc, "predict", bad)


# ------------------------------------------------------------------------ JSON depth and width


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    out["deep_array"] = tmp_path / "deep_array.json"
    out["deep_array"].write_text(_deep(10_000))  # 20 KB: segfaulted predict (rc 139)
    out["deep_1000"] = tmp_path / "deep_1000.json"
    out["deep_1000"].write_text("[" + json.dumps(vm_records(2)[0])[:-1] + ', "x": ' + _deep(1000) + "}]")
    out["deep_jsonl"] = tmp_path / "deep.jsonl"
    out["deep_jsonl"].write_text(json.dumps(vm_records(1)[0]) + "\n" + '{"x": ' + "[" * 5000 + "]" * 5000 + "}\n")
    wide_row = "{" + ",".join(f'"c{i}": {i}' for i in range(1_000_000)) + "}"
    out["wide_array"] = tmp_path / "wide_array.json"
    out["wide_array"].write_text("[" + ",\n".join([wide_row] * 3) + "]")  # 10^6 columns x 3 rows
    out["wide_jsonl"] = tmp_path / "wide.jsonl"
    out["wide_jsonl"].write_text("\n".join([wide_row] * 3) + "\n")
    # a million rows, each with a key of its own: a million columns too
    out["wide_rows"] = tmp_path / "wide_rows.jsonl"
    out["wide_rows"].write_text("\n".join(f'{{"k{i}": 1}}' for i in range(1_000_000)) + "\n")
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return _hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", ["deep_array", "deep_1000", "deep_jsonl", "wide_array", "wide_jsonl", "wide_rows"])
def test_hostile_json_refused_within_a_second(hostile, name):
    path = hostile[name]
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        ingest.read_vm_features(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert ("max_json_depth" if name.startswith("deep") else "max_columns") in str(err.value)


@pytest.mark.parametrize("name", ["deep_array", "deep_jsonl", "wide_array"])
def test_hostile_json_predict_cli(model, hostile, name):
    proc = run("predict", "--model", model, "--input", hostile[name])
    one_line_error(proc, "predict", hostile[name])  # rc 2, never 139


def test_host_json_is_checked_too(hostile):
    host = hostile["deep_array"].with_name("bm_power.json")
    host.write_text(_deep(200))
    with pytest.raises(InputError, match="max_json_depth"):
        ingest.read_host_power(host)


def test_limits_from_config(model, hostile, tmp_path):
    """--config's limits section overrides the defaults, and is validated (one line)."""
    with zipfile.ZipFile(model) as zf:
        meta_width = jsonguard.measure(zf.read("metadata.json"), 10_000)[1]
    recs = [{**r, **{f"extra_{i}": 1.0 for i in range(meta_width + 10)}} for r in vm_records(5)]
    vm = write_vm(tmp_path / "vm.json", recs)
    assert run("predict", "--model", model, "--input", vm).returncode == 0
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"limits": {"max_columns": meta_width + 5}}))
    line = one_line_error(run("predict", "--model", model, "--input", vm, "--config", cfg), "predict", vm)
    assert "limits.max_columns" in line
    cfg.write_text(yaml.safe_dump({"limits": {"max_json_depth": "deep"}}))
    line = one_line_error(run("predict", "--model", model, "--input", vm, "--config", cfg), "predict", cfg)
    assert "limits.max_json_depth" in line


def test_collector_files_pass(tmp_path):
    """Real-shaped files (escaped quotes and brackets in strings, nested host lists) are not refused."""
    recs = vm_records(50)
    for r in recs:
        r["stress_workload"] = 'cpu "[{quoted}]" \\'
    for form in ("array", "jsonl"):
        raw = ingest.read_vm_features(write_vm(tmp_path / f"vm.{form}", recs, form))
        assert len(raw.df) == 50
    depth, width = jsonguard.measure(json.dumps(recs).encode(), 10_000)
    assert depth == 3 and width == len(recs[0])  # [ { "target_zones": [ 


def test_chunked_scan_matches_whole(tmp_path, monkeypatch):
    rows = [json.dumps({'a"b': i, "x": "q\\", f"k{i % 7}": [{"deep": [i]}]}) for i in range(3000)]
    for text in ("\n".join(rows), "".join(rows), "[" + ",".join(rows) + "]"):
        whole = jsonguard.measure(text.encode(), 1000)
        monkeypatch.setattr(jsonguard, "_CHUNK", 997)
        assert jsonguard.measure(text.encode(), 1000) == whole
        monkeypatch.undo()
    assert jsonguard.measure("\n".join(rows).encode(), 1000) == (4, 10)  # a"b x k0..k6 deep


# ------------------------------------------------------------------------ machine spec


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_deep_machine_spec_is_one_line(model, tmp_path, command):
    results = tmp_path / "results"
    (results / "models").mkdir(parents=True)
    write_model(results / "models" / "m.zip")
    spec = tmp_path / "machine_spec.json"
    spec.write_text('{"processor": ' + _deep(100_000) + "}")
    extra = ["--input", tmp_path / "vm.json"] if command == "predict" else ["--port", "0", "--no-perf"]
    proc = run(command, "--model", results, "--machine-spec", spec, *extra)
    line = one_line_error(proc, command, spec)
    assert "max_json_depth" in line


def test_documented_defaults_are_the_schema_defaults():
    """docs/deploy.md's table of limits shows the one definition, the schema's defaults."""
    table = {}
    for line in (ROOT / "docs" / "deploy.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0] in limits.Limits.__dataclass_fields__:
            table[cells[0]] = float(cells[1])
    assert table == {k: float(v) for k, v in vars(limits.defaults()).items()}
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    assert "limits" in schema["properties"] and yaml.safe_load((ROOT / "config.yaml").read_text())["limits"] == {}
