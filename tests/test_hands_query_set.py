"""Query-set re-ranking (biomatch.hands.query_set) against slow loops, the same-view XQDA that
feeds it, and its place at the end of run_method."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.config import MethodConfig
from biomatch.hands.query_set import mutual_neighbours, neighbour_weights, query_set_scores
from biomatch.hands.xqda import alternate_halves, row_zscore, same_view_block_scores
from biomatch.metrics.retrieval import ranks_from_scores


def _mutual_loop(s: np.ndarray, k: int) -> np.ndarray:
    n = len(s)
    top = [sorted((j for j in range(n) if j != i), key=lambda j: (-s[i, j], j))[:k] for i in range(n)]
    return np.array([[j in top[i] and i in top[j] for j in range(n)] for i in range(n)])


def _weights_loop(s: np.ndarray, k: int) -> np.ndarray:
    mutual = _mutual_loop(s, k)
    w = np.zeros_like(s)
    for i in range(len(s)):
        others = [s[i, j] for j in range(len(s)) if j != i]
        mu, sd = np.mean(others), np.std(others)
        for j in np.where(mutual[i])[0]:
            w[i, j] = np.exp((s[i, j] - mu) / (sd + 1e-12))
        if w[i].sum():
            w[i] /= w[i].sum()
    return w


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_mutual_neighbours_and_weights_match_loops(k):
    rng = np.random.default_rng(k)
    s = rng.normal(size=(12, 12))
    assert np.array_equal(mutual_neighbours(s, k), _mutual_loop(s, k))
    w = neighbour_weights(s, k)
    assert np.allclose(w, _weights_loop(s, k))
    sums = w.sum(1)
    assert np.allclose(sums[sums > 0], 1.0)
    assert not np.diag(w).any()


def test_rescoring_is_the_zscore_plus_the_weighted_neighbour_rows():
    rng = np.random.default_rng(3)
    scores, sim = rng.normal(size=(9, 6)), rng.normal(size=(9, 9))
    out = query_set_scores(scores, sim, k=3, weight=1.5)
    z, w = row_zscore(scores), _weights_loop(sim, 3)
    for i in range(9):
        assert np.allclose(out[i], z[i] + 1.5 * sum(w[i, j] * z[j] for j in range(9)))
    # weight 0 keeps every query's ranking; relabelling the queries relabels the output
    assert np.array_equal(np.argsort(query_set_scores(scores, sim, 3, 0.0), 1), np.argsort(scores, 1))
    perm = rng.permutation(9)
    assert np.allclose(query_set_scores(scores[perm], sim[np.ix_(perm, perm)], 3, 1.5), out[perm])


def test_a_poorly_ranked_query_borrows_its_siblings_ranking():
    """Subject A has three dorsal queries; one of them ranks A's palm last on its own."""
    rng = np.random.default_rng(0)
    g_ids = ["A", "B", "C", "D"]
    q_ids = ["A", "A", "A", "B", "B", "C", "C"]
    scores = rng.normal(scale=0.1, size=(7, 4))
    for i, ident in enumerate(q_ids):
        scores[i, g_ids.index(ident)] += 1.0
    scores[2] = [-1.0, 1.0, 0.5, 0.0]  # the poor query: A's palm last
    sim = np.array([[q == r for r in q_ids] for q in q_ids], float) + rng.normal(scale=0.05, size=(7, 7))
    before = ranks_from_scores(scores, q_ids, g_ids).first_rank
    after = ranks_from_scores(query_set_scores(scores, sim, k=2, weight=1.5), q_ids, g_ids).first_rank
    assert before[2] == 4 and after[2] == 1
    assert list(after) == [1] * 7


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="square"):
        mutual_neighbours(np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="k must be"):
        mutual_neighbours(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="score rows"):
        query_set_scores(np.zeros((3, 5)), np.zeros((4, 4)), 1, 1.0)
    with pytest.raises(ValueError, match="weight must be"):
        query_set_scores(np.zeros((3, 5)), np.zeros((3, 3)), 1, -1.0)
    assert not mutual_neighbours(np.zeros((1, 1)), 3).any()
    with pytest.raises(ValueError, match="needs mode: frozen"):
        MethodConfig(name="t", backbones=["tiny_cnn"], mode="finetune", query_neighbours=5)


def test_same_view_xqda_finds_each_images_siblings():
    """Subject clusters under a strong shared nuisance direction: the same-view XQDA, fitted on
    other subjects, puts every test image's nearest other image in its own subject."""
    rng = np.random.default_rng(1)

    def images(n_subjects: int, per: int, prefix: str) -> tuple[np.ndarray, list[str]]:
        centres = rng.normal(size=(n_subjects, 6))
        x = np.repeat(centres, per, 0) + 0.15 * rng.normal(size=(n_subjects * per, 6))
        x = np.concatenate([x, 3.0 * rng.normal(size=(len(x), 4))], 1)  # nuisance
        return x, [f"{prefix}{i // per}" for i in range(len(x))]

    train, train_ids = images(30, 4, "t")
    test, test_ids = images(8, 3, "q")
    s = same_view_block_scores(train, train_ids, test, [10], pca_dims=10, regularization=0.01)
    assert s.shape == (24, 24)
    np.fill_diagonal(s, -np.inf)
    assert all(test_ids[j] == test_ids[i] for i, j in enumerate(s.argmax(1)))
    assert alternate_halves(train_ids).sum() == 60
