"""Twin (siamese) and triplet networks: thin wrappers that apply ONE shared embedder to each
member of a pair or triplet. Training runs the embedder on flattened rows (same weights, one
forward pass per batch), which is exactly what these wrappers compute member by member."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biomatch.errors import InputError


class SiameseNetwork(nn.Module):
    """(a, b) → (za, zb); `distance` is the Euclidean distance between the embeddings."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.shape != b.shape:
            raise InputError(f"pair members must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        z = self.embedder(torch.cat([a, b]))
        return z[: len(a)], z[len(a) :]

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        za, zb = self(a, b)
        return torch.linalg.vector_norm(za - zb, dim=1)


class TripletNetwork(nn.Module):
    """(anchor, positive, negative) → three embeddings from the same embedder."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor):
        if not a.shape == p.shape == n.shape:
            raise InputError("triplet members must have the same shape")
        z = self.embedder(torch.cat([a, p, n]))
        return z[: len(a)], z[len(a) : 2 * len(a)], z[2 * len(a) :]


class RowTripletObjective(nn.Module):
    """Triplet margin loss on rows (a, p, n), (a, p, n), … as laid out by the triplet sampler:
    mean of max(d(a,p) − d(a,n) + margin, 0), Euclidean distance."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if emb.shape[0] % 3:
            raise InputError("triplet batches must have a multiple of 3 rows")
        return F.triplet_margin_loss(emb[0::3], emb[1::3], emb[2::3], margin=self.margin)
