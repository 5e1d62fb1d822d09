"""Retrieval metrics against a brute-force sort and against pytorch-metric-learning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.metrics.retrieval import (
    bootstrap_ci,
    chance_first_rank,
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


def reference_ranks(scores: np.ndarray, qlab, glab) -> tuple[np.ndarray, np.ndarray]:
    """The previous engine (before issue #13), kept as the slow reference: every wrong item is
    compared with each of the query's correct items, a (queries x gallery x max_pos) tensor."""
    s_all = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    _, inv = np.unique(np.concatenate([np.asarray(qlab), np.asarray(glab)]), return_inverse=True)
    q, g = torch.from_numpy(inv[: len(qlab)]), torch.from_numpy(inv[len(qlab):])
    n_pos = torch.bincount(g, minlength=int(max(q.max(), g.max())) + 1)[q]
    max_pos = int(n_pos.max())
    s = s_all
    is_pos = q[:, None] == g[None, :]
    pos_scores = torch.where(is_pos, s, torch.full_like(s, -torch.inf))
    top_pos, _ = pos_scores.topk(max_pos, dim=1)
    neg_scores = torch.where(is_pos, torch.full_like(s, -torch.inf), s)
    neg_before = (neg_scores[:, :, None] >= top_pos[:, None, :]).sum(1)
    i = torch.arange(1, max_pos + 1, dtype=torch.float64)
    valid = i[None, :] <= n_pos[:, None]
    precision = torch.where(valid, i / (i + neg_before.double()), torch.zeros(()).double())
    return (1 + neg_before[:, 0]).numpy(), (precision.sum(1) / n_pos.double()).numpy()


@pytest.mark.parametrize("seed", range(6))
def test_engine_equals_previous_engine_on_heavy_ties(seed):
    """Many identities of uneven size, scores on a coarse grid (ties everywhere), chunk sizes
    that cut the queries unevenly: first ranks equal, AP equal to float64 round-off."""
    rng = np.random.default_rng(100 + seed)
    n_ids = int(rng.integers(3, 40))
    glab = np.concatenate([np.arange(n_ids), rng.integers(0, n_ids, int(rng.integers(0, 300)))])
    qlab = rng.integers(0, n_ids, int(rng.integers(1, 120)))
    levels = int(rng.choice([2, 3, 8, 50]))
    scores = rng.integers(0, levels, size=(len(qlab), len(glab))).astype(np.float32) / levels
    if seed % 2:  # a strong signal too: the correct items mostly on top (the sparse path)
        scores += 2.0 * (qlab[:, None] == glab[None, :]) * (rng.random(scores.shape) < 0.8)
    want_first, want_ap = reference_ranks(scores, qlab, glab)
    for chunk in (None, 1, 7):
        r = retrieval_ranks_from_block(scores, qlab, glab, chunk)
        np.testing.assert_array_equal(r.first_rank, want_first)
        np.testing.assert_allclose(r.average_precision, want_ap, rtol=1e-12, atol=0)
    first, ap = brute_force(scores[:10], qlab[:10], glab)
    np.testing.assert_array_equal(want_first[:10], first)
    np.testing.assert_allclose(want_ap[:10], ap, rtol=1e-12)


def retrieval_ranks_from_block(scores, qlab, glab, chunk):
    """The engine on a score matrix with a chosen chunk size (ranks_from_scores picks its own)."""
    from biomatch.metrics.retrieval import _encode_labels, _ranks_chunk_loop

    s = torch.from_numpy(scores)
    q, g = _encode_labels(qlab, glab)
    return _ranks_chunk_loop(lambda a, b: s[a:b], q, g, s.shape[0], s.shape[1], chunk)


def test_dense_sparse_and_clean_rows_agree_with_reference(monkeypatch):
    """Force every row through the whole-row sort, then through the candidate sort."""
    import biomatch.metrics.retrieval as rm

    rng = np.random.default_rng(7)
    qlab, glab = rng.integers(0, 20, 80), np.repeat(np.arange(20), 12)
    scores = (rng.normal(size=(80, 240)) + 1.5 * (qlab[:, None] == glab[None, :])).astype(np.float32)
    scores = np.round(scores, 1)
    want_first, want_ap = reference_ranks(scores, qlab, glab)
    for fraction in (10**9, 1):  # every busy row dense / every busy row sparse
        monkeypatch.setattr(rm, "_DENSE_FRACTION", fraction)
        r = ranks_from_scores(scores, qlab, glab)
        np.testing.assert_array_equal(r.first_rank, want_first)
        np.testing.assert_allclose(r.average_precision, want_ap, rtol=1e-12)


def test_precision_at_1_equals_pml_with_max_bin_count():
    """The anchor of benchmarks/engine_speed.py computes the same P@1 (= R@1) on the same split."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(8)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    glab, qlab = np.repeat(np.arange(50), 10), np.repeat(np.arange(50), 4)
    g = centres[glab] + rng.normal(scale=1.2, size=(500, 32)).astype(np.float32)
    q = centres[qlab] + rng.normal(scale=1.2, size=(200, 32)).astype(np.float32)
    ours = retrieval_summary(retrieval_ranks(q, g, qlab, glab))
    calc = AccuracyCalculator(include=("precision_at_1",), k="max_bin_count", device=torch.device("cpu"))
    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    gn = torch.nn.functional.normalize(torch.from_numpy(g), dim=1)
    pml = calc.get_accuracy(qn, torch.from_numpy(qlab), gn, torch.from_numpy(glab), ref_includes_query=False)
    assert 0.2 < ours["recall@1"] < 0.95  # neither trivial nor hopeless
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-12)


def test_nan_scores_are_refused():
    with pytest.raises(InputError, match="NaN"):
        ranks_from_scores(np.array([[np.nan, 1.0]]), ["a"], ["a", "b"])
    with pytest.raises(InputError, match="NaN or inf"):
        retrieval_ranks(np.array([[np.nan, 1.0]]), np.ones((1, 2)), ["a"], ["a"])


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


def test_identity_first_ranks_match_a_slow_loop_with_ties():
    """Each gallery identity counts once, at its best item; ties count against the query."""
    from biomatch.metrics.retrieval import identity_first_ranks

    rng = np.random.default_rng(3)
    gallery = rng.integers(0, 7, 60).astype(str)
    queries = rng.choice(np.unique(gallery), 25)
    scores = rng.integers(0, 12, (25, 60)).astype(float)  # coarse scores: many ties
    got = identity_first_ranks(scores, queries, gallery)
    for i, q in enumerate(queries):
        best = {g: max(scores[i, j] for j in range(60) if gallery[j] == g) for g in set(gallery)}
        assert got[i] == sum(1 for v in best.values() if v >= best[q])
    item_ranks = ranks_from_scores(scores, queries, gallery).first_rank
    assert np.all(got <= item_ranks) and np.any(got < item_ranks)
    with pytest.raises(InputError, match="no item in the gallery"):
        identity_first_ranks(scores[:1], ["zz"], gallery)
    with pytest.raises(InputError, match=r"\(1, 60\)"):
        identity_first_ranks(scores[:2], ["1"], gallery)


@pytest.mark.parametrize("n_gallery,n_positive", [(1, 1), (4, 1), (5, 2), (6, 3), (6, 6)])
def test_chance_first_rank_matches_every_gallery_order(n_gallery, n_positive):
    labels = [1] * n_positive + [0] * (n_gallery - n_positive)
    firsts = [1 + order.index(1) for order in itertools.permutations(labels)]
    assert chance_first_rank(n_gallery, n_positive) == pytest.approx(sum(firsts) / len(firsts))


def test_chance_first_rank_names_bad_counts():
    with pytest.raises(InputError, match="n_positive=0"):
        chance_first_rank(5, 0)
    with pytest.raises(InputError, match="n_gallery=2"):
        chance_first_rank(2, 3)


def test_excess_rank_by_identity_sums_to_the_mean_rank_and_matches_a_slow_loop():
    """Σ(rank − 1) per query identity, largest first; 1 + its total / queries is the mean rank."""
    from biomatch.metrics.retrieval import excess_rank_by_identity, top_identity_share

    rng = np.random.default_rng(5)
    labels = rng.choice(list("abcdefg"), 40)
    ranks = rng.integers(1, 30, 40)
    parts = excess_rank_by_identity(ranks, labels)
    for p in parts:
        own = [r for r, lab in zip(ranks, labels) if lab == p.identity]
        assert (p.n_queries, p.excess) == (len(own), sum(r - 1 for r in own))
        assert p.mean_rank == pytest.approx(np.mean(own))
    assert [p.excess for p in parts] == sorted((p.excess for p in parts), reverse=True)
    assert 1 + sum(p.excess for p in parts) / len(ranks) == pytest.approx(ranks.mean())
    assert top_identity_share(ranks, labels, n=2) == pytest.approx(
        sum(p.excess for p in parts[:2]) / sum(p.excess for p in parts))
    assert top_identity_share(ranks, labels, n=99) == pytest.approx(1.0)
    assert top_identity_share([1, 1, 1], "abc") == 0.0  # every query first: nothing to share
    with pytest.raises(InputError, match="one first rank per query label"):
        excess_rank_by_identity([1, 2], "abc")
    with pytest.raises(InputError, match="1-based"):
        excess_rank_by_identity([0, 2], "ab")
    with pytest.raises(InputError, match="n must be >= 1"):
        top_identity_share([1, 2], "ab", n=0)
