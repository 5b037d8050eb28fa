"""vmpower.cli.collect: the collectors' subcommands in the CLI layer."""

from vmpower import cli
from vmpower.cli import collect


def test_csv_copy_beside_the_json_unless_told_otherwise():
    assert collect.csv_path("d/f.json", None, False) == "d/f.csv"
    assert collect.csv_path("d/f.json", "x.csv", False) == "x.csv"
    assert collect.csv_path("d/f.json", None, True) is None
    assert collect.csv_path("d/f.csv", None, False) is None


def test_collect_without_a_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main(["collect"]) == 2
    assert "{vm,host,run}" in capsys.readouterr().out
    assert cli.main(["collect", "vm", "--list-workloads"]) == 0
    assert "cpu_cycling" in capsys.readouterr().out
    assert cli.COMMANDS["collect"] == "vmpower.cli.collect"
