"""Pairwise dissimilarity matrices in [0, 1] (0 = identical), the input RSM expects.

A *dissimilarity* is the opposite of a score (DESIGN.md): lower = more alike. Verification
metrics take similarities, so pass ``-dissimilarity`` (or ``1 - d``) to them.

>>> import torch
>>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> cosine_dissimilarity(a, a).tolist()
[[0.0, 0.5], [0.5, 0.0]]
>>> hamming_dissimilarity(torch.tensor([[1, 0, 1, 1]]), torch.tensor([[1, 1, 1, 0]])).tolist()
[[0.5]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from biomatch.errors import InputError

Dissimilarity = Callable[[Tensor, Tensor], Tensor]
"""A function (A: n x d, B: m x d) -> n x m dissimilarities in [0, 1]."""


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"expected 2-D (items x features) tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")


def cosine_dissimilarity(a: Tensor, b: Tensor, *, normalize: bool = True) -> Tensor:
    """(1 - cos(a_i, b_j)) / 2 for embeddings ``a`` (n x d) and ``b`` (m x d): 0 same direction, 1 opposite.

    Rows are L2-normalized first unless ``normalize=False`` (already unit length).
    """
    _check_pair(a, b)
    if normalize:
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
    return ((1.0 - a @ b.T) * 0.5).clamp_(0.0, 1.0)


def hamming_dissimilarity(a: Tensor, b: Tensor) -> Tensor:
    """Fraction of differing bits between binary codes ``a`` (n x d) and ``b`` (m x d) of 0/1."""
    _check_pair(a, b)
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    d = a.shape[1]
    # differing = a(1-b) + (1-a)b  =  sum(a) + sum(b) - 2 a.b
    diff = a.sum(1, keepdim=True) + b.sum(1)[None, :] - 2.0 * (a @ b.T)
    return (diff / d).clamp_(0.0, 1.0)


METRICS: dict[str, Dissimilarity] = {
    "cosine": cosine_dissimilarity,
    "hamming": hamming_dissimilarity,
}


def get_dissimilarity(name: str) -> Dissimilarity:
    """The dissimilarity function registered under ``name`` ('cosine' or 'hamming')."""
    try:
        return METRICS[name]
    except KeyError:
        raise InputError(f"unknown dissimilarity {name!r}; choose one of {sorted(METRICS)}") from None


def pair_scores(dissim: Tensor, labels_a: Tensor, labels_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Flatten an n x m dissimilarity matrix to (similarity scores, genuine labels) for metrics.

    With ``labels_b`` None the matrix is all-vs-all of one set: only pairs i < j are kept
    (no self-pairs, no duplicates). Scores are ``-dissim`` (higher = same).
    """
    if labels_b is None:
        if dissim.shape[0] != dissim.shape[1]:
            raise InputError(f"all-vs-all needs a square matrix, got {tuple(dissim.shape)}")
        i, j = torch.triu_indices(dissim.shape[0], dissim.shape[1], offset=1)
        return -dissim[i, j], (labels_a[i] == labels_a[j]).to(torch.int8)
    if dissim.shape != (labels_a.numel(), labels_b.numel()):
        raise InputError(f"matrix {tuple(dissim.shape)} does not match {labels_a.numel()} x {labels_b.numel()} labels")
    return -dissim.reshape(-1), (labels_a[:, None] == labels_b[None, :]).reshape(-1).to(torch.int8)
