"""jsonguard.py: depth and distinct keys of JSON text, measured before it is parsed."""

import json
import time

import numpy as np
import pytest

from vmpower import jsonguard, limits
from vmpower.errors import InputError


def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_depth_and_keys_of_plain_text():
    text = json.dumps([{"a": 1, "b": {"c": [1, 2]}}, {"a": 2, "d": None}]).encode()
    assert jsonguard.measure(text, 100) == (4, 4)  # [ { "b": { "c": [ ; keys a b c d


def test_brackets_colons_and_quotes_inside_strings_do_not_count():
    recs = [{"k": '[[{{"x": 1}}]]', 'q"uote': "a\\", "z": "{:}"}]
    text = json.dumps(recs).encode()
    assert b"\\" in text  # the escape path
    assert jsonguard.measure(text, 100) == (2, 3)
    plain = json.dumps([{"k": "[[[[::]]]]", "w": ":x"}]).encode()
    assert b"\\" not in plain  # the path without backslashes
    assert jsonguard.measure(plain, 100) == (2, 2)


def test_same_key_counted_once_whichever_path_scans_it(monkeypatch):
    """A key is hashed alike in a chunk with backslashes and in one without (the count spans chunks)."""
    rows = [json.dumps({"same_key_long_enough_to_span_words": i, "s": "x\\" if i % 2 else "y"}) for i in range(200)]
    text = "\n".join(rows).encode()
    monkeypatch.setattr(jsonguard, "_CHUNK", 50)  # about one row per chunk: both paths alternate
    assert jsonguard.measure(text, 100) == (1, 2)


def test_keys_differing_only_in_the_middle_or_past_32_bytes_are_distinct():
    base = "k" * 40
    keys = [base[:20] + str(i) + base[21:] for i in range(10)] + [base + str(i) for i in range(10)] + ["", "a"]
    text = json.dumps({k: 1 for k in keys}).encode()
    assert jsonguard.measure(text, 1000) == (1, len(keys))


def test_count_matches_python_on_random_documents():
    rng = np.random.default_rng(5)
    alphabet = list('ab"\\[]{}: ,\u00e9x')
    for _ in range(40):
        keys = ["".join(rng.choice(alphabet, rng.integers(0, 30))) for _ in range(rng.integers(1, 30))]
        recs = [{k: (k if rng.random() < 0.5 else 1.0) for k in rng.choice(keys, rng.integers(1, 8))} for _ in range(30)]
        ascii_only = bool(rng.random() < 0.5)  # keys are told apart by their raw bytes: one encoding
        text = "\n".join(json.dumps(r, ensure_ascii=ascii_only) for r in recs).encode()
        want = len({k for r in recs for k in r})
        assert jsonguard.measure(text, 10_000) == (1, want)


def test_scan_part_pieces_combine_to_the_whole():
    rows = [json.dumps({f"k{i % 13}": [i, {"n": "]"}]}) for i in range(500)]
    text = ("[" + ",\n".join(rows) + "]").encode()
    cut = text.index(b"\n{", len(text) // 2) + 1
    head = jsonguard.scan_part(text[:cut], (False, 0), 1000, 64)
    tail = jsonguard.scan_part(text[cut:], (False, 1), 1000, 64)
    assert head.end == (False, 1) and tail.end == (False, 0)
    assert jsonguard.combine([head, tail]) == jsonguard.measure(text, 1000, 64) == (4, 14)


def test_check_fails_in_one_line_quickly_on_a_deep_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(deep(10_000))
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        jsonguard.check_file(path, limits.defaults())
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "max_json_depth" in msg and "10000 levels" in msg


def test_check_refuses_too_many_distinct_keys(tmp_path):
    lim = limits.defaults()
    path = tmp_path / "wide.json"
    path.write_text(json.dumps([{f"c{i}": 1 for i in range(lim.max_columns + 1)}]))
    with pytest.raises(InputError, match="max_columns") as err:
        jsonguard.check_file(path, lim)
    assert "\n" not in str(err.value)
    path.write_text(json.dumps([{f"c{i}": 1 for i in range(lim.max_columns)}]))
    jsonguard.check_file(path, lim)  # exactly at the limit: fine


def test_loads_is_bounded_and_one_line():
    lim = limits.defaults()
    assert jsonguard.loads('{"a": [1, 2]}', "m.json", lim) == {"a": [1, 2]}
    with pytest.raises(InputError, match="max_json_depth"):
        jsonguard.loads(deep(lim.max_json_depth + 1), "m.json", lim)
    with pytest.raises(InputError, match=r"m\.json: not valid JSON") as err:
        jsonguard.loads('{"a": ', "m.json", lim)
    assert "\n" not in str(err.value)


def test_empty_file_passes_check(tmp_path):
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    jsonguard.check_file(path, limits.defaults())
