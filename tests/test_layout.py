"""Raw-data layout problems: reported by path in one line, failing only their own node_type."""

import json
import re
import shutil

import pytest
import yaml

from vmpower import cli

from vmpower.pipeline import layout
from workflow import make_workspace, planned_jobs, snakemake

VM, BM = "vm_features_p_20250310_090000.json", "bm_power_p_20250310_090000.csv"


def make_run(run_dir, vm=VM, bm=BM):
    run_dir.mkdir(parents=True)
    for name in (vm, bm):
        if name:
            (run_dir / name).write_text("[]" if name.endswith(".json") else "timestamp\n")
    return run_dir


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    make_run(raw / "nt-a/run01")
    (raw / "nt-a/run01/machine_spec.json").write_text("{}")
    make_run(raw / "nt-a/notes", vm=None, bm=None)  # no VM or host file: not a run, left alone
    (raw / "nt-a/notes/machine_spec.json").write_text("{}")
    make_run(raw / "nt-b/run01")
    make_run(raw / "nt-b/no-host", bm=None)
    make_run(raw / "nt-b/no-vm", vm=None)
    make_run(raw / "nt-b/two-vm")
    (raw / "nt-b/two-vm/vm_features_p_second.jsonl").write_text("")
    make_run(raw / "nt-b/two-host")
    (raw / "nt-b/two-host/bm_power_p_second.json").write_text("[]")
    make_run(raw / "nt-b/run 05")
    make_run(raw / "nt-b/$(touch pwned)")
    make_run(raw / "nt-b/_hidden-ish")
    make_run(raw / "nt-b/odd-file", vm="vm_features_{x} y.json")
    make_run(raw / "bad type/run01")
    (raw / "nt-c").mkdir()
    (raw / "nt-c" / VM).write_text("[]")  # a run's file outside a run directory
    return raw


# (node_type id, run id or a regex of it) -> regex of the problem after "<path>: "
EXPECTED = {
    ("nt-b", "no-host"): rf"no host file bm_power_\*\.csv\|json next to {VM}",
    ("nt-b", "no-vm"): rf"no VM file vm_features_\*\.json next to {BM}",
    ("nt-b", "two-vm"): rf"2 VM files \({VM}, vm_features_p_second\.jsonl\), a run has exactly one",
    ("nt-b", "two-host"): rf"2 host files \({BM}, bm_power_p_second\.json\), a run has exactly one",
    ("nt-b", "run 05"): r"run directory name 'run 05' is not allowed .* rename it, e\.g\. to 'run_05'",
    ("nt-b", "$(touch pwned)"): r"run directory name '\$\(touch pwned\)' is not allowed .* e\.g\. to 'touch_pwned'",
    ("nt-b", "_hidden-ish"): r"run directory name '_hidden-ish' is not allowed",
    ("nt-b", "odd-file"): r"file name 'vm_features_\{x\} y\.json' is not allowed",
    ("bad type", "run01"): r"node_type directory name 'bad type' is not allowed .* e\.g\. to 'bad_type'",
}


def test_discover_reports_every_layout_problem_by_path_and_keeps_the_valid_runs(raw):
    found = layout.discover(raw)
    assert {nt: sorted(runs) for nt, runs in found.runs.items()} == {"nt-a": ["run01"], "nt-b": ["run01"]}
    assert found.runs["nt-a"]["run01"] == {"vm": str(raw / "nt-a/run01" / VM), "bm": str(raw / "nt-a/run01" / BM),
                                           "dir": str(raw / "nt-a/run01")}
    want = {(layout.safe_id(nt), layout.safe_id(run)): (raw / nt / run, problem) for (nt, run), problem in EXPECTED.items()}
    want[("nt-c", layout.LOOSE_FILES)] = (raw / "nt-c", rf"{VM} directly in a node_type directory")
    assert set(found.problems) == set(want)
    for key, (path, problem) in want.items():
        line = str(found.problems[key])
        assert "\n" not in line and line.startswith(f"{path}: "), line
        assert re.search(problem, line[len(str(path)) + 2:]), (key, line)
    # every id is a valid wildcard; only valid node_type names count as broken node_types
    assert all(re.fullmatch(layout.NAME, part) for key in found.problems for part in key)
    assert found.broken_node_types() == ["nt-b", "nt-c"]


def test_safe_id_keeps_valid_names_and_separates_invalid_ones():
    assert layout.safe_id("run01-idle.v2") == "run01-idle.v2"
    ids = {layout.safe_id(n) for n in ("run 1", "run\t1", "run_1 ", "$(x)", "", "-a")}
    assert len(ids) == 6 and all(re.fullmatch(layout.NAME, i) and i.startswith(layout.INVALID) for i in ids)


def test_a_path_with_a_newline_stays_on_one_line(tmp_path):
    make_run(tmp_path / "raw/nt/run\n01")
    (err,) = layout.discover(tmp_path / "raw").problems.values()
    assert "\n" not in str(err) and str(err).startswith(repr(str(tmp_path / "raw/nt/run\n01")))


def test_check_layout_prints_one_line_per_problem_and_fails(raw, capsys):
    assert cli.main(["check-layout", str(raw)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(EXPECTED) + 1
    assert all(line.startswith(f"vmpower check-layout: error: {raw}/") for line in lines)
    # --only: the run of one check_layout job
    assert cli.main(["check-layout", str(raw), "--only", f"nt-b/{layout.safe_id('$(touch pwned)')}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"vmpower check-layout: error: {raw}/nt-b/$(touch pwned): run directory name")
    # a check_layout job whose problem was fixed after planning still fails (its run was left out)
    assert cli.main(["check-layout", str(raw), "--only", "nt-a/run01"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"vmpower check-layout: error: {raw}/nt-a/run01: the layout problem found when the build was " \
        "planned is gone: start the build again"


def test_check_layout_passes_a_valid_tree(raw, tmp_path):
    for path in sorted(raw.iterdir()):
        if path.name != "nt-a":
            shutil.rmtree(path)
    ok = tmp_path / "ok.txt"
    assert cli.main(["check-layout", str(raw), "--ok-file", str(ok)]) == 0 and ok.is_file()


# ------------------------------------------------------------------------------ workflow builds

# One trainer, one group, one output type: the layout handling, not the models, is under test.
TINY = {"train": {"output_types": ["AbsPower"], "feature_groups": ["Activity"], "trainers": ["LinearRegression"]}}


def tiny_workspace(path):
    """The demo's first two node_types (demo-epyc stays healthy) and the tiny overlay."""
    ws = make_workspace(path)
    for nt in sorted((ws / "data/raw").iterdir())[2:]:
        shutil.rmtree(nt)
    (ws / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return ws


def build(ws, *args):
    return snakemake(ws, "--configfile", "config.yaml", "tiny.yaml", "--cores", "1", *args, check=False)


def break_runs(ws):
    """Four broken runs in demo-xeon-e5, one broken node_type name; {run dir: expected line}."""
    nt = ws / "data/raw/demo-xeon-e5"
    next((nt / "run03-memory").glob("bm_power_*")).unlink()
    vm = next((nt / "run04-bursty").glob("vm_features_*"))
    shutil.copy(vm, nt / "run04-bursty/vm_features_demo_second.json")
    (nt / "run05-compute").rename(nt / "run 05")
    (nt / "run06-mixed").rename(nt / "$(touch pwned)")
    shutil.copytree(ws / "data/raw/demo-epyc/run02-cycling", ws / "data/raw/bad type;touch pwned/run02")
    return {
        "data/raw/demo-xeon-e5/run03-memory": "no host file bm_power_*.csv|json next to vm_features_demo_run03_memory_",
        "data/raw/demo-xeon-e5/run04-bursty": f"2 VM files ({vm.name}, vm_features_demo_second.json), a run has exactly one",
        "data/raw/demo-xeon-e5/run 05": "run directory name 'run 05' is not allowed",
        "data/raw/demo-xeon-e5/$(touch pwned)": "run directory name '$(touch pwned)' is not allowed",
        "data/raw/bad type;touch pwned/run02": "node_type directory name 'bad type;touch pwned' is not allowed",
    }


@pytest.mark.slow
def test_broken_runs_fail_only_their_node_type_with_keep_going(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    host = next((ws / "data/raw/demo-xeon-e5/run03-memory").glob("bm_power_*"))
    saved = host.read_bytes()
    expected = break_runs(ws)
    res = build(ws, "--keep-going")
    console = res.stdout + res.stderr
    assert res.returncode != 0
    for path, problem in expected.items():
        # the job's log (shown by profiles/default's show-failed-logs) holds exactly the one line
        assert f"vmpower check-layout: error: {path}: {problem}" in console, path
    logs = sorted((ws / "logs/layout").rglob("*.log"))
    assert len(logs) == len(expected) and all(len(p.read_text().splitlines()) == 1 for p in logs)
    res_dir = ws / "results"
    assert sorted(p.name for p in (res_dir / "models/AbsPower/Activity").iterdir()) == [
        "LinearRegressionTrainer_demo-epyc", "LinearRegressionTrainer_demo-epyc.zip"]
    # the aggregates leave the broken node_type out, and the report says why
    assert list(json.loads((res_dir / "best.json").read_text())) == ["demo-epyc"]
    assert (res_dir / "report/demo-epyc/metrics.html").is_file() and not (res_dir / "report/demo-xeon-e5").exists()
    report = (res_dir / "report.md").read_text()
    assert "## Not built: runs with a layout problem" in report and "data/raw/demo-xeon-e5/run 05" in report
    assert not (res_dir / "datasets/demo-xeon-e5.parquet").exists()
    assert (res_dir / "merged/demo-xeon-e5/run01-idle.parquet").is_file()  # its valid runs still merged
    assert not [p for p in tmp_path.rglob("pwned") if p.is_file()], "a directory name reached a shell"

    # repaired: the node_type builds and joins the aggregates
    nt = ws / "data/raw/demo-xeon-e5"
    host.write_bytes(saved)
    (nt / "run04-bursty/vm_features_demo_second.json").unlink()
    (nt / "run 05").rename(nt / "run05-compute")
    (nt / "$(touch pwned)").rename(nt / "run06-mixed")
    shutil.rmtree(ws / "data/raw/bad type;touch pwned")
    jobs = planned_jobs(build(ws, "-n"))
    assert jobs.get("check_layout") is None and jobs["merge_dataset"] == 1 and jobs["export_summary"] == 1
    assert jobs["merge_run"] == 4  # the two runs repaired, the two reunited with their files


@pytest.mark.slow
def test_a_broken_run_stops_the_build_with_its_line_without_keep_going(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    next((ws / "data/raw/demo-xeon-e5/run03-memory").glob("bm_power_*")).unlink()
    res = build(ws)
    console = res.stdout + res.stderr
    assert res.returncode != 0
    line = "vmpower check-layout: error: data/raw/demo-xeon-e5/run03-memory: no host file bm_power_*.csv|json"
    assert line in console and "Exiting because a job execution failed" in console
    assert not (ws / "results/best.json").exists() and not (ws / "results/models").exists()
