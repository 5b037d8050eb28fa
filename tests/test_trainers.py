"""pipeline/trainers.py: trainer traits, make_pipeline, adapt_params and the tie-stable KNN."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor

from vmpower.names import TREE_TRAINERS
from vmpower.pipeline import trainers
from vmpower.pipeline.trainers import TRAINERS, TieStableKNeighborsRegressor, nearest_k


def test_trainer_traits_match_the_estimators():
    assert list(TRAINERS) == ["LinearRegression", "SGDRegressor", "GradientBoostingRegressor", "XGBRegressor",
                              "KNeighborsRegressor"]
    assert {n for n, t in TRAINERS.items() if t.linear} == {"LinearRegression", "SGDRegressor"}
    for name, t in TRAINERS.items():
        params = getattr(importlib.import_module(t.module), t.cls)().get_params()
        assert ("random_state" in params) == t.seeded, name
        if t.threaded:
            assert "n_jobs" in params, name
    assert set(TREE_TRAINERS) <= set(TRAINERS)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_make_pipeline_sets_seed_and_single_thread(name):
    p = trainers.make_pipeline(name, {}, seed=42)
    assert [s for s, _ in p.steps] == ["scaler", "model"]
    est = p.named_steps["model"]
    assert type(est).__name__ == TRAINERS[name].cls
    params = est.get_params()
    if TRAINERS[name].seeded:
        assert params["random_state"] == 42
    if TRAINERS[name].threaded:
        assert params["n_jobs"] == 1


def test_make_pipeline_passes_params_and_refuses_an_unknown_trainer():
    p = trainers.make_pipeline("GradientBoostingRegressor", {"n_estimators": 7}, seed=1)
    assert p.named_steps["model"].n_estimators == 7
    with pytest.raises(ValueError, match="unknown trainer 'Forest'; known: LinearRegression, "):
        trainers.make_pipeline("Forest", {}, seed=1)


def test_adapt_params_caps_knn_neighbours_at_distinct_vectors():
    X = np.array([[0.0], [0.0], [1.0], [1.0], [2.0]])
    assert trainers.adapt_params("KNeighborsRegressor", {"n_neighbors": 5}, X) == (
        {"n_neighbors": 3}, {"n_neighbors": [5, 3]})
    assert trainers.adapt_params("KNeighborsRegressor", {"n_neighbors": 3}, X) == ({"n_neighbors": 3}, {})
    assert trainers.adapt_params("KNeighborsRegressor", {}, X[:2]) == ({"n_neighbors": 1}, {"n_neighbors": [5, 1]})
    assert trainers.adapt_params("KNeighborsRegressor", {"n_neighbors": 5}, X[:0]) == ({"n_neighbors": 5}, {})
    assert trainers.adapt_params("XGBRegressor", {"n_estimators": 5}, X) == ({"n_estimators": 5}, {})


def test_fit_pipeline_and_fit_notes():
    X = np.array([[0.0], [0.0], [1.0], [2.0]])
    y = np.array([1.0, 3.0, 5.0, 7.0])
    p, adapted = trainers.fit_pipeline("KNeighborsRegressor", {"n_neighbors": 10}, 0, X, y)
    assert adapted == {"n_neighbors": [10, 3]}
    assert trainers.fit_notes(p) == {"rows": 4, "distinct_training_vectors": 3}
    lin, adapted = trainers.fit_pipeline("LinearRegression", {}, 0, X, y)
    assert adapted == {} and trainers.fit_notes(lin) == {}


def test_knn_fit_merges_identical_vectors_into_their_mean_target():
    m = TieStableKNeighborsRegressor(n_neighbors=1).fit([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], [2.0, 10.0, 4.0])
    assert m.n_rows_seen_ == 3 and m.n_samples_fit_ == 2
    np.testing.assert_array_equal(m.predict([[1.0, 1.0], [0.1, 0.0]]), [3.0, 10.0])


def test_knn_ties_go_to_the_lower_training_index():
    # Query 0 is exactly 1 away from -1 and from +1; the lower (sorted) training index is -1.
    m = TieStableKNeighborsRegressor(n_neighbors=1).fit([[1.0], [-1.0], [5.0]], [100.0, 0.0, 7.0])
    assert m.predict([[0.0]])[0] == 0.0
    # k=2: 0 is nearest, then -2 and 2 tie at distance 2 and the lower index (-2) wins
    m = TieStableKNeighborsRegressor(n_neighbors=2).fit([[2.0], [-2.0], [0.0], [9.0]], [20.0, -20.0, 0.0, 90.0])
    # (training vectors are kept sorted: -2, 0, 2, 9)
    assert m.predict([[0.0]])[0] == pytest.approx((0.0 + -20.0) / 2)


def test_knn_equals_sklearn_when_there_are_no_ties():
    r = np.random.default_rng(0)
    X, Q = r.normal(size=(300, 3)), r.normal(size=(200, 3))
    y = X @ [1.0, -2.0, 0.5] + r.normal(size=300)
    ours = TieStableKNeighborsRegressor(n_neighbors=5).fit(X, y).predict(Q)
    ref = KNeighborsRegressor(n_neighbors=5).fit(X, y).predict(Q)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_knn_on_many_ties_matches_a_brute_force_onnx_rule():
    r = np.random.default_rng(1)
    X = r.integers(0, 4, size=(400, 2)).astype(float) * 0.25  # a coarse grid: ties everywhere
    y = r.normal(size=400)
    Q = r.integers(0, 5, size=(60, 2)).astype(float) * 0.2
    m = TieStableKNeighborsRegressor(n_neighbors=4).fit(X, y)
    T, ty = np.asarray(m._fit_X), np.asarray(m._y)
    d = np.sqrt(((Q[:, None, :] - T[None, :, :]) ** 2).sum(axis=2))
    order = np.lexsort((np.broadcast_to(np.arange(len(T)), d.shape), d), axis=1)[:, :4]
    np.testing.assert_allclose(m.predict(Q), ty[order].mean(axis=1), rtol=0, atol=1e-12)


def test_knn_predict_refuses_more_neighbours_than_points_and_unsupported_settings():
    m = TieStableKNeighborsRegressor(n_neighbors=3).fit([[0.0], [0.0], [1.0]], [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="n_neighbors = 3, n_samples_fit = 2"):
        m.predict([[0.0]])
    with pytest.raises(ValueError, match="weights='distance' is not supported"):
        TieStableKNeighborsRegressor(weights="distance").fit([[0.0]], [1.0])
    with pytest.raises(ValueError, match="only the Euclidean metric"):
        TieStableKNeighborsRegressor(p=1).fit([[0.0]], [1.0])


def test_nearest_k_keeps_k_per_row_ties_to_the_lower_index():
    Q = np.array([[0.0], [10.0]])
    T = np.array([[1.0], [-1.0], [0.0], [11.0]])
    rows = np.array([0, 0, 0, 1, 1, 1])
    cols = np.array([1, 0, 2, 3, 0, 1])
    r, c = nearest_k(Q, T, 2, rows, cols)
    assert r.tolist() == [0, 0, 1, 1]
    assert c.tolist() == [2, 0, 3, 0]  # row 0: distance 0 first, then 1 vs 1: index 0 beats 1
