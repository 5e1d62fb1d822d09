"""Dorsal → palm feature translation: a ridge map, fitted on the training subjects, from a dorsal
photo's whitened frozen features to the mean of its subject's palm features; a query is then
compared with each gallery palm by the cosine of (its translated features, the palm's).

Why: XQDA (`biomatch.hands.xqda`) models the distribution of cross-view *differences*; a
translation predicts what the subject's palm should look like from the back of the hand, a
different closed-form view of the same features whose errors differ again. On the tuning seeds
its score alone ranks worse than XQDA's (mean rank 5.9 vs 6.2 per the summed blocks, R@1 0.45 vs
0.61), but fused with the heads and XQDA at weight 0.1 it lowered the mean rank 2.435 → 2.373.
Ridge regression is one line of linear algebra (scikit-learn's Ridge would add nothing but an
import), so it is written here; tests check it against the normal equations and a slow loop.
Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biomatch.hands.xqda import Whitening, whitened_block_sum


def fit_translation(queries: np.ndarray, gallery: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str],
                    regularization: float) -> np.ndarray:
    """(d, d) ridge map W minimizing Σ_i ‖q_i W − ḡ(id_i)‖² + λ‖W‖², where ḡ(s) is the mean
    gallery-view row of subject s; queries of subjects without a gallery row are left out.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]]); g = np.array([[0.0, 2.0], [3.0, 0.0]])
    >>> np.round(fit_translation(q, g, ["a", "b"], ["a", "b"], 0.0), 6).tolist()
    [[0.0, 2.0], [3.0, 0.0]]
    """
    if regularization < 0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    qid, gid = np.asarray(query_ids), np.asarray(gallery_ids)
    if q.shape[0] != qid.shape[0] or g.shape[0] != gid.shape[0] or q.shape[1] != g.shape[1]:
        raise ValueError("one id per feature row, and both views of the same width")
    means = {ident: g[gid == ident].mean(0) for ident in np.unique(gid)}
    keep = np.array([ident in means for ident in qid], bool)
    if not keep.any():
        raise ValueError("translation needs training subjects with both views")
    a = q[keep]
    target = np.stack([means[ident] for ident in qid[keep]])
    return np.linalg.solve(a.T @ a + regularization * np.eye(a.shape[1]), a.T @ target)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def translation_block_scores(train: np.ndarray, train_ids: Sequence[str], train_is_gallery: np.ndarray,
                             queries: np.ndarray, gallery: np.ndarray, widths: Sequence[int], pca_dims: int,
                             regularization: float, whitenings: Sequence[Whitening] | None = None) -> np.ndarray:
    """Σ over feature blocks (one per backbone) of the row-z-scored cosine between each query's
    translated features and each gallery row, every block whitened (PCA to `pca_dims`, fitted on
    the training rows of both views, as XQDA's; or by `whitenings`) and translated on its own."""

    def translated_cosine(t: np.ndarray, ids: np.ndarray, view: np.ndarray, q: np.ndarray, g: np.ndarray) -> np.ndarray:
        w = fit_translation(t[~view], t[view], ids[~view], ids[view], regularization)
        return _unit_rows(q @ w) @ _unit_rows(g).T

    return whitened_block_sum(train, train_ids, train_is_gallery, queries, gallery, widths, pca_dims,
                              translated_cosine, whitenings)
