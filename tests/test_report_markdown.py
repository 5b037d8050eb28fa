"""pipeline/report/markdown.py: the plain-text build report (results/report.md)."""

from __future__ import annotations

import json

import pandas as pd

from vmpower import cli
from vmpower.pipeline.report import markdown

KEYS = ["node_type", "output_type", "feature_group", "trainer"]


def summary():
    rows = [
        ["nt1", "AbsPower", "base", "LinearRegression", "package", 1.5, 2.0, 1.75, 0.9, "trained", None],
        ["nt1", "AbsPower", "base", "LinearRegression", "core", 1.0, 2.5, 1.25, 0.8, "trained", None],
        ["nt1", "AbsPower", "base", "XGBRegressor", "package", None, None, None, None, "onnx_mismatch", "3 W off"],
        ["nt1", "AbsPower", "base", "XGBRegressor", "core", None, None, None, None, "onnx_mismatch", "3 W off"],
        ["nt1", "AbsPower", "base", "KNeighborsRegressor", "package", None, None, None, None, "skipped", None],
    ]
    return pd.DataFrame(rows, columns=[*KEYS, "zone", "mae", "mape", "rmse", "r2", "status", "reason"])


QUALITY = {"rows_kept": 90, "vm_samples": 100, "match_rate": 0.9, "time_diff_mean": None, "time_diff_max": 0.25,
           "rows_dropped": {"no_power": 10}, "warnings": ["gap"]}
ISOLATION = {"method": "min", "idle_power_watts": {"package": 10.5}}
BEST = {"nt1": {"AbsPower": {"base": {"trainer": "LinearRegression", "mae_mean": 1.25}}}}


def test_unusable_models_one_row_per_model_sorted_with_reasons():
    got = markdown.unusable_models(summary())
    assert got[["trainer", "status", "reason"]].values.tolist() == [
        ["KNeighborsRegressor", "skipped", ""], ["XGBRegressor", "onnx_mismatch", "3 W off"]]
    assert len(markdown.unusable_models(summary().drop(columns="status"))) == 0
    assert markdown.unusable_models(summary().drop(columns="reason"))["reason"].tolist() == ["", ""]


def test_render_sections_and_exact_tables():
    text = markdown.render(summary(), BEST, {"nt1": {"run_quality": {"r1": QUALITY}}}, {"nt1": ISOLATION})
    lines = text.split("\n")
    assert lines[0] == "# vmpower build report"
    assert ("| nt1 | r1 | 90 | 100 | 0.900 | 0.000 | 0.250 | no_power=10 | gap |") in lines
    assert "| node_type | method | idle package (W) |" in lines and "| nt1 | min | 10.500 |" in lines
    assert "| nt1 | AbsPower | base | LinearRegression | 1.250 |" in lines
    assert "| nt1 | AbsPower | base | LinearRegression | core | 1.000 | 2.500 | 1.250 | 0.800 |" in lines
    assert not any("XGBRegressor | package" in line for line in lines[:lines.index("## Models not exported as ONNX "
                                                                                     "(never selected)")])
    assert "| nt1 | AbsPower | base | XGBRegressor | onnx_mismatch | 3 W off |" in lines


def test_render_without_runs_or_failures():
    ok = summary().iloc[:2]
    text = markdown.render(ok, {}, {}, {})
    assert text.count("(no runs)") == 1 and text.count("(none)") == 2
    assert "Models not exported" not in text


def test_table_header_and_float_cells():
    df = pd.DataFrame({"a": ["x"], "b": [1.0], "c": [2]})
    assert markdown._table(df) == "| a | b | c |\n|---|---|---|\n| x | 1.000 | 2 |"


def test_cmd_report_through_the_cli(tmp_path):
    s = tmp_path / "summary.csv"
    summary().to_csv(s, index=False)
    (tmp_path / "best.json").write_text(json.dumps(BEST))
    (tmp_path / "nt1.summary.json").write_text(json.dumps({"run_quality": {"r1": QUALITY}}))
    (tmp_path / "nt1").mkdir()
    (tmp_path / "nt1" / "isolation.json").write_text(json.dumps(ISOLATION))
    (tmp_path / "pin.md").write_text("### nt1\npin it\n")
    out = tmp_path / "report.md"
    assert cli.main(["report", "--summary", str(s), "--best", str(tmp_path / "best.json"),
                     "--datasets", str(tmp_path / "nt1.summary.json"),
                     "--isolation", str(tmp_path / "nt1" / "isolation.json"),
                     "--layout-problems", "raw/nt2/r9: no power file",
                     "--pinning", str(tmp_path / "pin.md"), "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# vmpower build report\n\n## Not built: runs with a layout problem "
                           "(their node_types are left out)\n\n- `raw/nt2/r9: no power file`\n\n## Data quality")
    assert "| nt1 | r1 | 90 |" in text and "| nt1 | min | 10.500 |" in text
    assert text.endswith("## CPU pinning recommendation (EP-003 FR5)\n\n### nt1\npin it\n")
