"""The trainers: their estimators, how their parameters adapt to small data, and a nearest-
neighbour regressor whose ties break the same way as in its ONNX graph.

KNN and ties: real data is full of identical feature vectors (idle phases, utilisation in
0.25 % steps), so the k-th and (k+1)-th nearest training rows are often equally far away.
scikit-learn's kd-tree/brute searches then pick one by tree layout or by rounding of the
||x||^2 - 2xy + ||y||^2 trick; the exported ONNX graph computes sqrt(sum((x - t)^2)) per
training row and takes TopK, which the ONNX spec breaks towards the lower index. A native
model that picks other neighbours than its ONNX file differs from it by watts.
TieStableKNeighborsRegressor predicts with exactly the ONNX rule (same distance formula, the
lower training index wins a tie), so both runtimes answer alike, ties or not.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np
from sklearn.neighbors import KNeighborsRegressor



class Trainer(NamedTuple):
    """A trainer's traits: where its estimator class is, and what vmpower sets for every fit."""

    module: str
    cls: str
    linear: bool  # Kepler v0.7 reads weights of linear models only (kepler_weights.py)
    seeded: bool  # takes random_state (set from train.seed)
    threaded: bool  # takes n_jobs (always 1)


TRAINERS = {
    "LinearRegression": Trainer("sklearn.linear_model", "LinearRegression", linear=True, seeded=False, threaded=False),
    "SGDRegressor": Trainer("sklearn.linear_model", "SGDRegressor", linear=True, seeded=True, threaded=False),
    "GradientBoostingRegressor": Trainer("sklearn.ensemble", "GradientBoostingRegressor", linear=False, seeded=True,
                                         threaded=False),
    "XGBRegressor": Trainer("xgboost", "XGBRegressor", linear=False, seeded=True, threaded=True),
    "KNeighborsRegressor": Trainer("vmpower.pipeline.trainers", "TieStableKNeighborsRegressor", linear=False,
                                   seeded=False, threaded=True),
}

# Query rows per block, and cells (rows x training rows) of a screening block: bound memory
# (blocks of rows, not a loop over rows).
_BLOCK_ROWS = 50_000
_BLOCK_CELLS = 4_000_000


class TieStableKNeighborsRegressor(KNeighborsRegressor):
    """KNeighborsRegressor (uniform weights) whose predict() follows the ONNX graph skl2onnx
    writes for it: Euclidean distance as sqrt of the sum of squared differences, the k smallest
    with ties going to the lower training index (ONNX TopK). kneighbors() is scikit-learn's.

    fit() keeps each distinct training vector once, with the mean target of its copies: the
    neighbours are k distinct operating points, not k copies of one idle vector picked by row
    order (held-out MAE on the real runs: 0.2101 W with copies, 0.2104 W without), and the
    training points (sorted by np.unique) no longer depend on the order of the rows."""

    def fit(self, X, y):
        if self.weights != "uniform":
            raise ValueError(f"KNeighborsRegressor: weights={self.weights!r} is not supported (uniform only)")
        if self.metric not in ("minkowski", "euclidean") or (self.metric == "minkowski" and self.p != 2):
            raise ValueError("KNeighborsRegressor: only the Euclidean metric is supported")
        X, y = np.asarray(X, dtype="float64"), np.asarray(y, dtype="float64")
        # Identical training vectors become one point with their mean target (recorded by train).
        self.n_rows_seen_ = len(X)
        X, inverse = np.unique(X, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        y = np.bincount(inverse, weights=y) / np.bincount(inverse)
        return super().fit(X, y)

    def predict(self, X):
        X = np.asarray(X, dtype="float64")
        train = np.asarray(self._fit_X, dtype="float64")
        y = np.asarray(self._y, dtype="float64")
        k = int(self.n_neighbors)
        if k > len(train):
            raise ValueError(f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                             f"n_samples_fit = {len(train)}")
        out = np.empty(len(X))
        for start in range(0, len(X), _BLOCK_ROWS):
            block = X[start:start + _BLOCK_ROWS]
            rows, cols = self._candidates(block, train, k)
            rows, cols = nearest_k(block, train, k, rows, cols)
            out[start:start + _BLOCK_ROWS] = np.bincount(rows, weights=y[cols], minlength=len(block)) / k
        return out

    def _candidates(self, Q, T, k):
        """(query row, training row) pairs that surely hold each row's k nearest (ONNX's rule).
        scikit-learn's search is fast but rounds distances its own way (|q|^2 - 2q.t + |t|^2), so
        it only screens: its 2k nearest hold them unless its 2k-th distance is within a generous
        rounding bound of its k-th (many ties); those rows are screened against every row."""
        k2 = min(2 * k, len(T))
        dist, ind = super().kneighbors(Q, k2)
        d2 = dist**2
        bound = 1e-9 * ((Q * Q).sum(axis=1) + (T * T).sum(axis=1).max()) + 1e-300
        done = (d2[:, -1] > d2[:, k - 1] + 2.0 * bound) | (k2 == len(T))
        rows = np.repeat(np.flatnonzero(done), k2)
        cols = ind[done].ravel()
        tied = np.flatnonzero(~done)
        for start in range(0, len(tied), max(1, _BLOCK_CELLS // len(T))):
            part = tied[start:start + max(1, _BLOCK_CELLS // len(T))]
            approx = (Q[part] * Q[part]).sum(axis=1)[:, None] - 2.0 * (Q[part] @ T.T) + (T * T).sum(axis=1)[None, :]
            r, c = np.nonzero(approx <= (d2[part, k - 1] + 3.0 * bound[part])[:, None])
            rows, cols = np.concatenate([rows, part[r]]), np.concatenate([cols, c])
        return rows, cols


def nearest_k(Q: np.ndarray, T: np.ndarray, k: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of the candidate pairs (query row, training row), the k nearest per query row as ONNX
    finds them: distance sqrt(sum_j (q_j - t_j)^2) summed feature by feature, ties to the lower
    training index (TopK). Returns the kept pairs, k per query row."""
    d2 = np.zeros(len(rows))
    for j in range(T.shape[1]):  # feature by feature, in the graph's order
        d2 += (Q[rows, j] - T[cols, j]) ** 2
    order = np.lexsort((cols, np.sqrt(d2), rows))
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, rows)  # where each query row's candidates start
    keep = np.arange(len(rows)) - first < k
    return rows[keep], cols[keep]


def make_pipeline(trainer: str, params: dict, seed: int):
    """StandardScaler + estimator, single-threaded so results do not depend on core count."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; known: {', '.join(TRAINERS)}")
    traits = TRAINERS[trainer]
    kwargs = dict(params)
    if traits.seeded:
        kwargs["random_state"] = seed
    if traits.threaded:
        kwargs["n_jobs"] = 1
    estimator = getattr(importlib.import_module(traits.module), traits.cls)(**kwargs)
    return Pipeline([("scaler", StandardScaler()), ("model", estimator)])


def adapt_params(trainer: str, params: dict, X: np.ndarray) -> tuple[dict, dict]:
    """Parameters a fit on the rows X can take, and what was changed ({param: [asked, used]}):
    a KNN never asks for more neighbours than there are distinct training vectors."""
    if trainer == "KNeighborsRegressor" and len(X):
        k = int(params.get("n_neighbors", 5))
        n = len(np.unique(X, axis=0)) if k > 1 else 1
        if k > n:
            return {**params, "n_neighbors": n}, {"n_neighbors": [k, n]}
    return dict(params), {}


def fit_pipeline(trainer: str, params: dict, seed: int, X: np.ndarray, y: np.ndarray):
    """make_pipeline with the parameters adapted to the rows, fitted. Returns (pipeline, adapted)."""
    used, adapted = adapt_params(trainer, params, X)
    return make_pipeline(trainer, used, seed).fit(X, y), adapted


def fit_notes(pipeline) -> dict:
    """What a fit did to its rows that the parameters do not say (KNN: copies averaged)."""
    model = pipeline.steps[-1][1]
    if isinstance(model, TieStableKNeighborsRegressor):
        return {"rows": int(model.n_rows_seen_), "distinct_training_vectors": int(model.n_samples_fit_)}
    return {}
