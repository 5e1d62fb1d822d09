"""Losses and objectives against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.losses import cross_view_batch_hard, cross_view_softmax, make_loss, make_miner, pair_contrastive_loss
from biomatch.objectives import make_objective


def test_pair_contrastive_matches_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g)
    same = torch.randint(0, 2, (20,), generator=g)
    expected = 0.0
    for i in range(20):
        d = float(torch.dist(a[i], b[i]))
        expected += d**2 if same[i] else max(2.0 - d, 0.0) ** 2
    assert float(pair_contrastive_loss(a, b, same, 2.0)) == pytest.approx(expected / 20, rel=1e-5)


def test_cross_view_batch_hard_matches_loop():
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(24, 8, generator=g), dim=1)
    labels = torch.arange(6).repeat_interleave(4)
    dorsal = torch.tensor([True, True, False, False] * 6)
    total, n = 0.0, 0
    for i in torch.nonzero(dorsal).flatten():
        pos = [float(torch.dist(emb[i], emb[j])) for j in range(24) if not dorsal[j] and labels[j] == labels[i]]
        neg = [float(torch.dist(emb[i], emb[j])) for j in range(24) if not dorsal[j] and labels[j] != labels[i]]
        total, n = total + max(max(pos) - min(neg) + 0.3, 0.0), n + 1
    assert float(cross_view_batch_hard(emb, labels, dorsal, margin=0.3)) == pytest.approx(total / n, rel=1e-5)


def _softmax_loop(emb: torch.Tensor, labels: torch.Tensor, anchor: torch.Tensor, tau: float) -> float:
    total, n = 0.0, 0
    for i in torch.nonzero(anchor).flatten():
        other = [j for j in range(len(emb)) if not anchor[j]]
        pos = [j for j in other if labels[j] == labels[i]]
        if not pos or len(pos) == len(other):
            continue
        e = {j: float(np.exp(float(emb[i] @ emb[j]) / tau)) for j in other}
        total, n = total - float(np.log(sum(e[j] for j in pos) / sum(e.values()))), n + 1
    return total / n


def test_cross_view_softmax_matches_loop_and_stacks():
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    labels = torch.randint(0, 5, (20,), generator=g)
    dorsal = torch.rand(20, generator=g) < 0.5
    one = float(cross_view_softmax(emb, labels, dorsal, temperature=0.2))
    assert one == pytest.approx(_softmax_loop(emb, labels, dorsal, 0.2), rel=1e-5)
    # a stack of heads gives each head its own value (the batched training path)
    perm = torch.randperm(20, generator=g)
    stack = cross_view_softmax(torch.stack([emb, emb[perm]]), torch.stack([labels, labels[perm]]),
                               torch.stack([dorsal, dorsal[perm]]), temperature=0.2)
    assert stack.tolist() == pytest.approx([one, one], rel=1e-5)
    objective = make_objective("cross_view_softmax", temperature=0.2)
    views = (~dorsal).long()  # 0 = dorsal anchors, 1 = palmar
    expected = one + _softmax_loop(emb, labels, ~dorsal, 0.2)
    assert float(objective(emb, labels, views)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match="temperature"):
        make_objective("cross_view_softmax", temperature=0.0)


def test_pml_batch_hard_triplet_matches_loop():
    g = torch.Generator().manual_seed(2)
    emb = torch.nn.functional.normalize(torch.randn(16, 6, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(4)
    loss = make_objective("pml", loss="triplet", miner="batch_hard", margin=0.2)(emb, labels, labels * 0)
    # PML's default distance for the triplet loss is Euclidean (LpDistance) on normalized rows.
    d = torch.cdist(emb, emb)
    values = []
    for i in range(16):
        same = labels == labels[i]
        same[i] = False
        hp, hn = d[i][same].max(), d[i][labels != labels[i]].min()
        values.append(float(torch.clamp(hp - hn + 0.2, min=0)))
    nonzero = [v for v in values if v > 0]
    assert float(loss) == pytest.approx(np.mean(nonzero), rel=1e-4)


def test_factories_reject_unknown_names():
    for fn, name in ((make_loss, "hinge-of-doom"), (make_miner, "lucky")):
        with pytest.raises(InputError, match="unknown"):
            fn(name)
    with pytest.raises(InputError, match="arcface needs"):
        make_loss("arcface")
    with pytest.raises(InputError, match="even"):
        make_objective("pair_contrastive")(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3))
