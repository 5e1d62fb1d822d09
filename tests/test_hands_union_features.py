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
