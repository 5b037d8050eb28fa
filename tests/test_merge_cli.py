"""pipeline/merge_cli.py: `vmpower merge` / `merge-dataset` argument handling and one-line errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import host_frame, vm_records, write_host_csv, write_vm
from vmpower import cli
from vmpower.paths import CONFIG
from vmpower.pipeline import merge_cli

SEED = yaml.safe_load(merge_cli.SEED_OVERLAY.read_text())["merge"]
FLAGS = dict(time_tolerance=None, min_power_threshold=None, power_zone=None, alignment=None)


def ns(**over):
    return argparse.Namespace(**{"settings": None, "config": None, **FLAGS, **over})


def ms(**over):
    """merge_settings of a command line with these options (the rest not given)."""
    a = vars(ns(**over))
    return merge_cli.merge_settings(a.pop("settings"), a.pop("config"), a)


@pytest.fixture
def run(tmp_path):
    vm = write_vm(tmp_path / "vm_features_t.json", vm_records())
    bm = write_host_csv(tmp_path / "bm_power_t.csv", host_frame())
    return vm, bm


def main(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_without_config_the_seed_overlay_is_used_over_the_bundled_config():
    s = ms()
    assert (s.alignment, s.time_tolerance, s.min_power_threshold, s.power_zone, s.min_match_rate) == (
        "nearest", 0.5, 0.001, "core", 0.0)
    assert {k: getattr(s, k) for k in SEED} == SEED
    cfg = yaml.safe_load(CONFIG.read_text())
    assert s.zones == cfg["zones"]  # every other key from config.yaml


def test_config_file_and_flags_override(tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    s = ms(config=str(CONFIG))
    assert s.alignment == cfg["merge"]["alignment"]
    s = ms(config=str(CONFIG), alignment="window", time_tolerance=2.0, power_zone="dram")
    assert (s.alignment, s.time_tolerance, s.power_zone) == ("window", 2.0, "dram")
    assert s.min_power_threshold == cfg["merge"]["min_power_threshold"]  # an unset flag changes nothing


def test_settings_json_is_used_as_given():
    import dataclasses

    base = ms(config=str(CONFIG))
    flat = {**dataclasses.asdict(base), "time_tolerance": 0.25}
    s = ms(settings=json.dumps(flat), config="ignored.yaml")
    assert s == dataclasses.replace(base, time_tolerance=0.25)


def test_merge_parquet_and_quality(tmp_path, run, capsys):
    vm, bm = run
    out, q = tmp_path / "m.parquet", tmp_path / "m.quality.json"
    code, io = main(capsys, "merge", "--vm-features", vm, "--bm-power", bm, "--output", out, "--quality", q,
                    "--config", CONFIG, "--alignment", "window")
    assert code == 0
    df, quality = pd.read_parquet(out), json.loads(q.read_text())
    assert len(df) == quality["rows_kept"] > 0 and quality["vm_samples"] == 60
    assert io.out.startswith(f"merged {quality['rows_kept']}/60 VM samples (match rate ") and io.out.rstrip().endswith(str(out))


def test_merge_csv_has_power_watts_of_the_chosen_zone(tmp_path, run, capsys):
    vm, bm = run
    out = tmp_path / "training_dataset.csv"
    code, _ = main(capsys, "merge", "--vm-features", vm, "--bm-power", bm, "--output", out, "--power-zone", "dram")
    assert code == 0
    df = pd.read_csv(out)
    np.testing.assert_array_equal(df["power_watts"], df["power_dram"])
    assert "time_diff" in df.columns


def test_bad_vm_file_is_one_line_naming_it_and_writes_nothing(tmp_path, run, capsys):
    _, bm = run
    bad = tmp_path / "vm_features_bad.json"
    bad.write_text('[{"timestamp": 1')
    out = tmp_path / "never.parquet"
    code, io = main(capsys, "merge", "--vm-features", bad, "--bm-power", bm, "--output", out, "--quality",
                    tmp_path / "q.json")
    line = io.err.strip()
    assert code == 2 and "\n" not in line and line.startswith(f"vmpower merge: error: {bad}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm_power_t.csv", "vm_features_bad.json",
                                                          "vm_features_t.json"]


def test_bad_flag_value_is_refused_by_argparse(run, tmp_path, capsys):
    vm, bm = run
    with pytest.raises(SystemExit) as exc:
        cli.main(["merge", "--vm-features", str(vm), "--bm-power", str(bm), "--output", str(tmp_path / "o.csv"),
                  "--power-zone", "gpu"])
    assert exc.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


def test_merge_dataset_settings_without_zones_is_one_line(tmp_path, capsys):
    code, io = main(capsys, "merge-dataset", "--inputs", tmp_path / "r.parquet", "--output", tmp_path / "d.parquet",
                    "--summary", tmp_path / "d.json", "--settings", "{}")
    assert code == 2 and io.err.strip() == "vmpower merge-dataset: error: --settings: missing setting zones"
    assert list(tmp_path.iterdir()) == []


def test_merge_dataset_stacks_runs_with_their_quality(tmp_path, run, capsys):
    vm, bm = run
    for r in ("r1", "r2"):
        assert main(capsys, "merge", "--vm-features", vm, "--bm-power", bm, "--config", CONFIG,
                    "--output", tmp_path / f"{r}.parquet", "--quality", tmp_path / f"{r}.quality.json")[0] == 0
    code, _ = main(capsys, "merge-dataset", "--inputs", tmp_path / "r2.parquet", tmp_path / "r1.parquet",
                   "--quality-inputs", tmp_path / "r1.quality.json", tmp_path / "r2.quality.json",
                   "--output", tmp_path / "d.parquet", "--summary", tmp_path / "d.json")
    assert code == 0
    summary = json.loads((tmp_path / "d.json").read_text())
    assert sorted(summary["run_quality"]) == ["r1", "r2"]
    data = pd.read_parquet(tmp_path / "d.parquet")
    assert summary["rows"] == len(data) if "engineering" in summary else len(data) > 0
    assert list(pd.unique(data["run_id"])) == ["r1", "r2"]


def test_a_workflow_merge_job_reads_no_yaml_and_no_schema(run, tmp_path):
    """--settings (checked and filled by Snakemake): the job neither parses YAML nor imports a
    schema validator (the limits are taken as given), so it starts fast."""
    import dataclasses
    import subprocess
    import sys

    from vmpower import settings as settings_mod

    cfg = settings_mod.load(CONFIG)
    flat = {**dataclasses.asdict(ms(config=str(CONFIG))), "limits": cfg["limits"]}
    code = (
        "import sys\nfrom vmpower import cli\n"
        f"code = cli.main(['merge', '--vm-features', {str(run[0])!r}, '--bm-power', {str(run[1])!r}, "
        f"'--output', {str(tmp_path / 'm.parquet')!r}, '--settings', {json.dumps(flat)!r}])\n"
        "print(code, sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split("\n")[-2] == "0 []", res.stdout + res.stderr
