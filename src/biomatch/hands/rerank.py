"""Test-time re-ranking of a query→gallery ranking from L2-normalized embeddings.

Both methods look at the test gallery (and, for k-reciprocal, at the other queries) as a
whole, so their numbers are a separate protocol row, never mixed with single-image ranking.
Every function returns a *score* matrix (higher = more similar), shape (n_query, n_gallery).

- `k_reciprocal_scores`: Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
  Encoding", CVPR 2017: Jaccard distance of k-reciprocal neighbour sets (with k1/2 expansion
  and k2 local query expansion), mixed with the original distance by `lam`.
- `query_expansion_scores`: average query expansion on the query side and database-side
  augmentation on the gallery side (each embedding averaged with its top-k gallery neighbours).
"""

from __future__ import annotations

import numpy as np

from biomatch.errors import InputError


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def k_reciprocal_scores(query: np.ndarray, gallery: np.ndarray, k1: int = 6, k2: int = 3,
                        lam: float = 0.3) -> np.ndarray:
    """Re-ranked similarity: −[(1−lam)·Jaccard + lam·original squared distance]."""
    q, g = _l2n(np.asarray(query, np.float64)), _l2n(np.asarray(gallery, np.float64))
    nq = len(q)
    feats = np.concatenate([q, g])
    n = len(feats)
    dist = np.clip(2.0 - 2.0 * feats @ feats.T, 0.0, None)  # squared Euclidean on the unit sphere
    original = dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)
    order = np.argsort(original, axis=1, kind="stable")
    k1 = min(k1, n - 1)

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = order[i, : k + 1]
        backward = order[forward, : k + 1]
        return forward[np.any(backward == i, axis=1)]

    weights = np.zeros((n, n))
    for i in range(n):
        rec = reciprocal(i, k1)
        expanded = rec
        for j in rec:
            cand = reciprocal(int(j), int(np.around(k1 / 2)))
            if len(np.intersect1d(cand, rec)) > 2 / 3 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        w = np.exp(-original[i, expanded])
        weights[i, expanded] = w / w.sum()
    if k2 > 1:
        weights = np.stack([weights[order[i, :k2]].mean(axis=0) for i in range(n)])
    # Jaccard distance between query rows and gallery rows of the weight matrix.
    wq, wg = weights[:nq], weights[nq:]
    inter = np.minimum(wq[:, None, :], wg[None, :, :]).sum(-1)
    union = np.maximum(wq[:, None, :], wg[None, :, :]).sum(-1)
    jaccard = 1.0 - inter / np.maximum(union, 1e-12)
    final = (1 - lam) * jaccard + lam * original[:nq, nq:]
    return -final


def query_expansion_scores(query: np.ndarray, gallery: np.ndarray, k: int = 2) -> np.ndarray:
    """Cosine after averaging each query with its top-k gallery matches and each gallery item
    with its top-k gallery neighbours (itself included)."""
    q, g = _l2n(np.asarray(query, np.float64)), _l2n(np.asarray(gallery, np.float64))
    k = max(1, min(k, len(g)))
    gg = g @ g.T
    g2 = _l2n(np.stack([g[np.argsort(-row, kind="stable")[:k]].mean(0) for row in gg]))
    qg = q @ g2.T
    q2 = _l2n(q + np.stack([g2[np.argsort(-row, kind="stable")[:k]].sum(0) for row in qg]))
    return q2 @ g2.T


def rerank_scores(query: np.ndarray, gallery: np.ndarray, method: str, k1: int = 6, k2: int = 3,
                  lam: float = 0.3) -> np.ndarray:
    """Dispatch by name: "k_reciprocal" (k1, k2, lam) or "query_expansion" (k = k2)."""
    if method == "k_reciprocal":
        return k_reciprocal_scores(query, gallery, k1, k2, lam)
    if method == "query_expansion":
        return query_expansion_scores(query, gallery, k2)
    raise InputError(f"unknown re-ranking {method!r}; use k_reciprocal or query_expansion")
