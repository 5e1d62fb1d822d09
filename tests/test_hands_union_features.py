"""One EfficientNet pass serves both the tap statistics and the pooled features: slicing the
union equals computing the wanted taps (or Backbone.forward) directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biomatch.hands.features import UNION_TAPS, TapFeatures, union_slices
from biomatch.models.backbones import create_backbone


def test_union_slices_equal_direct_taps_and_pooled_map():
    bb = create_backbone("efficientnet_lite0", pretrained=False, seed=3).eval()
    x = torch.randn(2, 3, 96, 96)
    union = TapFeatures(bb, UNION_TAPS).eval()
    with torch.no_grad():
        u = union(x)
        assert u.shape[1] == sum(union.tap_dims())
        wanted = ["3:std", "2:avg", "5:avg"]
        direct = TapFeatures(bb, wanted)(x)
        sliced = torch.cat([u[:, sl] for sl in union_slices(union, wanted)], 1)
        torch.testing.assert_close(sliced, direct)
        pooled = torch.cat([u[:, sl] for sl in union_slices(union, ["head:avg"])], 1)
        torch.testing.assert_close(pooled, F.normalize(bb(x), dim=1), atol=1e-5, rtol=1e-4)


def test_feature_bank_runs_the_shared_pass_only_when_a_pooled_map_is_wanted(hands_samples, tmp_path):
    """A taps-only method on a cold cache stops at its deepest tap (the demo's Lite2 pass: ~1/3
    less work); once a pooled-map method has run the shared pass, taps-only methods read it; the
    numbers are the same either way."""
    import numpy as np

    from biomatch.config import MethodConfig
    from biomatch.hands.methods import FeatureBank

    subjects = sorted({s.identity for s in hands_samples})[:6]
    few = [s for s in hands_samples if s.identity in subjects]
    taps = MethodConfig(name="taps", backbones=["efficientnet_lite0"], taps=["2:avg", "5:std"])
    pooled = MethodConfig(name="pooled", backbones=["efficientnet_lite0"])
    shallow = FeatureBank(taps, few, cache=tmp_path / "a", progress=False).plain
    names = [p.name for p in (tmp_path / "a" / "features").iterdir()]
    assert len(names) == 1 and "taps-" + _taps_id(["2:avg", "5:std"]) in names[0]
    FeatureBank(pooled, few, cache=tmp_path / "b", progress=False)
    shared = FeatureBank(taps, few, cache=tmp_path / "b", progress=False).plain
    names = [p.name for p in (tmp_path / "b" / "features").iterdir()]
    assert len(names) == 1 and "taps-" + _taps_id(UNION_TAPS) in names[0]  # no second pass
    np.testing.assert_array_equal(shallow, shared)


def _taps_id(taps) -> str:
    from biomatch.hands.features import taps_id

    return taps_id(list(taps))
