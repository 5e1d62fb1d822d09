"""Dorsal → palm translation (biomatch.hands.translation) against the normal equations and slow
loops, and its place in run_method's score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.config import MethodConfig
from biomatch.hands.translation import fit_translation, translation_block_scores
from biomatch.hands.xqda import fit_whitening, row_zscore


def _fit_loop(q, g, qid, gid, lam):
    """The ridge solution from the normal equations, target rows built one by one."""
    rows, targets = [], []
    for i, ident in enumerate(qid):
        same = [g[j] for j in range(len(gid)) if gid[j] == ident]
        if same:
            rows.append(q[i])
            targets.append(np.mean(same, axis=0))
    a, y = np.array(rows), np.array(targets)
    return np.linalg.inv(a.T @ a + lam * np.eye(a.shape[1])) @ a.T @ y


def test_fit_matches_the_normal_equations_and_skips_subjects_without_a_gallery_row():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    qid = rng.choice(list("abcdefg"), 30)
    gid = rng.choice(list("abcdef"), 20)  # "g" has queries and no gallery row
    for lam in (0.0, 0.5, 10.0):
        np.testing.assert_allclose(fit_translation(q, g, qid, gid, lam), _fit_loop(q, g, qid, gid, lam), atol=1e-10)


def test_a_noiseless_linear_view_change_is_recovered():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(5, 5))
    dorsal = rng.normal(size=(40, 5))
    ids = [str(i) for i in range(40)]
    w = fit_translation(dorsal, dorsal @ true, ids, ids, 0.0)
    np.testing.assert_allclose(w, true, atol=1e-8)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="regularization must be >= 0"):
        fit_translation(np.ones((2, 2)), np.ones((2, 2)), list("ab"), list("ab"), -1.0)
    with pytest.raises(ValueError, match="both views"):
        fit_translation(np.ones((2, 2)), np.ones((2, 2)), list("ab"), list("cd"), 1.0)
    with pytest.raises(ValueError, match="one id per feature row"):
        fit_translation(np.ones((2, 2)), np.ones((3, 2)), list("ab"), list("ab"), 1.0)
    with pytest.raises(ValueError, match="do not add up"):
        translation_block_scores(np.ones((4, 3)), list("aabb"), np.array([0, 1, 0, 1], bool), np.ones((1, 3)),
                                 np.ones((1, 3)), [2], 2, 1.0)
    with pytest.raises(ValueError, match="needs mode: frozen"):
        MethodConfig(name="t", backbones=["tiny_cnn"], mode="finetune", translation_weight=0.1)


def test_block_scores_sum_each_blocks_zscored_cosines():
    rng = np.random.default_rng(2)
    ids = np.repeat([f"s{i}" for i in range(12)], 4)
    gallery_view = np.tile([False, False, True, True], 12)
    train = rng.normal(size=(48, 7))
    queries, gallery = rng.normal(size=(5, 7)), rng.normal(size=(6, 7))
    got = translation_block_scores(train, ids, gallery_view, queries, gallery, [3, 4], 3, 0.5)
    want = np.zeros((5, 6))
    for lo, hi in ((0, 3), (3, 7)):
        white = fit_whitening(train[:, lo:hi], 3)
        t = white(train[:, lo:hi])
        w = _fit_loop(t[~gallery_view], t[gallery_view], ids[~gallery_view], ids[gallery_view], 0.5)
        moved, palms = white(queries[:, lo:hi]) @ w, white(gallery[:, lo:hi])
        cos = np.array([[m @ p / np.linalg.norm(m) / np.linalg.norm(p) for p in palms] for m in moved])
        want += row_zscore(cos)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_translation_finds_the_subject_across_a_view_change():
    """Each subject's palm = a fixed linear map of its dorsal + noise: the translated query's
    nearest palm is its own subject's, where the raw cosine across views is at chance."""
    rng = np.random.default_rng(3)
    view_map = np.linalg.qr(rng.normal(size=(8, 8)))[0]  # a rotation: cosines across views say nothing

    def photos(n_subjects, per_view):
        base = rng.normal(size=(n_subjects, 8))
        ids = np.repeat([f"s{i}" for i in range(n_subjects)], per_view)
        dorsal = np.repeat(base, per_view, 0) + 0.1 * rng.normal(size=(n_subjects * per_view, 8))
        palm = np.repeat(base @ view_map, per_view, 0) + 0.1 * rng.normal(size=(n_subjects * per_view, 8))
        return ids, dorsal, palm

    ids, dorsal, palm = photos(60, 3)
    train = np.vstack([dorsal, palm])
    train_ids = np.concatenate([ids, ids])
    is_gallery = np.r_[np.zeros(len(ids), bool), np.ones(len(ids), bool)]
    test_ids, test_dorsal, test_palm = photos(20, 1)
    s = translation_block_scores(train, train_ids, is_gallery, test_dorsal, test_palm, [8], 8, 1e-3)
    assert (s.argmax(1) == np.arange(20)).mean() >= 0.95


def test_given_whitenings_give_the_same_scores_as_fitting_them():
    """run_method fits the per-block whitening once and hands it to XQDA and the translation."""
    from biomatch.hands.xqda import fit_block_whitenings, xqda_block_scores

    rng = np.random.default_rng(4)
    ids = np.repeat([f"s{i}" for i in range(10)], 4)
    gallery_view = np.tile([False, True], 20)
    train, queries, gallery = rng.normal(size=(40, 6)), rng.normal(size=(3, 6)), rng.normal(size=(5, 6))
    shared = fit_block_whitenings(train, [2, 4], 2)
    np.testing.assert_array_equal(translation_block_scores(train, ids, gallery_view, queries, gallery, [2, 4], 2, 1.0),
                                  translation_block_scores(train, ids, gallery_view, queries, gallery, [2, 4], 2, 1.0,
                                                           shared))
    np.testing.assert_array_equal(xqda_block_scores(train, ids, gallery_view, queries, gallery, [2, 4], 2, 0.01),
                                  xqda_block_scores(train, ids, gallery_view, queries, gallery, [2, 4], 2, 0.01, shared))
    with pytest.raises(ValueError, match="1 whitenings for 2 feature blocks"):
        translation_block_scores(train, ids, gallery_view, queries, gallery, [2, 4], 2, 1.0, shared[:1])
    with pytest.raises(ValueError, match="do not add up"):
        fit_block_whitenings(train, [2, 3], 2)
    with pytest.raises(ValueError, match="do not add up"):  # given whitenings, the widths are still checked
        translation_block_scores(train, ids, gallery_view, queries, gallery, [2, 3], 2, 1.0, shared)
