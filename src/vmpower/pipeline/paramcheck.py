"""Trainer parameters (train.params, train.search) checked against each estimator's own
parameters before any job runs: a misspelt name or an out-of-range value is an error naming the
key, not a silently ignored setting or a model trained with n_estimators=-10 (issue 19).

scikit-learn estimators declare their constraints (``_parameter_constraints``, checked by
``validate_parameter_constraints``, the function their fit() uses). XGBoost declares none and
accepts most bad values silently (a negative n_estimators trains no trees), so its common ones
are declared here in the same terms."""

from __future__ import annotations

import difflib
import importlib
import re
from numbers import Integral, Real

from vmpower.configcheck import Problem

# The workflow imports this module while planning (rules/common.smk passes config_problem to
# configcheck): vmpower.pipeline.trainers (numpy, scikit-learn) is imported only when checking.

# Set by vmpower for every fit (trainers.make_pipeline): a value in the config would be ignored.
_RESERVED = {"random_state": "set from train.seed", "n_jobs": "always 1, so results do not depend on the core count"}


def _extra_constraints(trainer: str) -> dict:
    from sklearn.utils._param_validation import Interval, Options, StrOptions

    if trainer == "XGBRegressor":
        unit = [Interval(Real, 0, 1, closed="right"), None]
        nonneg = [Interval(Real, 0, None, closed="left"), None]
        return {
            "n_estimators": [Interval(Integral, 1, None, closed="left"), None],
            "max_depth": [Interval(Integral, 0, None, closed="left"), None],
            "max_leaves": [Interval(Integral, 0, None, closed="left"), None],
            "max_bin": [Interval(Integral, 2, None, closed="left"), None],
            "num_parallel_tree": [Interval(Integral, 1, None, closed="left"), None],
            "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
            "subsample": unit, "colsample_bytree": unit, "colsample_bylevel": unit, "colsample_bynode": unit,
            "min_child_weight": nonneg, "gamma": nonneg, "reg_alpha": nonneg, "reg_lambda": nonneg,
            "max_delta_step": nonneg,
            "tree_method": [StrOptions({"hist", "approx", "exact", "auto"}), None],
            "grow_policy": [StrOptions({"depthwise", "lossguide"}), None],
            "booster": [StrOptions({"gbtree", "gblinear", "dart"}), None],
            "verbosity": [Interval(Integral, 0, 3, closed="both"), None],
        }
    if trainer == "KNeighborsRegressor":
        # What TieStableKNeighborsRegressor (and its ONNX graph) supports.
        return {"weights": [StrOptions({"uniform"})], "metric": [StrOptions({"minkowski", "euclidean"})],
                "p": [Options(Real, {2})]}
    return {}


def _estimator(trainer: str):
    from vmpower.pipeline.trainers import TRAINERS

    traits = TRAINERS[trainer]
    est_cls = getattr(importlib.import_module(traits.module), traits.cls)
    reserved = {k: v for k, v in _RESERVED.items() if (traits.seeded if k == "random_state" else traits.threaded)}
    constraints = {**getattr(est_cls, "_parameter_constraints", {}), **_extra_constraints(trainer)}
    return set(est_cls().get_params(deep=False)), constraints, reserved


def _value_problem(trainer: str, constraints: dict, key: str, value) -> str | None:
    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    allowed = constraints.get(key)
    # YAML's true/false pass as the integers 1/0 of an Interval: only where a boolean is meant.
    if isinstance(value, bool) and isinstance(allowed, list) and not any(
            isinstance(c, str) and c in ("boolean", "verbose") or c is bool for c in allowed):
        return f"must not be a boolean, got {value}"
    try:
        validate_parameter_constraints(constraints, {key: value}, caller_name=trainer)
    except InvalidParameterError as exc:
        # "The 'x' parameter of T must be ... Got v instead." -> "must be ...; got v"
        text = re.sub(r"^The '[^']*' parameter of \S+ ", "", " ".join(str(exc).split()))
        return re.sub(r"\. Got (.*) instead\.$", r", got \1", text)
    return None


def _key_problem(trainer: str, valid: set, reserved: dict, key) -> str | None:
    if key in reserved:
        return f"set by vmpower ({reserved[key]}), not by the config"
    if key not in valid:
        near = difflib.get_close_matches(str(key), sorted(valid), n=1)
        return f"not a parameter of {trainer}" + (f" (did you mean {near[0]}?)" if near else "")
    return None


def trainer_problem(trainer: str, params: dict, grid: dict) -> Problem | None:
    """The first bad parameter name or value of one trainer's params and search grid."""
    valid, constraints, reserved = _estimator(trainer)
    for key, value in params.items():
        message = _key_problem(trainer, valid, reserved, key) or _value_problem(trainer, constraints, key, value)
        if message:
            return Problem(("train", "params", trainer, key), message)
    for key, values in grid.items():
        message = _key_problem(trainer, valid, reserved, key)
        if message:
            return Problem(("train", "search", trainer, key), message)
        for i, value in enumerate(values):
            message = _value_problem(trainer, constraints, key, value)
            if message:
                return Problem(("train", "search", trainer, key, i), message)
    return None


def train_problem(train: dict) -> Problem | None:
    """The first problem of train.params and train.search (both {trainer: {...}})."""
    from vmpower.pipeline.trainers import TRAINERS

    params, search = train.get("params") or {}, train.get("search") or {}
    for section, mapping in (("params", params), ("search", search)):
        for trainer in mapping:
            if trainer not in TRAINERS:
                near = difflib.get_close_matches(str(trainer), sorted(TRAINERS), n=1)
                hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(TRAINERS)}"
                return Problem(("train", section, trainer), f"unknown trainer ({hint})")
    for trainer in dict.fromkeys([*params, *search]):
        problem = trainer_problem(trainer, params.get(trainer) or {}, search.get(trainer) or {})
        if problem is not None:
            return problem
    return None


def config_problem(config: dict) -> Problem | None:
    """A workflow config's trainer problems (configcheck.config_problem's ``checks``)."""
    return train_problem(config.get("train") or {})
