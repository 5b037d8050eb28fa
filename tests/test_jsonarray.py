"""jsonarray.py: a large JSON array read in pieces gives the table one parse gives."""

import json

import pyarrow as pa
import pytest

from vmpower import limits
from vmpower.errors import InputError
from vmpower.pipeline import ingest, jsonarray


def write_array(path, recs, sep=",\n"):
    path.write_text("[\n" + sep.join(json.dumps(r) for r in recs) + "\n]\n")
    return path


def whole(path):
    start, end = ingest._json_array_bounds(path, path.stat().st_size)
    return ingest._read_json_array(path, start, end)


def halves(path):
    start, end = ingest._json_array_bounds(path, path.stat().st_size)
    return jsonarray.read(path, start, end, limits.defaults())


def test_halves_equal_one_parse_with_types_unified(tmp_path):
    recs = [{"t": i, "x": None, "s": "a", "flag": True} for i in range(50)]
    recs += [{"t": i + 0.5, "x": 1.5, "s": "b", "late": "only here", "flag": False} for i in range(50)]
    path = write_array(tmp_path / "vm.json", recs)
    got, want = halves(path), whole(path)
    assert got is not None and got.schema == want.schema and got.equals(want)
    assert got.schema.field("t").type == pa.float64() and got.column_names[-1] == "late"


@pytest.mark.parametrize("case", ["no_boundary", "nested_boundary", "mixed_types", "not_objects"])
def test_falls_back_when_halves_could_differ(tmp_path, case):
    if case == "no_boundary":
        path = write_array(tmp_path / "vm.json", [{"a": i} for i in range(20)], sep=", ")
    elif case == "nested_boundary":
        path = tmp_path / "vm.json"
        inner = ",\n".join(json.dumps({"x": i}) for i in range(40))
        path.write_text('[{"a": [' + inner + "]}]")
    elif case == "mixed_types":
        path = write_array(tmp_path / "vm.json", [{"a": 1} for _ in range(20)] + [{"a": "s"} for _ in range(20)])
    else:
        path = tmp_path / "vm.json"
        path.write_text("[\n" + ",\n".join("[1]" for _ in range(20)) + "\n]")
    assert halves(path) is None


def test_ingest_uses_halves_for_large_files_with_the_same_frame(tmp_path, monkeypatch):
    recs = [{"timestamp_absolute": 1e9 + i, "cpu_utilization": i % 7, "note": "x"} for i in range(300)]
    path = write_array(tmp_path / "vm.json", recs)
    small = ingest.read_vm_features(path)
    calls = []
    real = jsonarray.read
    monkeypatch.setattr(jsonarray, "MIN_BYTES", 0)
    monkeypatch.setattr(jsonarray, "read", lambda *a: calls.append(1) or real(*a))
    big = ingest.read_vm_features(path)
    assert calls and big.df.equals(small.df) and list(big.df.columns) == list(small.df.columns)


def test_limits_hold_in_halves(tmp_path, monkeypatch):
    """A broken limit in either half: the whole-file check's one line, the parser never sees it."""
    monkeypatch.setattr(jsonarray, "MIN_BYTES", 0)
    recs = [{"a": i} for i in range(20)] + [{"deep": json.loads("[" * 100 + "]" * 100)}] + [{"a": 1}] * 20
    path = write_array(tmp_path / "vm.json", recs)
    with pytest.raises(InputError, match="max_json_depth"):
        ingest.read_vm_features(path)
    wide = [{"a": i} for i in range(20)] + [{f"c{i}": 1 for i in range(10_001)}]
    with pytest.raises(InputError, match="max_columns"):
        ingest.read_vm_features(write_array(tmp_path / "wide.json", wide))


@pytest.fixture
def small_prefix(monkeypatch):
    monkeypatch.setattr(jsonarray, "PREFIX_BYTES", 200)  # a prefix of a few samples, then two pieces


def test_keys_are_counted_in_the_prefix_only_when_the_rest_has_its_schema(tmp_path, monkeypatch, small_prefix):
    recs = [{"t": 1e9 + i, "cpu": i % 7 + 0.5, "w": "idle", "nested": {"a": i}} for i in range(400)]
    path = write_array(tmp_path / "vm.json", recs)
    counted = []
    real = jsonarray.jsonguard.scan_part
    monkeypatch.setattr(jsonarray.jsonguard, "scan_part",
                        lambda data, start, cols, depth: counted.append((len(data), cols)) or real(data, start, cols, depth))
    got = halves(path)
    assert got is not None and got.equals(whole(path))
    keyed = [n for n, cols in counted if cols is not None]
    assert keyed and max(keyed) < 400 < path.stat().st_size // 4  # only the prefix's keys were hashed
    assert sum(n for n, cols in counted if cols is None) >= path.stat().st_size - 10  # depth: the whole file


@pytest.mark.parametrize("late", ["new_key", "int_to_float", "null_to_number", "nested_key"])
def test_a_key_or_type_the_prefix_lacks_gives_one_parse_too(tmp_path, small_prefix, late):
    recs = [{"t": i, "x": None, "s": "a", "n": {"a": 1}} for i in range(300)]
    change = {"new_key": {"extra": 1.5}, "int_to_float": {"t": 2.5}, "null_to_number": {"x": 3.0},
              "nested_key": {"n": {"a": 1, "b": "new"}}}[late]
    recs[120].update(change)
    recs[280].update(change)
    path = write_array(tmp_path / "vm.json", recs)
    got, want = halves(path), whole(path)
    if late == "nested_key":  # struct<a> and struct<a, b> in two pieces: ingest parses the file whole
        assert got is None
    else:  # the pieces parsed by inference
        assert got is not None and got.schema == want.schema and got.equals(want)


def test_a_limit_broken_after_the_prefix_is_still_one_line(tmp_path, monkeypatch, small_prefix):
    monkeypatch.setattr(jsonarray, "MIN_BYTES", 0)
    wide = [{"a": i} for i in range(200)] + [{f"c{i}": 1 for i in range(10_001)}] + [{"a": 1}] * 200
    with pytest.raises(InputError, match="max_columns"):
        ingest.read_vm_features(write_array(tmp_path / "wide.json", wide))


def test_the_original_collectors_indented_arrays_are_read_in_pieces(tmp_path, small_prefix):
    """json.dump(indent=2), as the original collectors write (a key per line, samples at two
    spaces): cut between samples like a sample-per-line file, the same table as one parse."""
    recs = [{"timestamp": i * 0.5, "timestamp_iso": f"2025-09-10T10:02:{i % 60:02d}.5", "cpu_cycles": i * 1000,
             "cpu_utilization": (i % 9) * 1.5, "stress_workload": "cpu"} for i in range(300)]
    path = tmp_path / "vm_features_training.json"
    path.write_text(json.dumps(recs, indent=2))
    got, want = halves(path), whole(path)
    assert got is not None and got.schema == want.schema and got.equals(want) and got.num_rows == 300
