"""Gallery-side score normalization for dorsal→palmar identification (pure functions).

Why: the worst-ranked queries of the best method are mostly beaten by a few "hub" palms that
score high against every dorsal photo. Subtracting from each gallery image's score the mean of
its k highest scores against a cohort of training dorsal images (subjects disjoint from the
test) removes that bias, as cohort/t-norm does in speaker verification. Adding the mean score of
the gallery image's identity (all its enrolled palms) makes one lucky palm count less than a
subject whose palms agree. Both read only training images and the gallery's enrolment labels,
so they stay in the main protocol (unlike re-ranking over the other test queries).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_blocks(emb: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    """Column blocks of a fused embedding (one per backbone); their dot products sum to the
    fused cosine.

    >>> [b.shape for b in split_blocks(np.zeros((2, 5)), [2, 3])]
    [(2, 2), (2, 3)]
    """
    if sum(widths) != emb.shape[1]:
        raise ValueError(f"block widths {list(widths)} do not add up to the embedding width {emb.shape[1]}")
    return np.split(emb, np.cumsum(widths)[:-1], axis=1)


def cohort_corrected_scores(queries: Sequence[np.ndarray], gallery: Sequence[np.ndarray],
                            cohort: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Σ_b (q_b·g_b − mean of the k highest c_b·g_b over cohort rows c), per (query, gallery)
    pair; b runs over embedding blocks (backbones), each normalized on its own.

    >>> q, g, c = [np.eye(2)], [np.eye(2)], [np.array([[1.0, 0.0], [1.0, 0.0]])]
    >>> cohort_corrected_scores(q, g, c, k=1).tolist()
    [[0.0, 0.0], [-1.0, 1.0]]
    """
    if not (len(queries) == len(gallery) == len(cohort)) or not queries:
        raise ValueError("one query, gallery and cohort block per backbone")
    if k < 1:
        raise ValueError(f"cohort k must be >= 1, got {k}")
    out = np.zeros((queries[0].shape[0], gallery[0].shape[0]))
    for q, g, c in zip(queries, gallery, cohort):
        if c.shape[0] == 0:
            raise ValueError("empty cohort: no training dorsal images to normalize against")
        kk = min(k, c.shape[0])
        hub = -np.sort(-(c @ g.T), axis=0)[:kk].mean(axis=0)  # (n_gallery,)
        out += q @ g.T - hub[None, :]
    return out


def identity_mean_boost(scores: np.ndarray, gallery_ids: Sequence[str], weight: float) -> np.ndarray:
    """scores + weight × (mean score of the same gallery identity), per query row.

    >>> identity_mean_boost(np.array([[1.0, 3.0, 0.0]]), ["a", "a", "b"], 0.5).tolist()
    [[2.0, 4.0, 0.0]]
    """
    ids = np.asarray(gallery_ids)
    if ids.shape[0] != scores.shape[1]:
        raise ValueError(f"{ids.shape[0]} gallery ids for {scores.shape[1]} gallery columns")
    out = scores.astype(np.float64, copy=True)
    for ident in np.unique(ids):
        cols = ids == ident
        out[:, cols] += weight * scores[:, cols].mean(axis=1, keepdims=True)
    return out
