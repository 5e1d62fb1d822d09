"""Retrieval metrics against a brute-force sort and against pytorch-metric-learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.metrics.retrieval import (
    bootstrap_ci,
    cmc_curve,
    ranks_from_scores,
    retrieval_ranks,
    retrieval_summary,
)


def brute_force(scores: np.ndarray, qlab, glab):
    """Sort each row, ties pessimistic (wrong items first), then walk the list."""
    first, aps = [], []
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], glab[j] == qlab[i]))
        hits, precisions, first_rank = 0, [], None
        for pos, j in enumerate(order, start=1):
            if glab[j] == qlab[i]:
                hits += 1
                precisions.append(hits / pos)
                first_rank = first_rank or pos
        first.append(first_rank)
        aps.append(np.mean(precisions))
    return np.array(first), np.array(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(30, 25)).astype(np.float32)  # heavy ties
    qlab = rng.integers(0, 5, size=30)
    glab = np.concatenate([np.arange(5), rng.integers(0, 5, size=20)])  # every label present
    r = ranks_from_scores(scores, qlab, glab)
    first, ap = brute_force(scores, qlab, glab)
    np.testing.assert_array_equal(r.first_rank, first)
    np.testing.assert_allclose(r.average_precision, ap, rtol=1e-12)


def test_embedding_path_equals_score_path_and_chunking_is_invisible():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(60, 8)).astype(np.float32)
    qlab, glab = rng.integers(0, 6, 40), np.concatenate([np.arange(6), rng.integers(0, 6, 54)])
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    ref = ranks_from_scores(qn @ gn.T, qlab, glab)
    for chunk in (1, 7, 40):
        r = retrieval_ranks(q, g, qlab, glab, chunk_size=chunk)
        np.testing.assert_array_equal(r.first_rank, ref.first_rank)
        np.testing.assert_allclose(r.average_precision, ref.average_precision, rtol=1e-6)
    eu = retrieval_ranks(q, g, qlab, glab, metric="euclidean")
    d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    first, _ = brute_force(-d, qlab, glab)
    np.testing.assert_array_equal(eu.first_rank, first)


def test_against_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(4)
    centers = rng.normal(size=(10, 16))
    qlab, glab = rng.integers(0, 10, 200), rng.integers(0, 10, 300)
    glab[:10] = np.arange(10)
    q = (centers[qlab] + rng.normal(scale=1.0, size=(200, 16))).astype(np.float32)
    g = (centers[glab] + rng.normal(scale=1.0, size=(300, 16))).astype(np.float32)
    ours = retrieval_summary(retrieval_ranks(q, g, qlab, glab))
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision", "mean_reciprocal_rank"),
                              k=None, device=torch.device("cpu"))
    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    gn = torch.nn.functional.normalize(torch.from_numpy(g), dim=1)
    pml = calc.get_accuracy(qn, torch.from_numpy(qlab), gn, torch.from_numpy(glab), ref_includes_query=False)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map"] == pytest.approx(pml["mean_average_precision"], abs=1e-6)
    r = retrieval_ranks(q, g, qlab, glab)
    assert np.mean(1.0 / r.first_rank) == pytest.approx(pml["mean_reciprocal_rank"], abs=1e-6)


def test_summary_cmc_and_bootstrap():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.9], [0.3, 0.4, 0.1]])
    r = ranks_from_scores(scores, ["a", "b", "c"], ["a", "b", "c"])
    assert r.first_rank.tolist() == [1, 2, 3]  # c scores its match lowest of three
    s = retrieval_summary(r, ks=(1, 2))
    assert s["recall@1"] == pytest.approx(1 / 3) and s["recall@2"] == pytest.approx(2 / 3)
    assert s["mean_rank"] == pytest.approx(2.0) and s["median_rank"] == 2
    np.testing.assert_allclose(cmc_curve(r.first_rank, 3), [1 / 3, 2 / 3, 1])
    ci = bootstrap_ci(r, ks=(1,), n_boot=200, seed=0)
    lo, hi = ci["recall@1"]
    assert 0 <= lo <= s["recall@1"] <= hi <= 1
    assert bootstrap_ci(r, ks=(1,), n_boot=200, seed=0) == ci  # seeded


def test_clear_errors():
    with pytest.raises(InputError, match="no correct item"):
        ranks_from_scores(np.zeros((1, 2)), ["x"], ["a", "b"])
    with pytest.raises(InputError, match="empty gallery"):
        retrieval_ranks(np.zeros((1, 4)), np.zeros((0, 4)), ["a"], [])
    with pytest.raises(InputError, match="equal widths"):
        retrieval_ranks(np.zeros((1, 4)), np.zeros((2, 3)), ["a"], ["a", "b"])
    with pytest.raises(InputError, match="unknown metric"):
        retrieval_ranks(np.ones((1, 4)), np.ones((1, 4)), ["a"], ["a"], metric="cityblock")
