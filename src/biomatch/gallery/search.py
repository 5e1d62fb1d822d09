"""1:N search over a gallery matrix: exact (torch or numpy) by default, faiss for large galleries.

All searchers take and return *scores* (inner products; cosine similarity for unit rows,
higher = more similar), best first. Missing results (k larger than the gallery) are padded
with index -1 and score -inf. Exact search is the reference; faiss indexes are checked
against it (tests and benchmarks/gallery_search.py).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

from biomatch.errors import InputError

SearchKind = Literal["exact", "numpy", "flat", "ivf", "hnsw"]
SEARCH_KINDS: tuple[str, ...] = ("exact", "numpy", "flat", "ivf", "hnsw")


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if q.ndim != 2 or q.shape[1] != dim:
        raise InputError(f"queries must have shape (Q, {dim}), got {np.shape(queries)}")
    return q


def _pad(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (Q, k') results to (Q, k) with -inf / -1."""
    q, have = idx.shape
    if have >= k:
        return scores[:, :k], idx[:, :k]
    s = np.full((q, k), -np.inf, np.float32)
    i = np.full((q, k), -1, np.int64)
    s[:, :have], i[:, :have] = scores, idx
    return s, i


class Searcher(ABC):
    """Top-k rows of a fixed gallery matrix by inner product."""

    size: int
    dim: int

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, indices), each (Q, k), best first."""


def topk_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of a (Q, N) score block without a full sort (argpartition, then sort k)."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk == 0:
        return _pad(np.zeros((scores.shape[0], 0), np.float32), np.zeros((scores.shape[0], 0), np.int64), k)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return _pad(np.take_along_axis(part_scores, order, axis=1).astype(np.float32), idx, k)


class ExactSearcher(Searcher):
    """Brute force: one matrix product per gallery chunk, top-k merged across chunks.

    torch's matmul is the faster CPU anchor (DESIGN.md: 21 ms vs faiss flat 40 ms per query at
    10^6 x 128); numpy is kept as a dependency-free reference. Chunking bounds memory for big
    query batches.
    """

    def __init__(self, vectors: np.ndarray, backend: Literal["torch", "numpy"] = "torch", chunk: int = 1 << 18):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise InputError(f"gallery must be (N, dim), got shape {self.vectors.shape}")
        self.size, self.dim = self.vectors.shape
        self.backend = backend
        self.chunk = chunk
        if backend == "torch":
            import torch

            self._torch = torch
            self._gallery_t = torch.from_numpy(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, self.dim)
        if k < 1:
            raise InputError("k must be at least 1")
        if self.size == 0:
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        if self.backend == "torch":
            return self._search_torch(q, k)
        best_s: np.ndarray | None = None
        best_i: np.ndarray | None = None
        for start in range(0, self.size, self.chunk):
            block = self.vectors[start : start + self.chunk] @ q.T  # (n, Q)
            s, i = topk_from_scores(np.ascontiguousarray(block.T), k)
            i = np.where(i >= 0, i + start, -1)
            if best_s is None:
                best_s, best_i = s, i
            else:
                best_s, best_i = topk_merge(best_s, best_i, s, i, k)  # type: ignore[arg-type]
        return best_s, best_i  # type: ignore[return-value]

    def _search_torch(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        qt = torch.from_numpy(q)
        kk = min(k, self.size)
        with torch.inference_mode():
            if len(q) * self.size <= (1 << 26):  # one product fits comfortably (≤ 256 MB of scores)
                scores, idx = torch.topk(qt @ self._gallery_t.T, kk, dim=1)
                return _pad(scores.numpy(), idx.numpy().astype(np.int64), k)
            best_s = best_i = None
            for start in range(0, self.size, self.chunk):
                block = qt @ self._gallery_t[start : start + self.chunk].T
                s, i = torch.topk(block, min(kk, block.shape[1]), dim=1)
                s, i = _pad(s.numpy(), i.numpy().astype(np.int64) + start, k)
                best_s, best_i = (s, i) if best_s is None else topk_merge(best_s, best_i, s, i, k)  # type: ignore[arg-type]
        return best_s, best_i  # type: ignore[return-value]


def topk_merge(
    s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two best-first top-k lists into one."""
    s = np.concatenate([s1, s2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


IVF_NPROBE_FRACTION = 0.5
"""Share of the IVF lists probed by default. Chosen (on tuning seed 1 of the face-like data of
benchmarks/gallery_search.py) as the smallest share giving top-1 *template* agreement >= 0.99
with exact search at both 10^5 and 10^6 templates; benchmarks/engine_speed.py reports it on
seed 0. Near-uniform 128-d templates spread one person's views over many lists, so the share
is large: IVF then saves about half of an exhaustive scan, not more."""

DEFAULT_EF_SEARCH = 256
"""HNSW efSearch default (M = 32): template agreement 1.0 at 10^5 in engine_speed.py."""


def default_nprobe(nlist: int) -> int:
    """The IVF nprobe used unless one is given: IVF_NPROBE_FRACTION of the lists."""
    return max(1, min(nlist, math.ceil(IVF_NPROBE_FRACTION * nlist)))


class FaissSearcher(Searcher):
    """faiss inner-product index: `flat` (exact), `ivf` (inverted lists) or `hnsw` (graph).

    IVF defaults: nlist ≈ sqrt(N), nprobe = default_nprobe(nlist) (half the lists), for >= 0.99
    top-1 *template* agreement with exact search on face-like data at 10^5-10^6 templates
    (benchmarks/engine_speed.py); pass a smaller ``nprobe`` to trade agreement for speed.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        kind: Literal["flat", "ivf", "hnsw"] = "ivf",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = DEFAULT_EF_SEARCH,
        seed: int = 0,
    ) -> None:
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"a faiss index needs a non-empty (N, dim) gallery, got shape {x.shape}")
        self.size, self.dim = x.shape
        self.kind = kind
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, hnsw_m, ip)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(math.sqrt(self.size)), self.size // 39))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, ip)
            index.cp.seed = seed
            n_train = min(self.size, max(64 * nlist, 10_000))
            rng = np.random.default_rng(seed)
            sample = x[np.sort(rng.choice(self.size, n_train, replace=False))] if n_train < self.size else x
            index.train(sample)
            index.nprobe = min(nprobe, nlist) if nprobe is not None else default_nprobe(nlist)
            self._quantizer = quantizer  # keep the quantizer alive alongside the index
        else:
            raise InputError(f"unknown faiss index kind {kind!r}; choose flat, ivf or hnsw")
        index.add(x)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, self.dim)
        if k < 1:
            raise InputError("k must be at least 1")
        scores, idx = self.index.search(q, min(k, self.size))
        scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
        return _pad(scores, idx.astype(np.int64), k)


def build_searcher(vectors: np.ndarray, kind: str = "exact", **options: object) -> Searcher:
    """`exact` (torch), `numpy` (exact, numpy), or a faiss index: `flat`, `ivf`, `hnsw`."""
    if kind == "exact":
        return ExactSearcher(vectors, backend="torch", **options)  # type: ignore[arg-type]
    if kind == "numpy":
        return ExactSearcher(vectors, backend="numpy", **options)  # type: ignore[arg-type]
    if kind in ("flat", "ivf", "hnsw"):
        return FaissSearcher(vectors, kind, **options)  # type: ignore[arg-type]
    raise InputError(f"unknown search kind {kind!r}; choose one of {', '.join(SEARCH_KINDS)}")
