"""Losses, thin over pytorch-metric-learning, plus the pair-based contrastive loss it lacks.

PML's ContrastiveLoss uses a hinge, not the squared form of Hadsell et al. 2006 that the
reference twin network uses: `L = y·d² + (1−y)·max(margin − d, 0)²`, y = 1 for the same
identity, d the Euclidean distance. That one is written here; everything else is PML.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import distances, losses, miners, reducers

from biomatch.errors import InputError


def pair_contrastive_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Mean squared-hinge contrastive loss over explicit pairs (rows of a and b); same=1 → same identity.

    >>> a = torch.tensor([[0.0, 0.0], [0.0, 0.0]]); b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> float(pair_contrastive_loss(a, b, torch.tensor([1, 0]), margin=2.0))  # (25 + 1) / 2
    13.0
    """
    d = torch.linalg.vector_norm(a - b, dim=1)
    y = same.float()
    return (y * d.pow(2) + (1 - y) * torch.clamp(margin - d, min=0).pow(2)).mean()


LOSS_NAMES = ("triplet", "contrastive", "multi_similarity", "arcface", "ntxent")
MINER_NAMES = ("none", "batch_hard", "batch_all", "semi_hard", "multi_similarity", "hard")


def make_loss(name: str, margin: float | None = None, embedding_dim: int | None = None,
              num_classes: int | None = None) -> torch.nn.Module:
    """A PML loss by name, on cosine similarity where the loss allows it."""
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.2 if margin is None else margin,
                                        reducer=reducers.AvgNonZeroReducer())
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0 if margin is None else margin)
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    if name == "ntxent":
        return losses.NTXentLoss(temperature=0.07)
    if name == "arcface":
        if not embedding_dim or not num_classes:
            raise InputError("arcface needs embedding_dim and num_classes")
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim,
                                  margin=28.6 if margin is None else margin, scale=64)
    raise InputError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")


def make_miner(name: str, margin: float = 0.2):
    """A PML miner by name ("none" → None: the loss uses every pair/triplet in the batch).

    batch_hard: per anchor, the hardest positive and hardest negative (Hermans et al. 2017);
    semi_hard: negatives farther than the positive but within the margin (FaceNet).
    """
    if name == "none":
        return None
    if name == "batch_hard":
        return miners.BatchHardMiner()
    if name == "batch_all":
        return miners.TripletMarginMiner(margin=margin, type_of_triplets="all")
    if name == "semi_hard":
        return miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    if name == "hard":
        return miners.TripletMarginMiner(margin=margin, type_of_triplets="hard")
    if name == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=0.1)
    raise InputError(f"unknown miner {name!r}; choose from {', '.join(MINER_NAMES)}")


def cross_view_batch_hard(
    emb: torch.Tensor, labels: torch.Tensor, is_anchor_view: torch.Tensor, margin: float = 0.2,
    soft: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss where anchors are of one view (e.g. dorsal) and both the
    positives and negatives are of the other view (palmar): the query→gallery geometry.

    Distances are Euclidean on the embeddings. `soft` uses log(1+exp(·)) instead of a hinge.
    Anchors without a cross-view positive in the batch are skipped.
    """
    anchors = torch.nonzero(is_anchor_view, as_tuple=True)[0]
    others = torch.nonzero(~is_anchor_view, as_tuple=True)[0]
    if len(anchors) == 0 or len(others) == 0:
        return emb.sum() * 0.0
    d = torch.cdist(emb[anchors], emb[others])
    same = labels[anchors][:, None] == labels[others][None, :]
    has_pos = same.any(1) & (~same).any(1)
    if not bool(has_pos.any()):
        return emb.sum() * 0.0
    hardest_pos = torch.where(same, d, torch.full_like(d, -torch.inf)).max(1).values
    hardest_neg = torch.where(same, torch.full_like(d, torch.inf), d).min(1).values
    gap = (hardest_pos - hardest_neg)[has_pos]
    return torch.nn.functional.softplus(gap).mean() if soft else torch.clamp(gap + margin, min=0).mean()


def cross_view_softmax(
    emb: torch.Tensor, labels: torch.Tensor, is_anchor_view: torch.Tensor, temperature: float = 0.1,
) -> torch.Tensor:
    """Multi-positive softmax (InfoNCE) from anchors of one view over every item of the other view.

    Why beside batch-hard: batch-hard moves one negative per anchor, while the first-correct rank
    (mean rank) is set by every impostor that outscores the true palm; the softmax pushes all of
    them, weighted by how close they are. Per anchor a: `-log(Σ_pos e^{s/τ} / Σ_other e^{s/τ})`,
    s the dot product (cosine for L2-normalized rows). Works on one head (B, D) or a stack of
    heads (H, B, D) with labels/views (H, B); returns the mean over anchors with a positive and a
    negative in the batch (0 where there is none), one value per head for a stack.
    """
    stacked = emb.dim() == 3
    z, lab, anchor = (emb, labels, is_anchor_view) if stacked else (emb[None], labels[None], is_anchor_view[None])
    logits = torch.bmm(z, z.transpose(1, 2)) / temperature  # (H, B, B)
    other = ~anchor[:, None, :] & anchor[:, :, None]  # row: an anchor; column: the other view
    same = lab[:, :, None] == lab[:, None, :]
    pos, cand = other & same, other
    valid = pos.any(2) & (other & ~same).any(2)  # (H, B)
    ninf = torch.full_like(logits, -torch.inf)
    num = torch.logsumexp(torch.where(pos, logits, ninf), dim=2)
    den = torch.logsumexp(torch.where(cand, logits, ninf), dim=2)
    per_anchor = torch.where(valid, den - num, torch.zeros_like(den))
    out = per_anchor.sum(1) / valid.sum(1).clamp(min=1)
    return out if stacked else out[0]


def cosine_distance():
    """PML's cosine similarity distance object (higher = more similar)."""
    return distances.CosineSimilarity()
