"""Cross-view Quadratic Discriminant Analysis (XQDA; Liao et al., "Person re-identification by
Local Maximal Occurrence representation and metric learning", CVPR 2015) on frozen features.

Why: the dorsal→palmar heads are small MLPs trained by SGD; XQDA is a closed-form metric from
the same training images (a subspace where cross-view different-subject differences are large
and same-subject differences small, then a Gaussian log-likelihood ratio), so its errors differ
from the heads' and a score fusion of the two ranks better than either (issue #14 §4). No
maintained library implements it (metric-learn has KISSME-like and LMNN metrics but none for two
views), so it is written here, with loop-checked tests. Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla


@dataclass(frozen=True)
class Whitening:
    """PCA whitening fitted on training features: (x − mean) @ projection has unit variance."""

    mean: np.ndarray
    projection: np.ndarray  # (d, k)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.projection


def fit_whitening(x: np.ndarray, dims: int) -> Whitening:
    """Top-`dims` principal directions of `x`, scaled to unit variance (zero-variance ones dropped).

    >>> x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    >>> w = fit_whitening(x, 2)
    >>> np.round(np.cov(w(x).T, bias=True), 6).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs a 2-D array with at least 2 rows, got shape {x.shape}")
    if dims < 1:
        raise ValueError(f"whitening dims must be >= 1, got {dims}")
    mean = x.mean(0)
    centred = x - mean
    n, d = centred.shape
    if d > n:  # wide features (e.g. covariance taps): the n×n Gram matrix's eigenvectors, ~2-3× faster
        evals, u = np.linalg.eigh(centred @ centred.T)  # ascending
        evals, u = np.clip(evals[::-1], 0, None), u[:, ::-1]
        s = np.sqrt(evals)
        # the Gram route squares the condition number: keep directions well above its float noise
        keep = min(dims, int((s > 1e-6 * max(s[0], 1e-300)).sum()))
        directions = centred.T @ (u[:, :keep] / s[:keep])  # (d, keep), orthonormal: the SVD's right vectors
    else:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        keep = min(dims, int((s > 1e-12 * max(s[0], 1e-300)).sum()))
        directions = vt[:keep].T
    std = s[:keep] / np.sqrt(n)
    return Whitening(mean, directions / std)


def cross_view_covariances(gallery: np.ndarray, queries: np.ndarray, gallery_ids: Sequence[str],
                           query_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_I, Σ_E): mean outer product of (g − q) over same-subject and over different-subject
    cross-view pairs, from per-subject sums (no pair list is built)."""
    g, q = np.asarray(gallery, np.float64), np.asarray(queries, np.float64)
    gid, qid = np.asarray(gallery_ids), np.asarray(query_ids)
    if g.shape[0] != gid.shape[0] or q.shape[0] != qid.shape[0]:
        raise ValueError("one id per feature row")
    n, m = g.shape[0], q.shape[0]

    def pair_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # Σ_i Σ_j (a_i − b_j)(a_i − b_j)^T
        sa, sb = a.sum(0), b.sum(0)
        return b.shape[0] * a.T @ a + a.shape[0] * b.T @ b - np.outer(sa, sb) - np.outer(sb, sa)

    intra, n_intra = np.zeros((g.shape[1], g.shape[1])), 0
    for ident in np.intersect1d(gid, qid):
        a, b = g[gid == ident], q[qid == ident]
        intra += pair_sum(a, b)
        n_intra += a.shape[0] * b.shape[0]
    n_extra = n * m - n_intra
    if n_intra == 0 or n_extra == 0:
        raise ValueError("XQDA needs same-subject and different-subject cross-view pairs in training")
    return intra / n_intra, (pair_sum(g, q) - intra) / n_extra


@dataclass(frozen=True)
class XQDA:
    """A learned subspace `w` and the metric `m` in it: d(g, q) = (g − q)ᵀ w m wᵀ (g − q)."""

    w: np.ndarray
    m: np.ndarray

    def distances(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """(n_queries, n_gallery) XQDA distances (lower = more likely the same subject)."""
        q, g = np.asarray(queries, np.float64) @ self.w, np.asarray(gallery, np.float64) @ self.w
        qm = np.einsum("ij,jk,ik->i", q, self.m, q)
        gm = np.einsum("ij,jk,ik->i", g, self.m, g)
        return qm[:, None] + gm[None, :] - 2.0 * (q @ self.m) @ g.T


def fit_xqda(gallery: np.ndarray, queries: np.ndarray, gallery_ids: Sequence[str], query_ids: Sequence[str],
             regularization: float = 0.01, dims: int | None = None) -> XQDA:
    """XQDA from training features of the two views. The subspace keeps the generalized
    eigenvectors of (Σ_E, Σ_I + λI) with eigenvalue > 1 (or the top `dims`)."""
    if regularization < 0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")
    intra, extra = cross_view_covariances(gallery, queries, gallery_ids, query_ids)
    intra = intra + regularization * np.eye(intra.shape[0])
    values, vectors = sla.eigh(extra, intra)
    order = np.argsort(-values)
    values, vectors = values[order], vectors[:, order]
    k = dims if dims is not None else max(1, int((values > 1).sum()))
    w = vectors[:, :k]
    m = np.linalg.inv(w.T @ intra @ w) - np.linalg.inv(w.T @ extra @ w)
    return XQDA(w, m)


def row_zscore(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation: puts two score kinds on one scale
    per query without changing either's ranking.

    >>> np.round(row_zscore(np.array([[1.0, 3.0]])), 9).tolist()
    [[-1.0, 1.0]]
    """
    s = np.asarray(scores, np.float64)
    return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-12)


def _block_bounds(widths: Sequence[int], width: int) -> np.ndarray:
    """Column bounds of the feature blocks, checked against the feature width."""
    bounds = np.cumsum([0, *widths])
    if bounds[-1] != width:
        raise ValueError(f"block widths {list(widths)} do not add up to the feature width {width}")
    return bounds


def fit_block_whitenings(train: np.ndarray, widths: Sequence[int], pca_dims: int) -> list[Whitening]:
    """One PCA whitening per feature block (backbone) of the training rows. XQDA and the
    translation (biomatch.hands.translation) read the same ones: a run fits them once."""
    bounds = _block_bounds(widths, train.shape[1])
    return [fit_whitening(train[:, lo:hi], pca_dims) for lo, hi in zip(bounds[:-1], bounds[1:])]


def append_whitened_blocks(head: np.ndarray, head_widths: Sequence[int], extra: np.ndarray,
                           extra_widths: Sequence[int], whitenings: Sequence[Whitening]) -> tuple[np.ndarray, list[int]]:
    """Per block b (backbone), [head_b, the unit rows of whitenings[b](extra_b)] side by side:
    the heads' input widened by what XQDA reads, on the same scale as the L2-normalized taps.

    Why: XQDA's covariance taps, whitened, carry second-order texture the heads' mean/std taps
    do not; fed to the heads as well (the whitening XQDA fits anyway), the heads alone went from
    mean rank 2.61 to 2.31 on the tuning seeds (configs/hands_e10xpl1_xcov_trh.yaml).

    >>> w = Whitening(np.zeros(2), np.eye(2))
    >>> x, widths = append_whitened_blocks(np.ones((1, 1)), [1], np.array([[3.0, 4.0]]), [2], [w])
    >>> x.tolist(), widths
    ([[1.0, 0.6, 0.8]], [3])
    """
    hb, xb = _block_bounds(head_widths, head.shape[1]), _block_bounds(extra_widths, extra.shape[1])
    if not (len(head_widths) == len(extra_widths) == len(whitenings)):
        raise ValueError(f"{len(head_widths)} head blocks, {len(extra_widths)} extra blocks and "
                         f"{len(whitenings)} whitenings: one of each per backbone")
    parts, widths = [], []
    for lo, hi, xlo, xhi, white in zip(hb[:-1], hb[1:], xb[:-1], xb[1:], whitenings):
        w = white(extra[:, xlo:xhi])
        w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        parts += [head[:, lo:hi], w.astype(head.dtype)]
        widths.append(int(hi - lo + w.shape[1]))
    return np.ascontiguousarray(np.concatenate(parts, axis=1)), widths


def whitened_block_sum(train: np.ndarray, train_ids: Sequence[str], train_is_gallery: np.ndarray,
                       queries: np.ndarray, gallery: np.ndarray, widths: Sequence[int], pca_dims: int,
                       block_scores: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                       whitenings: Sequence[Whitening] | None = None) -> np.ndarray:
    """Σ over feature blocks (one per backbone) of the row-z-scored `block_scores(train, ids,
    is_gallery, queries, gallery)`, each block PCA-whitened to `pca_dims` on its training rows
    first (or by `whitenings`, `fit_block_whitenings` of the same rows): the frame XQDA and the
    translation (biomatch.hands.translation) share."""
    ids = np.asarray(train_ids)
    view = np.asarray(train_is_gallery, bool)
    if whitenings is None:
        whitenings = fit_block_whitenings(train, widths, pca_dims)
    elif len(whitenings) != len(widths):
        raise ValueError(f"{len(whitenings)} whitenings for {len(widths)} feature blocks")
    bounds = _block_bounds(widths, train.shape[1])  # checked here too: given whitenings skip the fit's check
    total = np.zeros((queries.shape[0], gallery.shape[0]))
    for lo, hi, white in zip(bounds[:-1], bounds[1:], whitenings):
        total += row_zscore(block_scores(white(train[:, lo:hi]), ids, view, white(queries[:, lo:hi]),
                                         white(gallery[:, lo:hi])))
    return total


def xqda_block_scores(train: np.ndarray, train_ids: Sequence[str], train_is_gallery: np.ndarray,
                      queries: np.ndarray, gallery: np.ndarray, widths: Sequence[int], pca_dims: int,
                      regularization: float, whitenings: Sequence[Whitening] | None = None) -> np.ndarray:
    """Σ over feature blocks (one per backbone) of the row-z-scored negative XQDA distance, each
    block whitened (PCA to `pca_dims`, or by `whitenings`) and fitted on the training images of its own."""

    def xqda(t: np.ndarray, ids: np.ndarray, view: np.ndarray, q: np.ndarray, g: np.ndarray) -> np.ndarray:
        return -fit_xqda(t[view], t[~view], ids[view], ids[~view], regularization).distances(q, g)

    return whitened_block_sum(train, train_ids, train_is_gallery, queries, gallery, widths, pca_dims, xqda, whitenings)


def alternate_halves(ids: Sequence[str]) -> np.ndarray:
    """Boolean per image: every second image of each subject (in the given order) is True, so
    one view's images can play both sides of an XQDA fit.

    >>> alternate_halves(["a", "a", "b", "a", "b"]).tolist()
    [False, True, False, False, True]
    """
    seen: dict[str, int] = {}
    out = np.zeros(len(ids), bool)
    for i, ident in enumerate(ids):
        seen[ident] = seen.get(ident, 0) + 1
        out[i] = seen[ident] % 2 == 0
    return out


def same_view_block_scores(train: np.ndarray, train_ids: Sequence[str], x: np.ndarray, widths: Sequence[int],
                           pca_dims: int, regularization: float) -> np.ndarray:
    """(n, n) XQDA block scores among the rows of `x`, all of one view, fitted on training
    images of that same view split into two alternate halves per subject (`alternate_halves`).
    Why: the query-set re-ranking (`biomatch.hands.query_set`) needs dorsal→dorsal similarity;
    the same closed-form metric on the same features finds a query's siblings far more often
    than a cosine (nearest neighbour the same subject ~95 % vs ~72 % on the tuning seeds)."""
    return xqda_block_scores(train, train_ids, alternate_halves(train_ids), x, x, widths, pca_dims, regularization)
