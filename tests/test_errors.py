"""vmpower.errors: InputError is one line, "<path>: <problem>"."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmpower.errors import InputError


def test_str_is_path_colon_problem():
    err = InputError(Path("data/raw/vm.json"), "bad row 3")
    assert str(err) == "data/raw/vm.json: bad row 3"
    assert err.path == "data/raw/vm.json" and err.problem == "bad row 3"
    assert isinstance(err, Exception) and not isinstance(err, (OSError, ValueError))


def test_a_multiline_problem_becomes_one_line():
    err = InputError("c.yaml", "  first line\n\tsecond   line\r\n")
    assert str(err) == "c.yaml: first line second line"
    assert InputError("x", ValueError("a\nb")).problem == "a b"  # any object, by its str


def test_it_raises_like_an_exception():
    with pytest.raises(InputError, match=r"^f: p$"):
        raise InputError("f", "p")


def test_it_survives_pickling_and_copying():
    import copy
    import pickle

    assert str(pickle.loads(pickle.dumps(InputError("f", "p")))) == "f: p"
    assert copy.copy(InputError("f", "p")).path == "f"
