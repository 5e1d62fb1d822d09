"""Traffic-sign levers of the workbench: the small from-scratch CNN, the `sign` augmentation
(affine + colour, no flip) and the optimizer / warmup / ArcFace-scale options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.models.backbones import create_backbone
from biomatch.workbench.experiment import ExperimentConfig, RowsDataset, make_objective_for


def test_small_cnn_output_shape() -> None:
    b = create_backbone("small_cnn", pretrained=False)
    out = b(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, b.feat_dim) == (2, 192)


def test_sign_augment_keeps_shape_and_label_and_is_seeded() -> None:
    x = torch.randn(4, 3, 48, 48)
    labels = np.array([3, 1, 4, 1])
    a, b = RowsDataset(x, labels, "sign", seed=5), RowsDataset(x, labels, "sign", seed=5)
    for i in range(4):
        xa, ya, va = a[i]
        xb, _, _ = b[i]
        assert xa.shape == x[i].shape and int(ya) == labels[i] and va == 0
        assert torch.equal(xa, xb)
        assert not torch.equal(xa, x[i])


def test_sign_augment_does_not_mirror() -> None:
    """A left-right asymmetric image keeps its handedness under every draw."""
    x = torch.zeros(1, 3, 48, 48)
    x[..., :, :24] = 1.0
    ds = RowsDataset(x, np.array([0]), "sign", seed=0)
    for _ in range(20):
        img = ds[0][0]
        assert img[:, :, :16].mean() > img[:, :, 32:].mean()


def test_config_options() -> None:
    cfg = ExperimentConfig(strategy="arcface", backbone="small_cnn", augment="sign", arc_scale=30.0, dim=16)
    assert cfg.scratch and cfg.per_image_standardize
    assert make_objective_for(cfg, 5).loss.scale == 30.0
    with pytest.raises(InputError):
        ExperimentConfig(augment="mirror")
