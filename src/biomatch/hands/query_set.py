"""Query-set re-ranking: each dorsal query's gallery scores borrow from its mutual nearest
neighbours among the other test queries.

Why: a subject's dorsal photos resemble each other far more than they resemble any palm
(dorsal→dorsal nearest neighbour is the same subject for ~95 % of test queries with a
same-view XQDA, against ~78 % R@1 dorsal→palmar). A query whose own palm ranking is poor
(a bent finger, a blurred shot) is then pulled toward its siblings' rankings. Only features
and the training subjects' labels are read, never a test label, but every query's ranking now
depends on the other test queries: a separate protocol (a batch of queries matched together,
as in re-identification's re-ranking rows), reported as its own row beside the single-query one.

Written by hand: it is a few lines of linear algebra on a score matrix; the k-reciprocal
re-ranking in `biomatch.hands.rerank` works on one embedding, not on fused scores.
Pure functions.
"""

from __future__ import annotations

import numpy as np

from biomatch.hands.xqda import row_zscore


def mutual_neighbours(similarity: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n, n): i and j are each among the other's `k` most similar (self excluded).

    >>> s = np.array([[0, 3, 1], [3, 0, 2], [1, 2, 0]], float)
    >>> mutual_neighbours(s, 1).astype(int).tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    s = np.asarray(similarity, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"query similarity must be square, got shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = s.shape[0]
    if n < 2:
        return np.zeros((n, n), bool)
    s = s.copy()
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, : min(k, n - 1)]
    near = np.zeros((n, n), bool)
    np.put_along_axis(near, top, True, axis=1)
    return near & near.T


def neighbour_weights(similarity: np.ndarray, k: int) -> np.ndarray:
    """Row-stochastic (n, n) weights over each query's mutual neighbours, ∝ exp of the
    similarity z-scored over the row's other queries (rows without a neighbour are zero)."""
    s = np.asarray(similarity, np.float64)
    mutual = mutual_neighbours(s, k)
    off = ~np.eye(len(s), dtype=bool)
    others = np.where(off, s, np.nan)
    z = (s - np.nanmean(others, 1, keepdims=True)) / (np.nanstd(others, 1, keepdims=True) + 1e-12)
    w = np.where(mutual, np.exp(np.where(mutual, z, 0.0)), 0.0)
    total = w.sum(1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def query_set_scores(scores: np.ndarray, similarity: np.ndarray, k: int, weight: float) -> np.ndarray:
    """z(scores) + weight × (neighbour-weighted mean of the mutual neighbours' z(scores)).

    `scores` is (n_query, n_gallery), higher = more similar; `similarity` is the (n_query,
    n_query) query-to-query similarity. A query without a mutual neighbour keeps its z-scored row.

    >>> sc = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 3.0, 0.0]])
    >>> sim = np.array([[0, 1, 5], [1, 0, 0], [5, 0, 0]], float)
    >>> int(np.argmax(query_set_scores(sc, sim, k=1, weight=2.0)[0]))  # query 0 borrows from query 2
    1
    """
    sc = np.asarray(scores, np.float64)
    if sc.ndim != 2 or sc.shape[0] != np.shape(similarity)[0]:
        raise ValueError(f"{sc.shape[0] if sc.ndim == 2 else '?'} score rows for a "
                         f"{np.shape(similarity)} query similarity")
    if weight < 0:
        raise ValueError(f"query-set weight must be >= 0, got {weight}")
    z = row_zscore(sc)
    return z + weight * neighbour_weights(similarity, k) @ z
