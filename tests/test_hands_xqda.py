"""XQDA (biomatch.hands.xqda) against slow pair loops, and its fusion inside run_method."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.config import MethodConfig
from biomatch.hands.xqda import (
    cross_view_covariances,
    fit_whitening,
    fit_xqda,
    row_zscore,
    xqda_block_scores,
)


def _pairs_loop(g, q, gid, qid):
    intra, extra = [], []
    for i in range(len(g)):
        for j in range(len(q)):
            d = g[i] - q[j]
            (intra if gid[i] == qid[j] else extra).append(np.outer(d, d))
    return np.mean(intra, 0), np.mean(extra, 0)


def test_covariances_match_a_loop_over_pairs():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(9, 4)), rng.normal(size=(7, 4))
    gid, qid = list("aabbbccdd"), list("abbccde")  # "d" only one palm, "e" no palm
    intra, extra = cross_view_covariances(g, q, gid, qid)
    ref_intra, ref_extra = _pairs_loop(g, q, gid, qid)
    assert np.allclose(intra, ref_intra) and np.allclose(extra, ref_extra)


def test_distances_match_the_formula_per_pair():
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(12, 5)), rng.normal(size=(10, 5))
    model = fit_xqda(g, q, list("aabbccddeeff"), list("abcdefabcd"), 0.1)
    d = model.distances(q, g)
    mat = model.w @ model.m @ model.w.T
    for i in range(len(q)):
        for j in range(len(g)):
            diff = g[j] - q[i]
            assert d[i, j] == pytest.approx(diff @ mat @ diff, rel=1e-9, abs=1e-9)


def test_xqda_finds_the_identity_subspace_under_a_view_shift_and_nuisance():
    """Identity lives in 3 of 20 dims; views differ by a shift and by large view-specific noise
    in the other dims. Plain Euclidean matching is poor, XQDA near perfect."""
    rng = np.random.default_rng(2)
    n_ids, d = 60, 20
    centres = rng.normal(size=(n_ids, 3))

    def view(shift: float, per: int):
        x = np.zeros((n_ids * per, d))
        x[:, :3] = np.repeat(centres, per, 0) + 0.1 * rng.normal(size=(n_ids * per, 3))
        x[:, 3:] = 3.0 * rng.normal(size=(n_ids * per, d - 3)) + shift
        return x, np.repeat(np.arange(n_ids), per)

    (g, gid), (q, qid) = view(1.0, 3), view(-1.0, 2)
    train = np.arange(n_ids) < 40
    model = fit_xqda(g[train[gid]], q[train[qid]], gid[train[gid]], qid[train[qid]], 1e-3)
    tg, tq = g[~train[gid]], q[~train[qid]]
    tgid, tqid = gid[~train[gid]], qid[~train[qid]]
    top1 = lambda dist: float((tgid[dist.argmin(1)] == tqid).mean())  # noqa: E731
    euclid = ((tq[:, None] - tg[None]) ** 2).sum(-1)
    oracle = ((tq[:, None, :3] - tg[None, :, :3]) ** 2).sum(-1)  # knows which dims carry identity
    assert top1(model.distances(tq, tg)) >= top1(oracle) - 0.1 and top1(oracle) > 0.9
    assert top1(euclid) < 0.2


def test_whitening_and_zscore():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    w = fit_whitening(x, 4)
    assert np.allclose(np.cov(w(x).T, bias=True), np.eye(4), atol=1e-9)
    z = row_zscore(rng.normal(size=(3, 8)))
    assert np.allclose(z.mean(1), 0) and np.allclose(z.std(1), 1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_whitening(x[:1], 2)


def test_wide_features_whiten_by_the_gram_route_like_the_svd():
    """More columns than rows takes the n×n Gram eigenproblem: the same whitened coordinates as
    the SVD (up to the sign of each direction), so XQDA distances are unchanged."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 90)) @ rng.normal(size=(90, 90))
    wide = fit_whitening(x, 12)  # 90 columns > 40 rows: the Gram route
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ (vt[:12].T / (s[:12] / np.sqrt(40)))
    got = wide(x)
    signs = np.sign((got * ref).sum(0))
    np.testing.assert_allclose(got * signs, ref, atol=1e-8)
    assert np.allclose(np.cov(got.T, bias=True), np.eye(12), atol=1e-9)
    ids = [f"s{i // 4}" for i in range(40)]  # 10 subjects, two items of each view
    is_gallery = np.arange(40) % 2 == 0
    q, g = x[~is_gallery][:6], x[is_gallery][:7]
    via_gram = xqda_block_scores(x, ids, is_gallery, q, g, [90], 12, 0.1)
    # the same scores with the SVD's whitening in its place
    from biomatch.hands import xqda as module

    svd_whitening = module.Whitening(x.mean(0), vt[:12].T / (s[:12] / np.sqrt(40)))
    original = module.fit_whitening
    try:
        module.fit_whitening = lambda data, dims: svd_whitening
        via_svd = xqda_block_scores(x, ids, is_gallery, q, g, [90], 12, 0.1)
    finally:
        module.fit_whitening = original
    np.testing.assert_allclose(via_gram, via_svd, atol=1e-8)


def test_bad_inputs_are_named():
    g = np.zeros((2, 3))
    with pytest.raises(ValueError, match="same-subject and different-subject"):
        fit_xqda(g, g, ["a", "b"], ["c", "d"])  # no shared subject
    with pytest.raises(ValueError, match="one id per feature row"):
        cross_view_covariances(g, g, ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="do not add up"):
        xqda_block_scores(np.zeros((4, 5)), list("aabb"), np.array([1, 0, 1, 0]), g, g, [2, 2], 2, 0.1)


def test_run_method_fuses_xqda_and_records_both_parts(hands_samples, tmp_path):
    from biomatch.hands.methods import run_method
    from biomatch.hands.protocol import make_split
    from biomatch.metrics.retrieval import ranks_from_scores, retrieval_summary

    ids = sorted({s.identity for s in hands_samples})[:40]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=0)
    cfg = MethodConfig(name="t", backbones=["tiny_cnn"], objective="cross_view", sampler="pk_view", p=4, k=4,
                       epochs=1, batches_per_epoch=2, head_dims=[16, 8], train_on_val=True,
                       xqda_weight=0.3, xqda_pca=8)
    res = run_method(cfg, split, cache=tmp_path, progress=False)
    q_ids, g_ids = [s.identity for s in res.queries], [s.identity for s in res.gallery]
    heads = res.query_emb @ res.gallery_emb.T
    assert res.metrics["heads:recall@1"] == retrieval_summary(ranks_from_scores(heads, q_ids, g_ids))["recall@1"]
    assert np.allclose(res.score_matrix().mean(1), 0, atol=1e-9)  # every part per-query z-scored
    assert {"xqda:recall@1", "xqda:mean_rank"} <= set(res.metrics)
