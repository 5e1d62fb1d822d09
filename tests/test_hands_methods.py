"""Tap features, re-ranking and the method-(d) options of run_method (fast: random-init nets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomatch.config import MethodConfig
from biomatch.errors import InputError
from biomatch.hands.features import TapFeatures, parse_tap, pool_map, stage_ends
from biomatch.hands.rerank import k_reciprocal_scores, query_expansion_scores, rerank_scores
from biomatch.models.backbones import create_backbone


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", pretrained=False).eval()


def test_parse_tap_accepts_and_rejects():
    assert parse_tap("3:std") == ("3", "std")
    assert parse_tap("head:grid2") == ("head", "grid2")
    for bad in ("0:avg", "8:avg", "3:max", "3", "x:avg", "2:gridx"):
        with pytest.raises(InputError):
            parse_tap(bad)


def test_pool_map_std_and_grid():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.allclose(pool_map(x, "std"), x.reshape(2, 3, -1).std(dim=2))
    assert pool_map(x, "grid2").shape == (2, 12)
    assert torch.allclose(pool_map(x, "avg"), x.mean(dim=(-2, -1)))


def test_tap_features_match_backbone_and_hooks(lite0):
    ends = stage_ends(lite0.body)
    assert len(ends) == 7 and ends[-1] == len(lite0.body._blocks) - 1
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    handle = lite0.body._blocks[ends[2]].register_forward_hook(lambda m, i, o: seen.setdefault("s3", o))
    with torch.no_grad():
        pooled = lite0(x)  # avg-pooled head map
        taps = TapFeatures(lite0, ["head:avg", "3:std", "2:avg"])(x)
    handle.remove()
    assert taps.shape == (2, 1280 + 40 + 24)
    assert torch.allclose(taps[:, :1280], F.normalize(pooled, dim=1), atol=1e-5)
    assert torch.allclose(taps[:, 1280:1320], F.normalize(seen["s3"].flatten(2).std(2), dim=1), atol=1e-5)
    # taps that stop early do not run the deeper blocks
    shallow = TapFeatures(lite0, ["2:avg"])
    assert shallow.last_block == ends[1] and not shallow.need_head


def _brute_k_reciprocal(q, g, k1, lam):
    """Literal reading of Zhong et al. with k2 = 1 and no k1/2 expansion."""
    f = np.concatenate([q, g]).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    n, nq = len(f), len(q)
    d = np.clip(2 - 2 * f @ f.T, 0, None)
    d = d / d.max(axis=0, keepdims=True)
    rank = [list(np.argsort(d[i], kind="stable")) for i in range(n)]
    sets = [{j for j in rank[i][: k1 + 1] if i in rank[j][: k1 + 1]} for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        idx = sorted(sets[i])
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    out = np.zeros((nq, len(g)))
    for a in range(nq):
        for b in range(len(g)):
            inter = sum(min(v[a, t], v[nq + b, t]) for t in range(n))
            union = sum(max(v[a, t], v[nq + b, t]) for t in range(n))
            out[a, b] = (1 - lam) * (1 - inter / union) + lam * d[a, nq + b]
    return -out


def test_k_reciprocal_matches_brute_force_without_expansion(monkeypatch):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    # k1 = 1: the k1/2 expansion looks at round(0.5) = 0 neighbours and adds nothing new;
    # k2 = 1 disables local query expansion, so the literal reading applies exactly.
    np.testing.assert_allclose(k_reciprocal_scores(q, g, k1=1, k2=1, lam=0.3), _brute_k_reciprocal(q, g, 1, 0.3),
                               atol=1e-12)


def test_k_reciprocal_lam_one_keeps_original_order_and_qe_identity():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(5, 4)), rng.normal(size=(8, 4))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = qn @ gn.T
    f = np.concatenate([qn, gn])
    d = np.clip(2 - 2 * f @ f.T, 0, None)
    d = d / d.max(axis=0, keepdims=True)  # the reference code's per-column scaling
    np.testing.assert_allclose(k_reciprocal_scores(q, g, lam=1.0), -d[:5, 5:], atol=1e-12)
    qe = query_expansion_scores(q, g, k=1)  # gallery side unchanged with k=1; query moved towards its top-1
    assert qe.shape == (5, 8) and (qe.argmax(1) == cos.argmax(1)).all()
    with pytest.raises(InputError):
        rerank_scores(q, g, "nope")


def test_method_config_d_options_and_run_method_ensemble(hands_samples, tmp_path):
    from biomatch.hands.methods import EnsembleHead, run_method
    from biomatch.hands.protocol import make_split

    ids = sorted({s.identity for s in hands_samples})[:40]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=0)
    cfg = MethodConfig(name="t", backbones=["tiny_cnn"], objective="cross_view", sampler="pk_view", p=4, k=4,
                       epochs=2, batches_per_epoch=3, head_dims=[16, 8], train_on_val=True, n_heads=2,
                       rerank="k_reciprocal")
    res = run_method(cfg, split, cache=tmp_path, progress=False)
    assert isinstance(res.model, EnsembleHead) and len(res.model.heads) == 2
    assert res.query_emb.shape[1] == 16
    assert np.allclose(np.linalg.norm(res.query_emb, axis=1), 1, atol=1e-5)
    assert 0 <= res.metrics["recall@1"] <= 1 and res.metrics["mean_rank"] >= 1
    with pytest.raises(Exception):
        MethodConfig(name="t", rerank="bogus")


def test_hand_mask_and_background_fill_on_synthetic_image():
    from PIL import Image

    from biomatch.hands.masking import BackgroundFill, hand_mask

    # near-white tinted sheet with a skin-coloured "hand" (rectangle + finger) holding a pale hole
    img = np.full((120, 120, 3), (236, 244, 240), np.uint8)
    img[40:110, 30:90] = (205, 150, 120)
    img[10:40, 50:60] = (205, 150, 120)
    img[70:74, 55:59] = (250, 250, 250)  # a specular spot inside the hand: a hole to fill
    img[2:4, 2:4] = (200, 60, 60)  # a speck of dirt on the sheet: not the largest component
    m = hand_mask(img)
    assert m[60, 60] and m[20, 55] and m[72, 57] and not m[5, 5] and not m[2, 2] and not m[115, 115]
    truth = np.zeros((120, 120), bool)
    truth[40:110, 30:90] = truth[10:40, 50:60] = True
    assert (m == truth).mean() > 0.98
    filled = np.asarray(BackgroundFill("fill", (128, 128, 128))(Image.fromarray(img)))
    assert (filled[5, 5] == 128).all() and (filled[60, 60] == (205, 150, 120)).all()
    only = np.asarray(BackgroundFill("only", (128, 128, 128))(Image.fromarray(img)))
    assert (only[60, 60] == 128).all() and (only[115, 5] == (236, 244, 240)).all()
    assert repr(BackgroundFill("fill")) != repr(BackgroundFill("only"))


def test_score_fusion_embedding_is_mean_of_per_backbone_cosines():
    from biomatch.hands.methods import EnsembleHead, FusionHead, build_model, head_input_dims, model_input_dims

    cfg = MethodConfig(name="t", backbones=["a", "b"], head_dims=[16, 8], n_heads=3, fusion="score")
    dims = head_input_dims(cfg, [12, 20])
    assert dims == [12, 20] and head_input_dims(cfg.model_copy(update={"fusion": "concat"}), [12, 20]) == [32]
    model = build_model(cfg, dims, seed=0).eval()
    assert isinstance(model, FusionHead) and all(isinstance(p, EnsembleHead) for p in model.parts)
    assert model_input_dims(model) == [12, 20]
    x = torch.cat([F.normalize(torch.randn(5, 12), dim=1), F.normalize(torch.randn(5, 20), dim=1)], 1)
    y = torch.cat([F.normalize(torch.randn(4, 12), dim=1), F.normalize(torch.randn(4, 20), dim=1)], 1)
    with torch.no_grad():
        zx, zy = model(x), model(y)
        per = [p(x[:, lo:hi]) @ p(y[:, lo:hi]).T for p, (lo, hi) in zip(model.parts, [(0, 12), (12, 32)])]
        heads = [[F.normalize(h(x[:, :12]), dim=1) @ F.normalize(h(y[:, :12]), dim=1).T for h in model.parts[0].heads]]
    assert zx.shape == (5, 48) and torch.allclose(zx.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(zx @ zy.T, (per[0] + per[1]) / 2, atol=1e-5)
    assert torch.allclose(per[0], sum(heads[0]) / 3, atol=1e-5)  # each part: mean of its heads' cosines


def test_side_scores_bonus_only_on_same_side():
    from biomatch.data.datasets import Sample
    from biomatch.hands.methods import side_scores

    q = [Sample(Path("q.jpg"), "1", view="dorsal", side="left")]
    g = [Sample(Path(f"g{i}.jpg"), "1", view="palmar", side=s) for i, s in enumerate(["left", "right"])]
    np.testing.assert_allclose(side_scores(np.zeros((1, 2)), q, g, 0.5), [[0.5, 0.0]])


def test_run_method_score_fusion_and_side_bonus(hands_samples, tmp_path):
    from biomatch.hands.methods import FusionHead, run_method
    from biomatch.hands.protocol import make_split

    ids = sorted({s.identity for s in hands_samples})[:40]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=0)
    cfg = MethodConfig(name="t", backbones=["tiny_cnn", "tiny_cnn"], image_size=48, objective="cross_view",
                       sampler="pk_view", p=4, k=4, epochs=1, batches_per_epoch=2, head_dims=[16, 8],
                       train_on_val=True, n_heads=2, fusion="score", side_bonus=0.1)
    res = run_method(cfg, split, cache=tmp_path, progress=False)
    assert isinstance(res.model, FusionHead) and len(res.model.parts) == 2
    assert res.query_emb.shape[1] == 32
    assert 0 <= res.metrics["recall@1"] <= 1


def _query_set_changes_more_than_the_scale(plain: np.ndarray, final: np.ndarray) -> None:
    from biomatch.hands.xqda import row_zscore

    assert not np.allclose(final, row_zscore(plain))


def _translation_adds_a_zscored_row_at_its_weight(plain: np.ndarray, final: np.ndarray) -> None:
    # after XQDA's fusion the scores are already z-scored: 0.1 × a z-scored row is added as it is
    np.testing.assert_allclose((final - plain).mean(1), 0, atol=1e-9)
    np.testing.assert_allclose((final - plain).std(1), 0.1, atol=1e-6)


def _colour_adds_a_zscored_row_at_its_weight(plain: np.ndarray, final: np.ndarray) -> None:
    # the colour score is z-scored per query: 0.2 × a row of mean 0 and std 1 is added to the fused scores
    np.testing.assert_allclose((final - plain).mean(1), 0, atol=1e-9)
    np.testing.assert_allclose((final - plain).std(1), 0.2, atol=1e-6)


@pytest.mark.parametrize("fields,before,check", [
    (dict(query_neighbours=3, query_neighbour_weight=1.0), "single_query", _query_set_changes_more_than_the_scale),
    (dict(translation_weight=0.1, translation_lambda=1.0), "before_translation",
     _translation_adds_a_zscored_row_at_its_weight),
    (dict(colour_weight=0.2), "before_colour", _colour_adds_a_zscored_row_at_its_weight),
])
def test_a_late_fusion_step_records_the_same_runs_numbers_before_it(tiny_fusion_case, tmp_path, fields, before, check):
    """The query-set step and the translation run after the heads and XQDA: the run records what
    it scored before the step (equal to a run without it) and ranks by the final scores."""
    from biomatch.hands.methods import run_method
    from biomatch.metrics.retrieval import ranks_from_scores, retrieval_summary

    split, base = tiny_fusion_case
    plain = run_method(MethodConfig(**base), split, cache=tmp_path, progress=False)
    stepped = run_method(MethodConfig(**base, **fields), split, cache=tmp_path, progress=False)
    for metric in ("mean_rank", "recall@1"):
        assert stepped.metrics[f"{before}:{metric}"] == pytest.approx(plain.metrics[metric])
    q_ids, g_ids = [s.identity for s in stepped.queries], [s.identity for s in stepped.gallery]
    assert stepped.metrics["mean_rank"] == retrieval_summary(ranks_from_scores(stepped.score_matrix(), q_ids,
                                                                               g_ids))["mean_rank"]
    check(plain.score_matrix(), stepped.score_matrix())


def test_run_method_input_dropout_trains_other_heads_and_needs_the_stacked_trainer(tiny_fusion_case, tmp_path):
    """input_dropout changes the trained heads (not the features or the split), rate 0 is the plain
    run, and the head-by-head path (here: a lone head validating per epoch) refuses it."""
    from pydantic import ValidationError

    from biomatch.hands.methods import run_method

    split, base = tiny_fusion_case
    base = {**base, "n_heads": 2}
    plain = run_method(MethodConfig(**base), split, cache=tmp_path, progress=False)
    dropped = run_method(MethodConfig(**base, input_dropout=0.5), split, cache=tmp_path, progress=False)
    assert [s.path for s in dropped.queries] == [s.path for s in plain.queries]
    assert not np.allclose(dropped.query_emb, plain.query_emb)
    assert np.allclose(np.linalg.norm(dropped.query_emb, axis=1), 1, atol=1e-5)
    again = run_method(MethodConfig(**base, input_dropout=0.5), split, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(again.query_emb, dropped.query_emb)  # seeded masks: reproducible
    with pytest.raises(ValidationError):
        MethodConfig(**base, input_dropout=1.0)
    lone = {**base, "n_heads": 1, "train_on_val": False, "xqda_weight": 0.0}
    with pytest.raises(InputError, match="input_dropout needs the stacked head trainer"):
        run_method(MethodConfig(**lone, input_dropout=0.2), split, cache=tmp_path, progress=False)


def test_run_method_head_draws_retrain_the_heads_from_other_seeds_and_draw_zero_is_the_row(tiny_fusion_case, tmp_path):
    """head_draw 0 is the recorded run bit for bit; draw 1 trains every head from other seeds
    (same split, same features: other embeddings) and is itself reproducible; a negative draw is refused."""
    from biomatch.hands.methods import HEAD_DRAW_STRIDE, build_model, leaf_seed, model_leaves, run_method

    split, base = tiny_fusion_case
    cfg = MethodConfig(**{**base, "n_heads": 2})
    plain = run_method(cfg, split, cache=tmp_path, progress=False)
    zero = run_method(cfg, split, cache=tmp_path, progress=False, head_draw=0)
    np.testing.assert_array_equal(zero.query_emb, plain.query_emb)
    one = run_method(cfg, split, cache=tmp_path, progress=False, head_draw=1)
    assert [s.path for s in one.queries] == [s.path for s in plain.queries]
    assert not np.allclose(one.query_emb, plain.query_emb)
    np.testing.assert_array_equal(run_method(cfg, split, cache=tmp_path, progress=False, head_draw=1).query_emb,
                                  one.query_emb)
    with pytest.raises(InputError, match="head_draw must be 0 or more"):
        run_method(cfg, split, cache=tmp_path, progress=False, head_draw=-1)
    # the seeds: head j of block b at draw d starts from split seed + d * stride + j * 7919 + b * 104729
    assert leaf_seed(3 + 2 * HEAD_DRAW_STRIDE, 1, 1) == 3 + 2 * HEAD_DRAW_STRIDE + 7919 + 104729
    a, b = (model_leaves(build_model(cfg, [8, 8], seed)) for seed in (0, HEAD_DRAW_STRIDE))
    assert len(a) == 4 and all(not torch.equal(next(x[2].parameters()), next(y[2].parameters())) for x, y in zip(a, b))
