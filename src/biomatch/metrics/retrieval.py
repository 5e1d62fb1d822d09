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
    if bool(torch.isnan(s).any()):
        raise InputError("scores contain NaN: cannot rank them")
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
    if not (bool(torch.isfinite(qx).all()) and bool(torch.isfinite(gx).all())):
        raise InputError("query or gallery embeddings contain NaN or inf")
    if metric not in ("cosine", "euclidean"):
        raise InputError(f"unknown metric {metric!r}; use cosine or euclidean")
    if metric == "cosine":
        qx = torch.nn.functional.normalize(qx, dim=1)
        gx = torch.nn.functional.normalize(gx, dim=1)
    chunk_size = _chunk_rows(len(gx), chunk_size)
    # one reused score buffer: a fresh 256 MB block per chunk costs page faults every time
    buf = torch.empty(min(chunk_size, len(qx)) * len(gx), dtype=torch.float32)
    gt = gx.T
    g_sq = (gx * gx).sum(1)

    def block(a: int, b: int) -> torch.Tensor:
        out = torch.mm(qx[a:b], gt, out=buf[: (b - a) * len(gx)].view(b - a, len(gx)))
        if metric == "euclidean":  # negative squared distance
            out.mul_(2).sub_((qx[a:b] * qx[a:b]).sum(1, keepdim=True)).sub_(g_sq)
        return out

    q, g = _encode_labels(query_labels, gallery_labels)
    return _ranks_chunk_loop(block, q, g, len(qx), len(gx), chunk_size)


def _chunk_rows(ng: int, chunk_size: int | None) -> int:
    """Query rows per score block: ~64 M float32 scores (256 MB) unless told otherwise."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, min(_BLOCK_SCORES // max(1, ng), 8192))


_BLOCK_SCORES = 1 << 26


def _count_at_or_above(s: np.ndarray, pos: np.ndarray, k: np.ndarray, pos_ge: np.ndarray) -> np.ndarray:
    """For each row r and each of its k[r] correct scores pos[r, j] (descending), the number
    of items of s[r] scoring >= it. ``pos_ge[r, j]``: the correct items scoring >= it.

    One vectorized comparison pass against each row's worst correct score counts the
    candidates; rows with no wrong candidate need nothing more, sparse rows sort only their
    candidates, dense rows are sorted whole (SIMD sort beats extracting half a row).
    """
    rows = np.arange(len(s))
    worst = pos[rows, k - 1]
    n_cand = np.count_nonzero(s >= worst[:, None], axis=1)
    # a row whose candidates are all correct: item j has exactly the correct ones >= it
    out = pos_ge.astype(np.int64)
    busy = np.flatnonzero(n_cand > k)
    dense = n_cand[busy] * _DENSE_FRACTION > s.shape[1]
    for r in busy[~dense]:
        row = s[r]
        cand = row[row >= worst[r]]
        cand.sort()
        out[r, : k[r]] = cand.size - np.searchsorted(cand, pos[r, : k[r]], side="left")
    dense_rows = busy[dense]
    for d in range(0, len(dense_rows), 256):  # sorted copies of at most 256 rows at a time
        group = dense_rows[d : d + 256]
        for r, row in zip(group, np.sort(s[group], axis=1)):
            out[r, : k[r]] = row.size - np.searchsorted(row, pos[r, : k[r]], side="left")
    return out


_DENSE_FRACTION = 4  # sort the whole row once a quarter of it are candidates


def _ranks_chunk_loop(block, q: torch.Tensor, g: torch.Tensor, nq: int, ng: int,
                      chunk_size: int | None = None) -> RetrievalRanks:
    """First ranks and AP, one block of query rows at a time.

    Per query, only the items scoring >= its *worst* correct item can precede a correct
    one, so each row is cut to those candidates (one comparison pass), the candidates are
    sorted (numpy's SIMD sort; few for a good embedding, the whole row at worst) and every
    correct item's count of items scoring >= it comes from one binary search. Cost is one
    pass over the scores plus a sort of the candidates: it does not grow with the number
    of correct items per query. numpy, not torch: at 1 thread torch's row sort measured
    ~9x and its boolean count ~4x slower than numpy's (issue #13 notes).
    """
    if nq == 0 or ng == 0:
        raise InputError(f"empty {'queries' if nq == 0 else 'gallery'}: nothing to rank")
    n_labels = int(max(q.max(), g.max())) + 1
    counts = torch.bincount(g, minlength=n_labels)
    n_pos = counts[q].numpy()
    if bool((n_pos == 0).any()):
        bad = int((n_pos == 0).sum())
        raise InputError(f"{bad} of {nq} queries have no correct item in the gallery")
    # Gallery columns grouped by label: the correct items of a query are one contiguous run.
    order = torch.argsort(g, stable=True).numpy()
    starts = (torch.cumsum(counts, 0) - counts)[q].numpy()
    max_pos = int(n_pos.max())
    steps = np.arange(max_pos)
    chunk = _chunk_rows(ng, chunk_size)
    first = np.empty(nq, dtype=np.int64)
    ap = np.empty(nq, dtype=np.float64)
    for a in range(0, nq, chunk):
        b = min(a + chunk, nq)
        s = block(a, b)
        s = (s.float() if isinstance(s, torch.Tensor) else torch.as_tensor(s).float()).numpy()
        k = n_pos[a:b]
        valid = steps[None, :] < k[:, None]  # (c, max_pos)
        cols = order[np.minimum(starts[a:b, None] + steps[None, :], ng - 1)]
        pos = np.take_along_axis(s, cols, axis=1)
        pos = -np.sort(-np.where(valid, pos, -np.inf), axis=1)  # best first; padding (-inf) last
        # correct items scoring >= each correct one (itself and ties)
        pos_ge = ((pos[:, None, :] >= pos[:, :, None]) & valid[:, None, :]).sum(2)
        neg_before = _count_at_or_above(s, pos, k, pos_ge) - pos_ge
        i = steps[None, :] + 1.0
        precision = np.where(valid, i / (i + neg_before), 0.0)
        first[a:b] = 1 + neg_before[:, 0]
        ap[a:b] = precision.sum(1) / k
    return RetrievalRanks(first, ap, ng)


def identity_first_ranks(scores: np.ndarray, query_labels: Sequence, gallery_labels: Sequence) -> np.ndarray:
    """1-based rank of each query's own identity when every gallery identity counts once, at its
    best-scoring item (ties pessimistic, as in `ranks_from_scores`).

    Why: the first-correct rank over gallery *items* counts every item of every impostor identity
    that scores above the true one; with ~5 palms per subject, one look-alike subject can add 5.
    Reading both ranks side by side tells how much of a mean rank is duplicated impostors.

    >>> s, gallery = np.array([[0.9, 0.8, 0.7, 0.6]]), ["b", "b", "a", "a"]  # b's two items beat a's best
    >>> ranks_from_scores(s, ["a"], gallery).first_rank.tolist(), identity_first_ranks(s, ["a"], gallery).tolist()
    ([3], [2])
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape != (len(query_labels), len(gallery_labels)):
        raise InputError(f"scores must be (n_queries, n_gallery) = ({len(query_labels)}, "
                         f"{len(gallery_labels)}), got {s.shape}")
    if np.isnan(s).any():
        raise InputError("scores contain NaN: cannot rank them")
    q, g = (t.numpy() for t in _encode_labels(query_labels, gallery_labels))
    in_gallery = np.zeros(int(max(q.max(initial=0), g.max(initial=0))) + 1, bool)
    in_gallery[g] = True
    if not in_gallery[q].all():
        raise InputError("a query's identity has no item in the gallery")
    best = np.full((s.shape[0], in_gallery.size), -np.inf)
    np.maximum.at(best.T, g, s.T)  # (identities, queries): max over each identity's items
    true = best[np.arange(len(q)), q]
    return (best >= true[:, None]).sum(1)  # identities at or above the own one, itself included


def chance_first_rank(n_gallery: int, n_positive: int) -> float:
    """Expected 1-based rank of the first correct item when the gallery is in random order:
    (n_gallery + 1) / (n_positive + 1).

    Why: a group of queries whose mean first rank sits at this value carries no signal at all
    (e.g. a subject photographed in another session), which a mean rank alone does not say.

    >>> chance_first_rank(9, 1), chance_first_rank(219, 5)
    (5.0, 36.666666666666664)
    """
    if n_positive < 1 or n_gallery < n_positive:
        raise InputError(f"need 1 <= n_positive <= n_gallery, got n_positive={n_positive}, n_gallery={n_gallery}")
    return (n_gallery + 1) / (n_positive + 1)


@dataclass(frozen=True)
class IdentityExcess:
    """One query identity's share of a mean rank: its queries and Σ(first rank − 1) over them."""

    identity: str
    n_queries: int
    excess: int

    @property
    def mean_rank(self) -> float:
        return 1 + self.excess / self.n_queries


def excess_rank_by_identity(first_rank: Sequence[int] | np.ndarray, query_labels: Sequence) -> list[IdentityExcess]:
    """Per query identity, Σ(first rank − 1) over its queries, largest first (ties by identity).

    Why: mean rank = 1 + Σ(rank − 1) / n_queries, so this says whose queries the mean rank above 1
    comes from; when a few subjects carry most of it, a split's mean rank mostly says whether
    those subjects fell into its test set.

    >>> [(e.identity, e.n_queries, e.excess) for e in excess_rank_by_identity([1, 9, 3, 1, 2], "abbca")]
    [('b', 2, 10), ('a', 2, 1), ('c', 1, 0)]
    """
    r = np.asarray(first_rank)
    if r.ndim != 1 or len(r) != len(query_labels):
        raise InputError(f"need one first rank per query label, got {r.shape} ranks and {len(query_labels)} labels")
    if len(r) and r.min() < 1:
        raise InputError(f"first ranks are 1-based, got a minimum of {r.min()}")
    counts: dict[str, list[int]] = {}
    for label, rank in zip(query_labels, r.tolist()):
        c = counts.setdefault(str(label), [0, 0])
        c[0], c[1] = c[0] + 1, c[1] + int(rank) - 1
    return sorted((IdentityExcess(k, n, e) for k, (n, e) in counts.items()), key=lambda x: (-x.excess, x.identity))


def top_identity_share(first_rank: Sequence[int] | np.ndarray, query_labels: Sequence, n: int = 5) -> float:
    """Share of Σ(first rank − 1) carried by the `n` query identities with the most of it (0 when
    every query ranks its match first).

    >>> top_identity_share([1, 9, 3, 1, 2], "abbca", n=1)
    0.9090909090909091
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    parts = excess_rank_by_identity(first_rank, query_labels)
    total = sum(p.excess for p in parts)
    return sum(p.excess for p in parts[:n]) / total if total else 0.0


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
