"""pipeline/cross_node_type.py: each node_type's model evaluated on every node_type's data."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from vmpower import cli
from vmpower.pipeline import cross_node_type as cross

COLS = ["trained_on", "evaluated_on", "zone", "mae", "ratio", "rows", "kind"]


@pytest.fixture
def files(tmp_path):
    x = np.arange(10, dtype="float64")
    # a: package = 2x, b: package = 2x + 1, so a's model is off by exactly 1 W on b's data
    pd.DataFrame({"f": x, "power_package": 2 * x, "power_core": x}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"f": np.append(x, np.nan), "power_package": np.append(2 * x + 1, 5.0)}).to_parquet(tmp_path / "b.parquet")
    pd.DataFrame({"g": x, "power_package": x}).to_parquet(tmp_path / "c.parquet")
    a = LinearRegression().fit(x[:, None], 2 * x)
    b = LinearRegression().fit(x[:, None], 2 * x + 1)
    joblib.dump({"features": ["f"], "zones": ["package", "core"], "models": {"package": a}}, tmp_path / "a.joblib")
    joblib.dump({"features": ["f"], "zones": ["package"], "models": {"package": b}}, tmp_path / "b.joblib")
    (tmp_path / "a.json").write_text(json.dumps({"metrics": {"package": {"mae": 0.5}, "core": {"mae": 0.2}}}))
    (tmp_path / "b.json").write_text(json.dumps({"metrics": {"package": {"mae": 0.25}}}))
    (tmp_path / "c.json").write_text(json.dumps({}))
    return tmp_path


def test_matrix_values_ratios_and_kinds(files):
    p = files
    t = cross.cross_node_type({"a": str(p / "a.joblib"), "b": str(p / "b.joblib")},
                              {"a": str(p / "a.json"), "b": str(p / "b.json"), "c": str(p / "c.json")},
                              {n: str(p / f"{n}.parquet") for n in "abc"})
    assert list(t.columns) == COLS
    rows = {(r.trained_on, r.evaluated_on, r.zone): r for r in t.itertuples(index=False)}
    assert list(rows) == [("a", "a", "package"), ("a", "a", "core"), ("a", "b", "package"), ("a", "b", "core"),
                          ("a", "c", "package"), ("a", "c", "core"), ("b", "a", "package"), ("b", "b", "package"),
                          ("b", "c", "package")]
    own = rows[("a", "a", "package")]
    assert (own.mae, own.ratio, own.kind) == (0.5, 1.0, "held-out runs") and pd.isna(own.rows)
    ab = rows[("a", "b", "package")]
    assert ab.mae == pytest.approx(1.0) and ab.rows == 10 and ab.kind == "all rows"  # the NaN feature row is left out
    assert ab.ratio == pytest.approx(1.0 / 0.25)
    ba = rows[("b", "a", "package")]
    assert ba.mae == pytest.approx(1.0) and ba.ratio == pytest.approx(2.0)
    core = rows[("a", "b", "core")]
    assert pd.isna(core.mae) and core.rows == 0 and core.kind == "not trained"
    ac = rows[("a", "c", "package")]
    assert pd.isna(ac.mae) and ac.kind == "missing f" and pd.isna(ac.ratio)  # c has no own metrics either


def test_missing_zone_column_is_named(files):
    p = files
    pd.DataFrame({"f": [1.0, 2.0]}).to_parquet(p / "d.parquet")
    t = cross.cross_node_type({"b": str(p / "b.joblib")}, {"b": str(p / "b.json")}, {"d": str(p / "d.parquet")})
    assert t.kind.tolist() == ["missing zone"] and t.rows.tolist() == [0]


def test_no_models_gives_an_empty_table_with_the_columns():
    t = cross.cross_node_type({}, {}, {})
    assert list(t.columns) == COLS and len(t) == 0


def test_cmd_through_the_cli_writes_the_csv(files, capsys):
    p = files
    out = p / "cross.csv"
    argv = ["train-cross", "--node-types", "a", "b", "--models", str(p / "a.joblib"), str(p / "b.joblib"),
            "--metrics", str(p / "a.json"), str(p / "b.json"), "--datasets", str(p / "a.parquet"),
            str(p / "b.parquet"), "--model-name", "AbsPower/base/LinearRegression", "--output", str(out)]
    assert cli.main(argv) == 0
    t = pd.read_csv(out)
    assert list(t.columns) == ["model", *COLS]
    assert set(t.model) == {"AbsPower/base/LinearRegression"} and len(t) == 6
    first = out.read_bytes()
    assert cli.main(argv) == 0 and out.read_bytes() == first
    printed = capsys.readouterr().out
    assert "trained_on" in printed and "evaluated_on" in printed
