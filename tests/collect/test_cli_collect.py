"""vmpower.cli.collect: the collectors' subcommands in the CLI layer."""

import argparse

from vmpower import cli
from vmpower.cli import collect


def test_csv_copy_beside_the_json_unless_told_otherwise():
    ns = lambda **kw: argparse.Namespace(**{"no_csv": False, "csv": None, "output": "d/f.json", **kw})  # noqa: E731
    assert collect.csv_path(ns()) == "d/f.csv"
    assert collect.csv_path(ns(csv="x.csv")) == "x.csv"
    assert collect.csv_path(ns(no_csv=True)) is None
    assert collect.csv_path(ns(output="d/f.csv")) is None


def test_collect_without_a_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main(["collect"]) == 2
    assert "{vm,host,run}" in capsys.readouterr().out
    assert cli.main(["collect", "vm", "--list-workloads"]) == 0
    assert "cpu_cycling" in capsys.readouterr().out
    assert cli.COMMANDS["collect"] == "vmpower.cli.collect"
