"""Tap features, re-ranking and the method-(d) options of run_method (fast: random-init nets)."""

from __future__ import annotations

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
