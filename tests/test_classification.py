"""NCM and k-NN classifiers against brute-force loops and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from biomatch.errors import InputError, StateError
from biomatch.metrics.classification import (KNNClassifier, NearestClassMean, accuracy, classification_report,
                                             confusion_matrix, per_class_accuracy)


def _blobs(seed: int, n_classes: int = 5, per_class: int = 12, dim: int = 8, spread: float = 1.5,
           draw: int = 0):
    """Gaussian classes around fixed centres (`seed`); `draw` picks an independent sample."""
    centers = np.random.default_rng(seed).normal(size=(n_classes, dim))
    rng = np.random.default_rng([seed, draw + 1])
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] + spread * rng.normal(size=(len(y), dim))
    return x, y


def _dist(a, b, metric):
    if metric == "euclidean":
        return float(np.sqrt(((a - b) ** 2).sum()))
    return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _brute_ncm(xtr, ytr, xte, metric):
    classes = sorted(set(ytr.tolist()))
    means = {c: xtr[ytr == c].mean(0) for c in classes}
    return np.array([min(classes, key=lambda c: (_dist(q, means[c], metric), c)) for q in xte])


def _brute_knn(xtr, ytr, xte, k, metric):
    """The documented rule, written as plainly as possible: most votes; ties → the tied class
    whose nearest voter comes first."""
    out = []
    for q in xte:
        order = sorted(range(len(xtr)), key=lambda i: (_dist(q, xtr[i], metric), i))[:k]
        votes: dict[int, int] = {}
        for i in order:
            votes[int(ytr[i])] = votes.get(int(ytr[i]), 0) + 1
        best = max(votes.values())
        out.append(next(int(ytr[i]) for i in order if votes[int(ytr[i])] == best))
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ncm_matches_brute_force_and_sklearn(metric, seed):
    xtr, ytr = _blobs(seed)
    xte, _ = _blobs(seed, draw=1)
    pred = NearestClassMean(metric=metric).fit(xtr, ytr).predict(xte)
    np.testing.assert_array_equal(pred, _brute_ncm(xtr, ytr, xte, metric))
    if metric == "euclidean":
        np.testing.assert_array_equal(pred, NearestCentroid().fit(xtr, ytr).predict(xte))
    # the test is informative: predictions are neither constant nor all correct
    assert 1 < len(np.unique(pred))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_matches_brute_force_and_sklearn(metric, k):
    xtr, ytr = _blobs(3, spread=2.5)
    xte, yte = _blobs(3, spread=2.5, draw=1)
    pred = KNNClassifier(k=k, metric=metric).fit(xtr, ytr).predict(xte)
    np.testing.assert_array_equal(pred, _brute_knn(xtr, ytr, xte, k, metric))
    sk = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(xtr, ytr)
    # sklearn breaks vote ties by the smaller label; compare on rows without a tie
    _, idx = sk.kneighbors(xte)
    counts = np.stack([np.bincount(ytr[row], minlength=5) for row in idx])
    untied = (counts == counts.max(1, keepdims=True)).sum(1) == 1
    assert untied.sum() > len(xte) // 2
    np.testing.assert_array_equal(pred[untied], sk.predict(xte)[untied])
    acc = KNNClassifier(k=k, metric=metric).fit(xtr, ytr).score(xte, yte)
    assert 0.3 < acc < 1.0 and acc == pytest.approx(float(np.mean(pred == yte)))


def test_knn_distance_weights_match_sklearn():
    xtr, ytr = _blobs(5, spread=2.5)
    xte, _ = _blobs(5, spread=2.5, draw=1)
    ours = KNNClassifier(k=7, weights="distance").fit(xtr, ytr).predict(xte)
    sk = KNeighborsClassifier(n_neighbors=7, weights="distance", algorithm="brute").fit(xtr, ytr).predict(xte)
    np.testing.assert_array_equal(ours, sk)


def test_vote_tie_goes_to_nearest_voter_and_string_labels_work():
    xtr = np.array([[0.0], [1.0], [3.0], [5.0]])
    ytr = np.array(["b", "a", "a", "b"])
    # from 0.4: neighbours 0 (b, 0.4), 1 (a, 0.6) → 1:1 tie → b, the nearer voter
    assert KNNClassifier(k=2).fit(xtr, ytr).predict([[0.4]]).tolist() == ["b"]
    assert KNNClassifier(k=2).fit(xtr, ytr).predict([[0.6]]).tolist() == ["a"]
    # class means: a = 2.0, b = 2.5
    assert NearestClassMean().fit(xtr, ytr).predict([[2.0], [2.4]]).tolist() == ["a", "b"]


def test_chunked_prediction_equals_unchunked():
    xtr, ytr = _blobs(7)
    xte, _ = _blobs(7, draw=1)
    a = KNNClassifier(k=3, chunk=7).fit(xtr, ytr).predict(xte)
    b = KNNClassifier(k=3).fit(xtr, ytr).predict(xte)
    np.testing.assert_array_equal(a, b)


def test_confusion_and_per_class_accuracy_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 4, 60))
    m, classes = confusion_matrix(y, p)
    np.testing.assert_array_equal(m, sk_confusion(y, p))
    assert classes.tolist() == [0, 1, 2, 3]
    per = per_class_accuracy(y, p)
    for c in range(4):
        assert per[c] == pytest.approx(np.mean(p[y == c] == c))
    assert accuracy(y, p) == pytest.approx(np.mean(y == p))


def test_report_names_and_values():
    xtr, ytr = _blobs(9, spread=0.1)
    xte, yte = _blobs(9, spread=0.1, draw=1)
    rep = classification_report(xtr, ytr, xte, yte, k=3)
    assert set(rep) == {"knn_accuracy", "ncm_accuracy", "knn1_accuracy"}
    assert rep["knn_accuracy"] == 1.0 and rep["ncm_accuracy"] == 1.0


def test_bad_inputs_raise_clear_errors():
    x, y = _blobs(0)
    with pytest.raises(StateError, match="not fitted"):
        KNNClassifier().predict(x)
    with pytest.raises(StateError, match="not fitted"):
        NearestClassMean().predict(x)
    with pytest.raises(InputError, match="empty"):
        NearestClassMean().fit(np.zeros((0, 3)), [])
    with pytest.raises(InputError, match="2-D"):
        KNNClassifier().fit(x[0], y[:1])
    with pytest.raises(InputError, match="labels"):
        KNNClassifier().fit(x, y[:-1])
    with pytest.raises(InputError, match="dimension"):
        KNNClassifier(k=1).fit(x, y).predict(x[:, :3])
    with pytest.raises(InputError, match="larger than"):
        KNNClassifier(k=1000).fit(x, y)
    with pytest.raises(InputError, match="NaN"):
        NearestClassMean().fit(np.full((2, 2), np.nan), [0, 1])
    with pytest.raises(InputError, match="positive integer"):
        KNNClassifier(k=0)
    with pytest.raises(InputError, match="unknown distance"):
        NearestClassMean(metric="manhattan")
    with pytest.raises(InputError):
        accuracy([1, 2], [1])
