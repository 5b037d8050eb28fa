"""pipeline/paramcheck.py: trainer parameters checked against each estimator before any job runs."""

from __future__ import annotations

import pytest

from vmpower.configcheck import Problem
from vmpower.pipeline import paramcheck
from vmpower.pipeline.trainers import TRAINERS

GOOD = {
    "LinearRegression": {"fit_intercept": True},
    "SGDRegressor": {"max_iter": 2000, "tol": 1e-6, "alpha": 1e-4, "learning_rate": "invscaling", "eta0": 0.01},
    "GradientBoostingRegressor": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.15, "subsample": 1.0},
    "XGBRegressor": {"n_estimators": 100, "max_depth": 4, "learning_rate": 0.15, "subsample": 1.0, "tree_method": "hist"},
    "KNeighborsRegressor": {"n_neighbors": 10, "weights": "uniform", "metric": "euclidean", "p": 2},
}


def test_good_parameters_and_grids_pass():
    assert set(GOOD) == set(TRAINERS)
    assert paramcheck.train_problem({"params": GOOD, "search": {"XGBRegressor": {"max_depth": [2, 4]},
                                                                "KNeighborsRegressor": {"n_neighbors": [10, 30]}}}) is None
    assert paramcheck.train_problem({}) is None
    assert paramcheck.train_problem({"params": None, "search": None}) is None
    assert paramcheck.config_problem({}) is None
    assert paramcheck.config_problem({"train": {"params": GOOD}}) is None


@pytest.mark.parametrize("trainer, params, path, message", [
    ("XGBRegressor", {"n_estimators": -10}, ("train", "params", "XGBRegressor", "n_estimators"),
     "must be an int in the range [1, inf) or None, got -10"),
    ("XGBRegressor", {"subsample": 0}, ("train", "params", "XGBRegressor", "subsample"), None),
    ("XGBRegressor", {"tree_method": "gpu"}, ("train", "params", "XGBRegressor", "tree_method"), None),
    ("XGBRegressor", {"n_estimators": True}, ("train", "params", "XGBRegressor", "n_estimators"),
     "must not be a boolean, got True"),
    ("GradientBoostingRegressor", {"n_estimators": 0}, ("train", "params", "GradientBoostingRegressor", "n_estimators"),
     None),
    ("GradientBoostingRegressor", {"n_estimator": 5}, ("train", "params", "GradientBoostingRegressor", "n_estimator"),
     "not a parameter of GradientBoostingRegressor (did you mean n_estimators?)"),
    ("KNeighborsRegressor", {"weights": "distance"}, ("train", "params", "KNeighborsRegressor", "weights"), None),
    ("KNeighborsRegressor", {"p": 1}, ("train", "params", "KNeighborsRegressor", "p"), None),
    ("SGDRegressor", {"random_state": 3}, ("train", "params", "SGDRegressor", "random_state"),
     "set by vmpower (set from train.seed), not by the config"),
    ("XGBRegressor", {"n_jobs": 4}, ("train", "params", "XGBRegressor", "n_jobs"),
     "set by vmpower (always 1, so results do not depend on the core count), not by the config"),
    ("LinearRegression", {"zzz": 1}, ("train", "params", "LinearRegression", "zzz"),
     "not a parameter of LinearRegression"),
])
def test_bad_parameter_is_one_problem_naming_the_key(trainer, params, path, message):
    problem = paramcheck.trainer_problem(trainer, params, {})
    assert isinstance(problem, Problem)
    assert problem.path == path
    assert "\n" not in problem.message and problem.message
    if message is not None:
        assert problem.message == message
    # the whole-config entry point finds the same problem, and the text names the key path
    assert paramcheck.config_problem({"train": {"params": {trainer: params}}}) == problem
    assert problem.text().startswith(".".join(path) + ": ")


def test_reserved_keys_are_only_reserved_where_vmpower_sets_them():
    # LinearRegression takes neither random_state nor n_jobs-by-vmpower; its n_jobs is a plain parameter
    assert paramcheck.trainer_problem("LinearRegression", {"n_jobs": 2}, {}) is None
    problem = paramcheck.trainer_problem("LinearRegression", {"random_state": 1}, {})
    assert problem.message == "not a parameter of LinearRegression"


def test_a_boolean_where_a_boolean_is_meant_passes():
    assert paramcheck.trainer_problem("LinearRegression", {"fit_intercept": False}, {}) is None
    assert paramcheck.trainer_problem("SGDRegressor", {"shuffle": True}, {}) is None


def test_search_grid_problems_name_the_key_and_the_index():
    p = paramcheck.trainer_problem("XGBRegressor", {}, {"max_depth": [2, -1, 4]})
    assert p.path == ("train", "search", "XGBRegressor", "max_depth", 1)
    p = paramcheck.trainer_problem("XGBRegressor", {}, {"max_dept": [2]})
    assert p == Problem(("train", "search", "XGBRegressor", "max_dept"),
                        "not a parameter of XGBRegressor (did you mean max_depth?)")
    p = paramcheck.trainer_problem("KNeighborsRegressor", {}, {"n_jobs": [1, 2]})
    assert p.path == ("train", "search", "KNeighborsRegressor", "n_jobs")


def test_params_are_checked_before_the_grid_and_the_first_problem_wins():
    p = paramcheck.trainer_problem("XGBRegressor", {"gamma": -1, "max_depth": -1}, {"max_dept": [1]})
    assert p.path == ("train", "params", "XGBRegressor", "gamma")


def test_unknown_trainer_with_and_without_a_near_name():
    p = paramcheck.train_problem({"params": {"XGBRegresor": {}}})
    assert p == Problem(("train", "params", "XGBRegresor"), "unknown trainer (did you mean XGBRegressor?)")
    p = paramcheck.train_problem({"search": {"Forest": {"a": [1]}}})
    assert p == Problem(("train", "search", "Forest"), f"unknown trainer (known: {', '.join(TRAINERS)})")
