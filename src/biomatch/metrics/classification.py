"""Distance-based classifiers on embeddings (nearest class mean, k-NN), scikit-learn style,
plus accuracy, per-class accuracy and the confusion matrix.

Both classifiers take a *distance* name: "euclidean" or "cosine" (1 − cosine similarity).
On L2-normalized embeddings the two rank neighbours identically. Ties are broken
deterministically: k-NN votes tie → the class of the nearest voter among the tied classes;
equal distances → the lower training index (stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biomatch.errors import InputError, StateError

DISTANCES = ("euclidean", "cosine")


def _as_matrix(x: np.ndarray | Sequence, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (n_samples, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} is empty")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{name} has dimension {arr.shape[1]}, the classifier was fitted on {dim}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _as_labels(y: np.ndarray | Sequence, n: int, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name} must be 1-D with {n} labels, got shape {arr.shape}")
    return arr


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """(len(a), len(b)) distances (lower = closer)."""
    if metric == "euclidean":
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(d2, 0.0))
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - an @ bn.T
    raise InputError(f"unknown distance {metric!r}; choose from {', '.join(DISTANCES)}")


class _DistanceClassifier:
    """Shared `score` and the fitted-state check."""

    metric: str
    classes_: np.ndarray
    _dim: int

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise StateError(f"{type(self).__name__} is not fitted: call fit(X, y) first")

    def predict(self, X) -> np.ndarray:
        raise NotImplementedError

    def score(self, X, y) -> float:
        """Accuracy of `predict(X)` against `y`."""
        pred = self.predict(X)
        return accuracy(_as_labels(y, len(pred)), pred)


class NearestClassMean(_DistanceClassifier):
    """Each class is represented by the mean of its training embeddings (re-normalized to unit
    length with `normalize_means`, the natural choice for cosine on a sphere)."""

    def __init__(self, metric: str = "euclidean", normalize_means: bool = False) -> None:
        if metric not in DISTANCES:
            raise InputError(f"unknown distance {metric!r}; choose from {', '.join(DISTANCES)}")
        self.metric, self.normalize_means = metric, normalize_means

    def fit(self, X, y) -> NearestClassMean:
        X = _as_matrix(X, "X")
        y = _as_labels(y, len(X))
        self.classes_, inverse = np.unique(y, return_inverse=True)
        means = np.zeros((len(self.classes_), X.shape[1]))
        np.add.at(means, inverse, X)
        means /= np.bincount(inverse)[:, None]
        if self.normalize_means:
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        self.means_, self._dim = means, X.shape[1]
        return self

    def decision_distances(self, X) -> np.ndarray:
        """(n, n_classes) distance of each row to each class mean."""
        self._check_fitted()
        return pairwise_distances(_as_matrix(X, "X", self._dim), self.means_, self.metric)

    def predict(self, X) -> np.ndarray:
        d = self.decision_distances(X)  # checks fitted state and shape first
        return self.classes_[np.argmin(d, axis=1)]


class KNNClassifier(_DistanceClassifier):
    """Majority vote of the k nearest training embeddings (`weights="distance"` weighs each
    vote by 1/distance). Predictions are computed in chunks to bound memory."""

    def __init__(self, k: int = 5, metric: str = "euclidean", weights: str = "uniform",
                 chunk: int = 2048) -> None:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if metric not in DISTANCES:
            raise InputError(f"unknown distance {metric!r}; choose from {', '.join(DISTANCES)}")
        if weights not in ("uniform", "distance"):
            raise InputError(f"weights must be 'uniform' or 'distance', got {weights!r}")
        self.k, self.metric, self.weights, self.chunk = int(k), metric, weights, chunk

    def fit(self, X, y) -> KNNClassifier:
        X = _as_matrix(X, "X")
        y = _as_labels(y, len(X))
        if self.k > len(X):
            raise InputError(f"k={self.k} is larger than the {len(X)} training samples")
        self.classes_, self._y = np.unique(y, return_inverse=True)
        self._X, self._dim = X, X.shape[1]
        return self

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices) of the k nearest training rows, nearest first."""
        self._check_fitted()
        X = _as_matrix(X, "X", self._dim)
        dist, idx = [], []
        for lo in range(0, len(X), self.chunk):
            d = pairwise_distances(X[lo : lo + self.chunk], self._X, self.metric)
            order = np.argsort(d, axis=1, kind="stable")[:, : self.k]
            idx.append(order)
            dist.append(np.take_along_axis(d, order, axis=1))
        return np.concatenate(dist), np.concatenate(idx)

    def predict(self, X) -> np.ndarray:
        dist, idx = self.kneighbors(X)
        votes_for = self._y[idx]  # (n, k) class indices, nearest first
        w = np.ones_like(dist) if self.weights == "uniform" else 1.0 / np.maximum(dist, 1e-12)
        votes = np.zeros((len(idx), len(self.classes_)))
        np.add.at(votes, (np.arange(len(idx))[:, None], votes_for), w)
        best = votes.max(1, keepdims=True)
        tied = np.isclose(votes, best)
        # among tied classes, the one whose first voter is nearest
        rank_of_class = np.full(votes.shape, self.k, dtype=np.int64)
        for j in range(self.k - 1, -1, -1):
            rank_of_class[np.arange(len(idx)), votes_for[:, j]] = j
        rank_of_class[~tied] = self.k + 1
        return self.classes_[np.argmin(rank_of_class, axis=1)]


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise InputError(f"labels and predictions must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise InputError("no labels to score")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, classes: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, classes): row = true class, column = predicted class, counts."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    accuracy(y_true, y_pred)  # validates shapes
    classes_arr = np.unique(np.concatenate([y_true, y_pred])) if classes is None else np.asarray(classes)
    index = {c: i for i, c in enumerate(classes_arr.tolist())}
    missing = sorted({v for v in np.concatenate([y_true, y_pred]).tolist() if v not in index}, key=str)
    if missing:
        raise InputError(f"labels not among the given classes: {missing[:5]}")
    m = np.zeros((len(classes_arr), len(classes_arr)), dtype=np.int64)
    np.add.at(m, ([index[v] for v in y_true.tolist()], [index[v] for v in y_pred.tolist()]), 1)
    return m, classes_arr


def per_class_accuracy(y_true, y_pred) -> dict:
    """Recall of each true class: {class: fraction of its samples predicted correctly}."""
    m, classes = confusion_matrix(y_true, y_pred)
    support = m.sum(1)
    return {c: float(m[i, i] / support[i]) for i, c in enumerate(classes.tolist()) if support[i] > 0}


def classification_report(train_x, train_y, test_x, test_y, k: int = 5,
                          metric: str = "euclidean") -> dict[str, float]:
    """k-NN and NCM accuracy of test embeddings against a fitted training set (DESIGN names)."""
    knn = KNNClassifier(k=min(k, len(train_x)), metric=metric).fit(train_x, train_y)
    ncm = NearestClassMean(metric=metric).fit(train_x, train_y)
    return {"knn_accuracy": knn.score(test_x, test_y), "ncm_accuracy": ncm.score(test_x, test_y),
            "knn1_accuracy": KNNClassifier(k=1, metric=metric).fit(train_x, train_y).score(test_x, test_y)}
