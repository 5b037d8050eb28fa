"""vmpower.argtypes: the shared argparse value types."""

import argparse

import pytest

from vmpower import argtypes


@pytest.mark.parametrize("kind,good,bad", [
    (argtypes.positive, ["1", "0.5", "1e3"], ["0", "-1", "x"]),
    (argtypes.non_negative, ["0", "2.5"], ["-0.1", "abc"]),
    (argtypes.fraction, ["0", "0.7", "1"], ["1.01", "-0.5", ""]),
])
def test_values_and_one_line_refusals(kind, good, bad):
    assert [kind(v) for v in good] == [float(v) for v in good]
    for v in bad:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            kind(v)
        assert "\n" not in str(err.value) and (repr(v) in str(err.value) or v in str(err.value))


def test_argparse_reports_the_option():
    p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    p.add_argument("--interval", type=argtypes.positive)
    with pytest.raises(argparse.ArgumentError, match="must be > 0, got -2"):
        p.parse_args(["--interval", "-2"])
