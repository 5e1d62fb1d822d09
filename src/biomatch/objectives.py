"""Training objectives: one callable `(embeddings, labels, views) -> loss` per method.

Keeping the objective separate from the loop lets one loop train the twin network (pairs),
PK batch-hard triplets, view-aware triplets and any pytorch-metric-learning loss.
"""

from __future__ import annotations

from typing import Protocol

import torch

from biomatch.errors import InputError
from biomatch.losses import (
    cross_view_batch_hard,
    cross_view_softmax,
    make_loss,
    make_miner,
    pair_contrastive_loss,
)


class Objective(Protocol):
    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor: ...


class PMLObjective(torch.nn.Module):
    """A pytorch-metric-learning loss with an optional miner (e.g. triplet + batch-hard)."""

    def __init__(self, loss: str = "triplet", miner: str = "batch_hard", margin: float | None = None,
                 embedding_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.loss = make_loss(loss, margin, embedding_dim, num_classes)
        self.miner = make_miner(miner, margin if margin is not None else 0.2)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        tuples = self.miner(emb, labels) if self.miner is not None else None
        return self.loss(emb, labels, tuples)


class CrossViewObjective(torch.nn.Module):
    """Batch-hard with anchors of view 0 (dorsal) and positives/negatives of view 1 (palmar),
    symmetrized: palmar anchors against dorsal items are added with weight `symmetric`."""

    def __init__(self, margin: float = 0.2, soft: bool = False, symmetric: float = 1.0) -> None:
        super().__init__()
        self.margin, self.soft, self.symmetric = margin, soft, symmetric

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        anchor = views == 0
        loss = cross_view_batch_hard(emb, labels, anchor, self.margin, self.soft)
        if self.symmetric:
            loss = loss + self.symmetric * cross_view_batch_hard(emb, labels, ~anchor, self.margin, self.soft)
        return loss


class CrossViewSoftmaxObjective(torch.nn.Module):
    """`cross_view_softmax` with dorsal anchors against palmar items, plus palmar anchors against
    dorsal items with weight `symmetric`. `batched` takes a stack of heads (H, B, D) at once."""

    def __init__(self, temperature: float = 0.1, symmetric: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.symmetric = temperature, symmetric

    def batched(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        anchor = views == 0
        loss = cross_view_softmax(emb, labels, anchor, self.temperature)
        if self.symmetric:
            loss = loss + self.symmetric * cross_view_softmax(emb, labels, ~anchor, self.temperature)
        return loss

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.batched(emb, labels, views)


class PairContrastiveObjective(torch.nn.Module):
    """Twin-network contrastive loss on consecutive rows (0,1), (2,3), …: y=1 same identity."""

    def __init__(self, margin: float = 2.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if emb.shape[0] % 2:
            raise InputError("pair batches must have an even number of rows")
        same = (labels[0::2] == labels[1::2]).long()
        return pair_contrastive_loss(emb[0::2], emb[1::2], same, self.margin)


def make_objective(name: str, **kwargs) -> torch.nn.Module:
    """'pml' (loss=…, miner=…), 'cross_view' (margin, soft), 'cross_view_softmax' (temperature)
    or 'pair_contrastive' (margin)."""
    table = {"pml": PMLObjective, "cross_view": CrossViewObjective, "cross_view_softmax": CrossViewSoftmaxObjective,
             "pair_contrastive": PairContrastiveObjective}
    if name not in table:
        raise InputError(f"unknown objective {name!r}; choose from {', '.join(table)}")
    return table[name](**kwargs)
