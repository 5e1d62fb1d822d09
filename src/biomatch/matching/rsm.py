"""Relative Similarity Metric (RSM): re-score a pair by how alike both items look *to others*.

    R(x_i, x_j) = mean_{k in refs, k not in {i, j}} |S(x_i, x_k) - S(x_j, x_k)|  +  alpha * S(x_i, x_j)

S is a dissimilarity in [0, 1] (0 = identical), so R is a dissimilarity too: **lower R =
same identity**. Two images of one palm sit at similar distances from every reference
palm, so the first term is small for genuine pairs even when their direct distance is
inflated by noise, pose or illumination.

The mean runs over the references actually used: with references disjoint from the pair
(the protocol default) that is exactly 1/M; when a reference *is* x_i or x_j it is left out
and the mean is over the remaining ones (so no pair gets a spurious extra direct term).

Vectorized: for pairs between row items A and column items B, with D_A (n x M) and D_B
(p x M) their dissimilarities to the M references, the sum is the L1 distance between rows
of D_A and D_B, computed with ``torch.cdist(p=1)`` in row chunks (memory ~ chunk x p).

>>> import torch
>>> direct = torch.tensor([[0.0, 0.3], [0.3, 0.0]])
>>> to_refs = torch.tensor([[0.2, 0.9], [0.25, 0.8]])
>>> rsm_matrix(direct, to_refs, to_refs, alpha=1.0).round(decimals=4).tolist()
[[0.0, 0.375], [0.375, 0.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from biomatch.errors import InputError
from biomatch.matching.distances import Dissimilarity

__all__ = ["Rescorer", "RSM", "draw_references", "rsm_matrix", "rsm_shortlist"]


class Rescorer(Protocol):
    """A post-processor that maps a direct dissimilarity matrix to a re-scored one.

    ``rows_to_refs`` / ``cols_to_refs`` are the dissimilarities of the row / column items to
    a reference set; owners mark references that *are* row / column items (-1 = none).
    """

    def __call__(
        self,
        direct: Tensor,
        rows_to_refs: Tensor,
        cols_to_refs: Tensor,
        row_ref_owner: Tensor | None = None,
        col_ref_owner: Tensor | None = None,
    ) -> Tensor: ...


def draw_references(n_available: int, m: int | None, seed: int) -> Tensor:
    """Sorted indices of ``m`` references drawn without replacement (seeded); None = all."""
    if n_available < 1:
        raise InputError("the reference set is empty")
    if m is None or m >= n_available:
        return torch.arange(n_available)
    if m < 1:
        raise InputError(f"number of references M must be >= 1, got {m}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=gen)[:m].sort().values


def _check_shapes(direct: Tensor, a: Tensor, b: Tensor) -> None:
    if direct.ndim != 2 or a.ndim != 2 or b.ndim != 2:
        raise InputError("direct, rows_to_refs and cols_to_refs must be 2-D")
    n, p = direct.shape
    if a.shape[0] != n or b.shape[0] != p:
        raise InputError(
            f"direct is {n} x {p} but rows_to_refs has {a.shape[0]} rows and cols_to_refs {b.shape[0]}"
        )
    if a.shape[1] != b.shape[1]:
        raise InputError(f"rows and columns use different references: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[1] < 1:
        raise InputError("need at least one reference")


def _owners(owner: Tensor | None, m: int, n_items: int, what: str) -> Tensor:
    if owner is None:
        return torch.full((m,), -1, dtype=torch.long)
    owner = torch.as_tensor(owner, dtype=torch.long).reshape(-1)
    if owner.numel() != m:
        raise InputError(f"{what} has {owner.numel()} entries for {m} references")
    if (owner >= n_items).any() or (owner < -1).any():
        raise InputError(f"{what} points outside 0..{n_items - 1}")
    valid = owner[owner >= 0]
    if valid.unique().numel() != valid.numel():
        raise InputError(f"{what}: two references cannot be the same item")
    return owner


def rsm_matrix(
    direct: Tensor,
    rows_to_refs: Tensor,
    cols_to_refs: Tensor,
    *,
    alpha: float = 1.0,
    row_ref_owner: Tensor | None = None,
    col_ref_owner: Tensor | None = None,
    chunk_size: int = 1024,
    out: Tensor | None = None,
) -> Tensor:
    """RSM dissimilarity for every (row, column) pair, using *all* the given references.

    Takes ``direct`` (n x p dissimilarities S(a_i, b_j) in [0, 1]), ``rows_to_refs``
    (n x M: S(a_i, r_k)), ``cols_to_refs`` (p x M: S(b_j, r_k)). ``row_ref_owner[k] = i``
    says reference k is row item i (left out of pairs involving i); likewise
    ``col_ref_owner``. ``out`` may be ``direct`` itself (in place, saves n x p memory).
    A pair whose every reference is left out gets only the direct term.
    """
    _check_shapes(direct, rows_to_refs, cols_to_refs)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    n, p = direct.shape
    m = rows_to_refs.shape[1]
    r_own = _owners(row_ref_owner, m, n, "row_ref_owner")
    c_own = _owners(col_ref_owner, m, p, "col_ref_owner")
    dtype = direct.dtype
    a = rows_to_refs.to(dtype).contiguous()
    b = cols_to_refs.to(dtype).contiguous()
    result = out if out is not None else torch.empty_like(direct)
    has_owners = bool((r_own >= 0).any() or (c_own >= 0).any())
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = torch.cdist(a[start:stop].unsqueeze(0), b.unsqueeze(0), p=1).squeeze(0)
        if not has_owners:
            block.div_(m)
        else:
            block = _exclude_owned(block, a, b, r_own, c_own, start, stop)
        # written straight into the result (no extra copy pass); same arithmetic as block + alpha * direct
        if result.dtype == dtype:
            torch.add(block, direct[start:stop], alpha=alpha, out=result[start:stop])
        else:
            result[start:stop] = block.add_(direct[start:stop], alpha=alpha)
    return result


def _exclude_owned(
    block: Tensor, a: Tensor, b: Tensor, r_own: Tensor, c_own: Tensor, start: int, stop: int
) -> Tensor:
    """Remove the terms of references that are one of the pair, then average the rest."""
    m = a.shape[1]
    count = torch.full_like(block, float(m))
    for k in range(m):
        i, j = int(r_own[k]), int(c_own[k])
        row_in_chunk = start <= i < stop
        if row_in_chunk:  # pairs (i, *): reference k is x_i
            block[i - start] -= (a[i, k] - b[:, k]).abs()
            count[i - start] -= 1
        if j >= 0:  # pairs (*, j): reference k is x_j
            block[:, j] -= (a[start:stop, k] - b[j, k]).abs()
            count[:, j] -= 1
        if row_in_chunk and j >= 0:  # pair (i, j) had the same term removed twice
            block[i - start, j] += (a[i, k] - b[j, k]).abs()
            count[i - start, j] += 1
    block.clamp_(min=0.0)  # float round-off of the subtractions
    return torch.where(count > 0, block / count.clamp(min=1), torch.zeros_like(block))


def rsm_shortlist(
    direct: Tensor,
    rows_to_refs: Tensor,
    cols_to_refs: Tensor,
    *,
    top_n: int,
    alpha: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """1:N search: re-score only each query's ``top_n`` nearest gallery items with RSM.

    Takes ``direct`` (queries x gallery dissimilarities), ``rows_to_refs`` (queries x M),
    ``cols_to_refs`` (gallery x M). Returns (gallery indices, RSM dissimilarities), both
    queries x top_n, sorted by RSM ascending (best match first). References are assumed
    disjoint from queries and gallery (e.g. other enrolled identities or a background set).
    """
    _check_shapes(direct, rows_to_refs, cols_to_refs)
    n = min(int(top_n), direct.shape[1])
    if n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}")
    near = direct.topk(n, dim=1, largest=False).indices  # q x n
    rel = (rows_to_refs.unsqueeze(1) - cols_to_refs[near]).abs().mean(dim=2)  # q x n
    scores = rel + alpha * direct.gather(1, near)
    order = scores.argsort(dim=1, stable=True)
    return near.gather(1, order), scores.gather(1, order)


@dataclass(frozen=True)
class RSM:
    """RSM as a pluggable post-processor: M seeded references, weight ``alpha`` on S(x_i, x_j).

    ``m=None`` uses every reference. Call it with precomputed dissimilarity matrices
    (any matcher: cosine on embeddings, angular distance on competitive codes), or use
    ``from_features`` with a Dissimilarity function.
    """

    m: int | None = 30
    alpha: float = 1.0
    seed: int = 0
    chunk_size: int = 1024

    def select(self, n_refs: int) -> Tensor:
        """Indices of the references this RSM uses out of ``n_refs`` available."""
        return draw_references(n_refs, self.m, self.seed)

    def __call__(
        self,
        direct: Tensor,
        rows_to_refs: Tensor,
        cols_to_refs: Tensor,
        row_ref_owner: Tensor | None = None,
        col_ref_owner: Tensor | None = None,
    ) -> Tensor:
        """Re-score ``direct`` (n x p) given dissimilarities to *all available* references.

        M of the reference columns are drawn (seeded); owners are indexed like those columns.
        """
        _check_shapes(direct, rows_to_refs, cols_to_refs)
        sel = self.select(rows_to_refs.shape[1])
        pick = lambda o: None if o is None else torch.as_tensor(o, dtype=torch.long)[sel]  # noqa: E731
        return rsm_matrix(
            direct,
            rows_to_refs[:, sel],
            cols_to_refs[:, sel],
            alpha=self.alpha,
            row_ref_owner=pick(row_ref_owner),
            col_ref_owner=pick(col_ref_owner),
            chunk_size=self.chunk_size,
        )

    def from_features(
        self,
        rows: Tensor,
        cols: Tensor,
        refs: Tensor,
        dissimilarity: Dissimilarity,
        *,
        row_ref_owner: Tensor | None = None,
        col_ref_owner: Tensor | None = None,
    ) -> Tensor:
        """RSM matrix from features: only the M drawn references are compared with the items."""
        sel = self.select(refs.shape[0])
        chosen = refs[sel]
        pick = lambda o: None if o is None else torch.as_tensor(o, dtype=torch.long)[sel]  # noqa: E731
        direct = dissimilarity(rows, cols)
        return rsm_matrix(
            direct,
            dissimilarity(rows, chosen),
            dissimilarity(cols, chosen),
            alpha=self.alpha,
            row_ref_owner=pick(row_ref_owner),
            col_ref_owner=pick(col_ref_owner),
            chunk_size=self.chunk_size,
            out=direct,
        )
