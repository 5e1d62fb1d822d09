"""Gallery-side score normalization (biomatch.hands.scoring) against slow loops, and its use in
run_method: the scores a method ranks by are the ones the pure functions give."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.hands.scoring import cohort_corrected_scores, identity_mean_boost, split_blocks


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cohort_correction_matches_a_loop():
    rng = np.random.default_rng(0)
    widths = [4, 4, 4]
    q, g, c = (np.concatenate([_unit(rng, n, w) / np.sqrt(3) for w in widths], 1) for n in (7, 9, 11))
    k = 3
    got = cohort_corrected_scores(split_blocks(q, widths), split_blocks(g, widths), split_blocks(c, widths), k)
    want = np.zeros((7, 9))
    for i in range(7):
        for j in range(9):
            for b in range(3):
                sl = slice(4 * b, 4 * b + 4)
                hub = sorted((float(c[m, sl] @ g[j, sl]) for m in range(11)), reverse=True)[:k]
                want[i, j] += float(q[i, sl] @ g[j, sl]) - sum(hub) / k
    np.testing.assert_allclose(got, want, atol=1e-12)
    # k larger than the cohort: every cohort row counts
    full = cohort_corrected_scores([q], [g], [c], 100)
    np.testing.assert_allclose(full, q @ g.T - (c @ g.T).mean(0)[None, :], atol=1e-12)


def test_identity_boost_matches_a_loop():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 8))
    ids = ["a", "b", "a", "c", "b", "a", "c", "d"]
    got = identity_mean_boost(s, ids, 0.5)
    for i in range(5):
        for j in range(8):
            same = [s[i, m] for m in range(8) if ids[m] == ids[j]]
            assert got[i, j] == pytest.approx(s[i, j] + 0.5 * sum(same) / len(same))


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="do not add up"):
        split_blocks(np.zeros((2, 5)), [2, 2])
    with pytest.raises(ValueError, match="empty cohort"):
        cohort_corrected_scores([np.ones((1, 2))], [np.ones((1, 2))], [np.zeros((0, 2))], 3)
    with pytest.raises(ValueError, match="gallery ids"):
        identity_mean_boost(np.zeros((1, 3)), ["a"], 1.0)


def test_run_method_ranks_by_the_normalized_scores(hands_samples, tmp_path):
    """The method's score matrix is the cohort-corrected, identity-boosted cosine of its own
    embeddings (recomputed here from the trained head and the training dorsal images)."""
    from biomatch.config import MethodConfig
    from biomatch.hands.methods import FeatureBank, head_embed, run_method
    from biomatch.hands.protocol import HandsSplit, make_split

    both = sorted({s.identity for s in hands_samples if s.view == "dorsal"}
                  & {s.identity for s in hands_samples if s.view == "palmar"})[:30]
    split = make_split([s for s in hands_samples if s.identity in set(both)], 1)
    base = dict(name="t", backbones=["efficientnet_lite0", "efficientnet_lite0@aligned"], taps=["2:avg", "3:std"],
                mode="frozen", fusion="score", head_dims=[32, 8], objective="cross_view", margin=0.1,
                sampler="pk_view", p=8, k=4, batches_per_epoch=4, epochs=3, train_on_val=True, n_heads=2)
    cfg = MethodConfig(**base, cohort_k=5, identity_weight=0.5)
    r = run_method(cfg, split, cache=tmp_path, progress=False)
    bank = FeatureBank(cfg, split.train + split.val + split.test, cache=tmp_path, progress=False)
    canon, _ = bank.canonical(HandsSplit.queries(split.train + split.val))
    cohort = head_embed(r.model, canon, None, False)
    widths = [16, 16]
    want = identity_mean_boost(
        cohort_corrected_scores(split_blocks(r.query_emb, widths), split_blocks(r.gallery_emb, widths),
                                split_blocks(cohort, widths), 5),
        [s.identity for s in r.gallery], 0.5)
    np.testing.assert_allclose(r.score_matrix(), want, atol=1e-6)
    assert not np.allclose(want, r.query_emb @ r.gallery_emb.T)


def test_config_refuses_two_gallery_rescorings_before_any_work(tmp_path):
    """cohort_k and rerank both re-score the gallery; the config says so at load time, not
    after the features and heads have been computed."""
    from biomatch.config import load_method
    from biomatch.errors import InputError

    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [efficientnet_lite0]\ncohort_k: 10\nrerank: k_reciprocal\n")
    with pytest.raises(InputError, match="cohort_k and rerank"):
        load_method(bad)
