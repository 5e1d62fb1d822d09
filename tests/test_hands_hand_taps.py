"""Hand-only tap statistics (`mavg`/`mstd`/`mcov`): the skin mask inside the feature pass, the
weighted pooling against a slow loop, the ONNX path, and the second XQDA block they make."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.data.images import load_image
from biomatch.data.transforms import eval_transform
from biomatch.embeddings import extract
from biomatch.errors import InputError
from biomatch.hands.features import TapFeatures, cov_pool, hand_weights, masked_pool, pool_map
from biomatch.hands.masking import hand_mask
from biomatch.models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from biomatch.models.onnx_features import OrtFeatures


def _slow_masked_stats(x: np.ndarray, mask: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean, std and covariance of one (C, h, w) map, each cell weighted by the share of
    hand pixels in its stride×stride block of the (H, W) mask (+1e-4), one position at a time."""
    c, h, w = x.shape
    weights = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            weights[i, j] = mask[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean() + 1e-4
    weights /= weights.sum()
    mean = np.zeros(c)
    for i in range(h):
        for j in range(w):
            mean += weights[i, j] * x[:, i, j]
    cov = np.zeros((c, c))
    for i in range(h):
        for j in range(w):
            d = x[:, i, j] - mean
            cov += weights[i, j] * np.outer(d, d)
    return mean, np.sqrt(np.diag(cov)), cov


def test_masked_pool_matches_a_slow_weighted_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, 20, 24, generator=gen) > 0.4).double()  # stride 4
    rows, cols = np.triu_indices(4)
    for b in range(2):
        mean, std, cov = _slow_masked_stats(x[b].numpy(), mask[b, 0].numpy(), 4)
        np.testing.assert_allclose(masked_pool(x, mask, "mavg")[b].numpy(), mean, atol=1e-12)
        np.testing.assert_allclose(masked_pool(x, mask, "mstd")[b].numpy(), std, atol=1e-10)
        upper = cov[rows, cols]
        np.testing.assert_allclose(masked_pool(x, mask, "mcov")[b].numpy(), np.sign(upper) * np.sqrt(np.abs(upper)),
                                   atol=1e-10)


def test_masked_pool_tiles_maps_rounded_up_like_same_padding():
    """Lite2 at 260 px gives a 33×33 stage-3 map (260 / 8 rounded up): the mask must tile it."""
    x = torch.randn(1, 3, 33, 33)
    mask = torch.ones(1, 1, 260, 260)
    torch.testing.assert_close(masked_pool(x, mask, "mavg"), x.mean(dim=(-2, -1)))
    with pytest.raises(InputError, match="does not tile"):
        masked_pool(torch.randn(1, 3, 6, 6), torch.ones(1, 1, 20, 20), "mavg")  # stride 4 makes 5×5 cells
    with pytest.raises(InputError, match="hand-only pool"):
        masked_pool(x, mask, "avg")


def test_no_hand_pools_like_the_whole_image_pools():
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    empty = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(masked_pool(x, empty, "mavg"), pool_map(x, "avg"))
    torch.testing.assert_close(masked_pool(x, empty, "mcov"), cov_pool(x))
    with pytest.raises(InputError, match="needs the hand mask"):
        pool_map(x, "mstd")


def test_hand_weights_agree_with_the_segmentation_used_for_the_controls(hands_samples):
    """The in-graph mask (no connected components) covers the same pixels as `hand_mask` on real
    photos, to within a thin border."""
    photos = sorted(hands_samples, key=lambda s: str(s.path))[::40][:8]
    ious = []
    for s in photos:
        img = load_image(s.path).resize((224, 224))
        ref = hand_mask(np.asarray(img))
        x = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD)(img)[None]
        got = hand_weights(x, IMAGENET_MEAN, IMAGENET_STD)[0, 0].numpy() > 0.5
        ious.append((got & ref).sum() / max((got | ref).sum(), 1))
    assert min(ious) > 0.8 and np.mean(ious) > 0.9, ious


def test_hand_only_statistics_ignore_the_sheet():
    """A skin-coloured square on a white sheet: moving the sheet's shade leaves the hand-only mean
    of the raw pixels (a stand-in map at stride 1) unchanged, the whole-image mean follows it."""
    img = torch.full((1, 3, 32, 32), 0.97)
    img[..., 8:24, 8:24] = torch.tensor([0.8, 0.55, 0.45]).view(1, 3, 1, 1)
    darker = img.clone()
    darker[..., :8, :] = 0.9  # a greyer strip of sheet (still the sheet: unsaturated, bright)

    def normalized(t: torch.Tensor) -> torch.Tensor:
        return (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    hand = hand_weights(normalized(img), IMAGENET_MEAN, IMAGENET_STD)
    assert 16 * 16 - 4 * 3 <= hand.sum() <= 16 * 16  # the majority filter rounds the corners off
    torch.testing.assert_close(masked_pool(darker, hand_weights(normalized(darker), IMAGENET_MEAN, IMAGENET_STD),
                                           "mavg"), masked_pool(img, hand, "mavg"), atol=1e-4, rtol=0)
    assert (pool_map(darker, "avg") - pool_map(img, "avg")).abs().max() > 0.01


def test_hand_taps_on_onnxruntime_match_pytorch(hands_samples):
    photos = sorted(hands_samples, key=lambda s: str(s.path))[:4]
    module = TapFeatures(create_backbone("efficientnet_lite0"), ["2:avg", "3:mstd", "3:mcov"]).eval()
    assert module.hand_only() == [False, True, True]
    assert module.tap_dims() == [24, 40, 40 * 41 // 2]
    tf = eval_transform(module.input_size, module.mean, module.std)
    ref = extract(module, photos, tf, batch_size=4, progress=False)
    for batch in (4, 3):
        np.testing.assert_allclose(extract(OrtFeatures(module), photos, tf, batch_size=batch, progress=False), ref,
                                   atol=2e-5, rtol=0)


def test_hand_taps_make_their_own_xqda_block(hands_samples, tmp_path):
    """Whole-image and hand-only XQDA taps of one backbone are two blocks, each L2-normalized;
    the heads' features and the whole-image block equal those of the method without them."""
    from biomatch.config import MethodConfig
    from biomatch.hands.methods import FeatureBank

    subjects = sorted({s.identity for s in hands_samples})[:3]
    few = [s for s in hands_samples if s.identity in subjects]
    base = dict(name="x", backbones=["efficientnet_lite0"], taps=["2:avg", "5:std"], xqda_weight=0.3)
    plain = FeatureBank(MethodConfig(**base, xqda_taps=["2:cov"]), few, cache=tmp_path, progress=False)
    both = FeatureBank(MethodConfig(**base, xqda_taps=["2:mavg", "2:cov", "3:mcov"]), few, cache=tmp_path,
                       progress=False)
    np.testing.assert_allclose(both.plain, plain.plain, atol=2e-5, rtol=0)
    xq, dims = both.xqda_features(few)
    assert dims == [24 + 112 + 300, 24 + 820]
    np.testing.assert_allclose(xq[:, :dims[0]], plain.xqda_features(few)[0], atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(xq[:, dims[0]:], axis=1), 1.0, atol=1e-5)
