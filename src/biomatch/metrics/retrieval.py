"""Retrieval metrics (CMC / Recall@k, first-match rank, mAP) without a full sort.

Ranks are pessimistic: a gallery item that ties with a correct one is counted before it.
The i-th correct item (by score) of a query sits at position i + (number of wrong items
scoring ≥ it), so one comparison pass per chunk of queries gives every rank and AP exactly;
memory stays bounded by chunking the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from biomatch.errors import InputError


@dataclass(frozen=True)
class RetrievalRanks:
    """Per-query results: 1-based rank of the first correct item, and average precision."""

    first_rank: np.ndarray  # (n_queries,) int64
    average_precision: np.ndarray  # (n_queries,) float64
    gallery_size: int


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _encode_labels(query_labels: Sequence, gallery_labels: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    _, inverse = np.unique(np.concatenate([q, g]), return_inverse=True)
    return torch.from_numpy(inverse[: len(q)]), torch.from_numpy(inverse[len(q):])


def ranks_from_scores(
    scores: np.ndarray | torch.Tensor,
    query_labels: Sequence,
    gallery_labels: Sequence,
) -> RetrievalRanks:
    """Ranks and AP from a precomputed (n_queries, n_gallery) similarity matrix (higher = closer).

    >>> s = np.array([[0.9, 0.8, 0.1], [0.2, 0.5, 0.5]])
    >>> r = ranks_from_scores(s, ["a", "b"], ["a", "b", "c"])
    >>> r.first_rank.tolist()  # query b ties with wrong item c: pessimistic rank 2
    [1, 2]
    >>> r.average_precision.tolist()
    [1.0, 0.5]
    """
    s = _as_tensor(scores)
    if s.ndim != 2 or s.shape != (len(query_labels), len(gallery_labels)):
        raise InputError(f"scores must be (n_queries, n_gallery) = ({len(query_labels)}, "
                         f"{len(gallery_labels)}), got {tuple(s.shape)}")
    q, g = _encode_labels(query_labels, gallery_labels)
    return _ranks_chunk_loop(lambda a, b: s[a:b], q, g, s.shape[0], s.shape[1])


def retrieval_ranks(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    query_labels: Sequence,
    gallery_labels: Sequence,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> RetrievalRanks:
    """Ranks and AP for embeddings. `metric`: "cosine" (dot product of L2-normalized rows)
    or "euclidean" (negative squared distance)."""
    qx, gx = _as_tensor(query).float(), _as_tensor(gallery).float()
    if qx.ndim != 2 or gx.ndim != 2 or qx.shape[1] != gx.shape[1]:
        raise InputError(f"query and gallery must be 2-D with equal widths, got {tuple(qx.shape)} "
                         f"and {tuple(gx.shape)}")
    if len(qx) != len(query_labels) or len(gx) != len(gallery_labels):
        raise InputError("one label per query row and per gallery row is required")
    if metric == "cosine":
        qx = torch.nn.functional.normalize(qx, dim=1)
        gx = torch.nn.functional.normalize(gx, dim=1)
        block = lambda a, b: qx[a:b] @ gx.T  # noqa: E731
    elif metric == "euclidean":
        g_sq = (gx * gx).sum(1)
        block = lambda a, b: 2 * qx[a:b] @ gx.T - (qx[a:b] * qx[a:b]).sum(1, keepdim=True) - g_sq  # noqa: E731
    else:
        raise InputError(f"unknown metric {metric!r}; use cosine or euclidean")
    q, g = _encode_labels(query_labels, gallery_labels)
    return _ranks_chunk_loop(block, q, g, len(qx), len(gx), chunk_size)


def _ranks_chunk_loop(block, q: torch.Tensor, g: torch.Tensor, nq: int, ng: int,
                      chunk_size: int | None = None) -> RetrievalRanks:
    if nq == 0 or ng == 0:
        raise InputError(f"empty {'queries' if nq == 0 else 'gallery'}: nothing to rank")
    counts = torch.bincount(g, minlength=int(max(q.max(), g.max())) + 1)
    n_pos = counts[q]
    if bool((n_pos == 0).any()):
        bad = int((n_pos == 0).sum())
        raise InputError(f"{bad} of {nq} queries have no correct item in the gallery")
    max_pos = int(n_pos.max())
    # Bound the (chunk, n_gallery, max_pos) comparison tensor to ~64M booleans.
    chunk = chunk_size or max(1, min(nq, 64_000_000 // max(1, ng * max_pos), 4096))
    first = np.empty(nq, dtype=np.int64)
    ap = np.empty(nq, dtype=np.float64)
    for a in range(0, nq, chunk):
        b = min(a + chunk, nq)
        s = block(a, b).float()
        is_pos = q[a:b, None] == g[None, :]
        pos_scores = torch.where(is_pos, s, torch.full_like(s, -torch.inf))
        top_pos, _ = pos_scores.topk(max_pos, dim=1)  # descending; -inf pads rows with fewer
        neg_scores = torch.where(is_pos, torch.full_like(s, -torch.inf), s)
        neg_before = (neg_scores[:, :, None] >= top_pos[:, None, :]).sum(1)  # (c, max_pos)
        i = torch.arange(1, max_pos + 1, dtype=torch.float64)
        valid = i[None, :] <= n_pos[a:b, None]
        precision = torch.where(valid, i / (i + neg_before.double()), torch.zeros(()).double())
        first[a:b] = (1 + neg_before[:, 0]).numpy()
        ap[a:b] = (precision.sum(1) / n_pos[a:b].double()).numpy()
    return RetrievalRanks(first, ap, ng)


def recall_at_k(first_rank: np.ndarray, k: int) -> float:
    """Fraction of queries whose first correct item is within the top k (= CMC@k)."""
    return float(np.mean(np.asarray(first_rank) <= k))


def cmc_curve(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
    """CMC@1..max_rank as an array.

    >>> cmc_curve(np.array([1, 3, 2, 1]), 3).tolist()
    [0.5, 0.75, 1.0]
    """
    r = np.asarray(first_rank)
    return np.array([np.mean(r <= k) for k in range(1, max_rank + 1)])


def retrieval_summary(ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The DESIGN.md metric names: recall@k, mean_rank, median_rank, map."""
    out = {f"recall@{k}": recall_at_k(ranks.first_rank, k) for k in ks}
    out["mean_rank"] = float(np.mean(ranks.first_rank))
    out["median_rank"] = float(np.median(ranks.first_rank))
    out["map"] = float(np.mean(ranks.average_precision))
    return out


def bootstrap_ci(
    ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000,
    level: float = 0.95, seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI over queries for each metric of `retrieval_summary`."""
    rng = np.random.default_rng(seed)
    n = len(ranks.first_rank)
    idx = rng.integers(0, n, size=(n_boot, n))
    fr, ap = ranks.first_rank[idx], ranks.average_precision[idx]
    samples = {f"recall@{k}": (fr <= k).mean(1) for k in ks}
    samples["mean_rank"] = fr.mean(1)
    samples["median_rank"] = np.median(fr, axis=1)
    samples["map"] = ap.mean(1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in samples.items()}
