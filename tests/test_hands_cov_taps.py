"""Channel-covariance taps (`"<stage>:cov"`) and the XQDA-only taps that use them (`xqda_taps`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from biomatch.config import MethodConfig
from biomatch.data.transforms import eval_transform
from biomatch.embeddings import extract
from biomatch.hands.features import TapFeatures, cov_pool
from biomatch.models.backbones import create_backbone
from biomatch.models.onnx_features import OrtFeatures


def test_cov_pool_matches_numpy_covariance():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    got = cov_pool(x).numpy()
    rows, cols = np.triu_indices(5)
    for b in range(3):
        cov = np.cov(x[b].reshape(5, -1).numpy(), bias=True)  # population covariance over positions
        upper = cov[rows, cols]
        np.testing.assert_allclose(got[b], np.sign(upper) * np.sqrt(np.abs(upper)), atol=1e-12)
    assert got.shape == (3, 15)


def test_cov_taps_widths_and_per_tap_norm():
    bb = create_backbone("efficientnet_lite0", pretrained=False, seed=1).eval()
    module = TapFeatures(bb, ["2:avg", "2:cov", "3:cov"]).eval()
    assert module.tap_dims() == [24, 24 * 25 // 2, 40 * 41 // 2]
    with torch.no_grad():
        out = module(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, sum(module.tap_dims()))
    bounds = np.cumsum([0, *module.tap_dims()])
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # each tap's vector is L2-normalized, as for the other pools
        torch.testing.assert_close(out[:, lo:hi].norm(dim=1), torch.ones(2))


def test_cov_taps_on_onnxruntime_match_pytorch_at_any_batch_size(hands_samples):
    """The exported graph keeps the batch symbolic (a fixed reshape once broke batches other than
    the traced one)."""
    photos = sorted(hands_samples, key=lambda s: str(s.path))[:5]
    module = TapFeatures(create_backbone("efficientnet_lite0"), ["2:std", "3:cov"]).eval()
    tf = eval_transform(module.input_size, module.mean, module.std)
    ref = extract(module, photos, tf, batch_size=5, progress=False)
    ort = OrtFeatures(module)
    for batch in (5, 2):
        np.testing.assert_allclose(extract(ort, photos, tf, batch_size=batch, progress=False), ref, atol=2e-5, rtol=0)


def _cfg(**kw) -> MethodConfig:
    base = dict(name="x", backbones=["efficientnet_lite0"], taps=["2:avg", "5:std"], xqda_weight=0.3,
                xqda_taps=["2:cov"])
    return MethodConfig(**{**base, **kw})


def test_xqda_taps_config_errors():
    assert _cfg().xqda_taps == ["2:cov"]
    with pytest.raises(ValidationError, match="xqda_weight"):
        _cfg(xqda_weight=0.0)
    with pytest.raises(ValidationError, match="mirror"):
        _cfg(tta=True)
    with pytest.raises(ValidationError, match="repeats"):
        _cfg(xqda_taps=["2:avg"])
    with pytest.raises(ValidationError, match="bad tap"):
        _cfg(xqda_taps=["2:covariance"])


def test_feature_bank_heads_read_the_same_features_with_xqda_taps(hands_samples, tmp_path):
    """One backbone pass computes both; the heads' columns equal those of the method without
    `xqda_taps` (float noise of another exported graph), XQDA gets them plus the covariances."""
    from biomatch.hands.methods import FeatureBank

    subjects = sorted({s.identity for s in hands_samples})[:4]
    few = [s for s in hands_samples if s.identity in subjects]
    plain_cfg = _cfg(xqda_taps=[])
    with_cov = FeatureBank(_cfg(), few, cache=tmp_path, progress=False)
    without = FeatureBank(plain_cfg, few, cache=tmp_path, progress=False)
    np.testing.assert_allclose(with_cov.plain, without.plain, atol=2e-5, rtol=0)
    assert with_cov.dims == without.dims == [24 + 112]
    xq, dims = with_cov.xqda_features(few)
    assert dims == [24 + 112 + 300] and xq.shape == (len(few), 436)
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-5)
    # the heads' taps inside XQDA's block are the same vectors, rescaled by the block's normalization
    head_part = xq[:, :136] / np.linalg.norm(xq[:, :136], axis=1, keepdims=True)
    rows = [with_cov.index[s.path] for s in few]
    np.testing.assert_allclose(head_part, with_cov.plain[rows], atol=1e-5)
    plain_xq, plain_dims = without.xqda_features(few)
    np.testing.assert_array_equal(plain_xq, without.canonical(few)[0])
    assert plain_dims == without.dims


def test_heads_read_xqda_needs_xqda_taps():
    assert _cfg(heads_read_xqda=True).heads_read_xqda
    with pytest.raises(ValidationError, match="heads_read_xqda needs xqda_taps"):
        MethodConfig(name="x", backbones=["efficientnet_lite0"], taps=["2:avg"], heads_read_xqda=True)


def test_append_whitened_blocks_matches_a_loop_per_block():
    from biomatch.hands.xqda import append_whitened_blocks, fit_whitening

    rng = np.random.default_rng(0)
    head, extra = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=(30, 9))
    whites = [fit_whitening(extra[:20, :4], 3), fit_whitening(extra[:20, 4:], 2)]
    out, widths = append_whitened_blocks(head, [2, 3], extra, [4, 5], whites)
    assert widths == [2 + 3, 3 + 2] and out.dtype == np.float32
    for i in range(30):
        w0, w1 = whites[0](extra[i:i + 1, :4])[0], whites[1](extra[i:i + 1, 4:])[0]
        want = np.concatenate([head[i, :2], w0 / np.linalg.norm(w0), head[i, 2:], w1 / np.linalg.norm(w1)])
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one of each per backbone"):
        append_whitened_blocks(head, [2, 3], extra, [9], whites[:1])
    with pytest.raises(ValueError, match="do not add up"):
        append_whitened_blocks(head, [2, 2], extra, [4, 5], whites)


def test_run_method_heads_read_the_whitened_xqda_features(hands_samples, tmp_path):
    """The heads' first layer reads the taps plus XQDA's whitened block; the run scores every query."""
    from biomatch.hands.methods import FeatureBank, run_method
    from biomatch.hands.protocol import make_split
    from biomatch.hands.xqda import fit_whitening

    subjects = sorted({s.identity for s in hands_samples})[:12]
    split = make_split([s for s in hands_samples if s.identity in subjects], seed=0)
    cfg = _cfg(heads_read_xqda=True, xqda_pca=16, objective="cross_view", sampler="pk_view", p=4, k=4, epochs=1,
               batches_per_epoch=2, head_dims=[32, 8], train_on_val=True)
    res = run_method(cfg, split, cache=tmp_path, progress=False)
    first = next(m for m in res.model.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == 136 + 16
    assert len(res.ranks.first_rank) == len(res.queries)
    # the appended block is the unit rows of XQDA's whitening fitted on the training images
    train = split.train + split.val
    bank = FeatureBank(cfg, train, cache=tmp_path, progress=False)
    xq, _ = bank.xqda_features(train)
    white = fit_whitening(xq, 16)
    bank.append_xqda_to_heads([white])
    w = white(xq)
    np.testing.assert_allclose(bank.canonical(train)[0][:, 136:], w / np.linalg.norm(w, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs xqda_taps"):
        FeatureBank(_cfg(xqda_taps=[]), train, cache=tmp_path, progress=False).append_xqda_to_heads([white])
