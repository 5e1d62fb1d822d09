"""Scoring dorsal→palmar pairs by landmark geometry (`biomatch.hands.landmarks.geometry_features`).

Why LDA: the raw ratios mix identity (bone lengths) with pose (finger spread, bending) and
landmark noise at 100–180 px. Fitting on the *training* subjects only, the features are
standardized, whitened by the within-subject scatter (pooled over both views, so what varies
between a subject's dorsal and palmar photo is down-weighted) and projected on the leading
discriminant directions; the score is the cosine there. Rows without landmarks (failure to
acquire) get the query's mean score over the gallery — neutral, so they rank by the other cues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class GeometryScorer:
    mean: np.ndarray
    scale: np.ndarray
    project: np.ndarray  # (D, k)

    @classmethod
    def fit(cls, x: np.ndarray, identities: Sequence[str], dims: int = 12, shrink: float = 0.1) -> GeometryScorer:
        """Fit on training rows `x` (N, D; NaN rows = no landmarks, skipped)."""
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x).any(axis=1)
        col_mean = np.nanmean(x[ok], axis=0)
        col_mean = np.where(np.isfinite(col_mean), col_mean, 0.0)
        xs = np.where(np.isfinite(x), x, col_mean)[ok]
        ids = np.asarray(identities)[ok]
        mean, scale = xs.mean(0), xs.std(0) + 1e-6
        z = (xs - mean) / scale
        d = z.shape[1]
        sw, sb = np.zeros((d, d)), np.zeros((d, d))
        for ident in np.unique(ids):
            zi = z[ids == ident]
            mu = zi.mean(0)
            sw += (zi - mu).T @ (zi - mu)
            sb += len(zi) * np.outer(mu, mu)
        sw = sw / max(len(z), 1)
        sb = sb / max(len(z), 1)
        sw = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
        vals, vecs = np.linalg.eigh(sw)
        w = vecs @ np.diag(1 / np.sqrt(np.maximum(vals, 1e-8))) @ vecs.T  # Sw^(-1/2)
        bvals, bvecs = np.linalg.eigh(w @ sb @ w)
        top = bvecs[:, np.argsort(bvals)[::-1][: min(dims, d)]]
        return cls(mean, scale, w @ top)

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L2-normalized discriminant coordinates, ok flags) for rows `x`."""
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x).any(axis=1)
        z = np.where(np.isfinite(x), (x - self.mean) / self.scale, 0.0) @ self.project
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
        return z, ok

    def scores(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """(n_query, n_gallery) cosine similarities; pairs with a missing side get the query's
        mean over the gallery rows it can be compared with (0 when none)."""
        zq, okq = self.embed(query)
        zg, okg = self.embed(gallery)
        s = zq @ zg.T
        valid = okq[:, None] & okg[None, :]
        counts = valid.sum(1, keepdims=True)
        fill = np.where(counts > 0, (s * valid).sum(1, keepdims=True) / np.maximum(counts, 1), 0.0)
        return np.where(valid, s, fill).astype(np.float32)
