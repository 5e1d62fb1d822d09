"""The hand model as ONNX: float matches torch; static int8 stays close."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.export import OnnxEmbedder, Preprocess
from biomatch.hands.export import HandNetwork, export_hand_model
from biomatch.models.backbones import create_backbone
from biomatch.models.heads import ProjectionHead


def test_onnx_float_matches_torch_and_int8_is_close(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn").eval()
    head = ProjectionHead([64, 32, 16]).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(32, 3, 64, 64, generator=g).numpy()
    x = torch.rand(6, 3, 64, 64, generator=g)
    with torch.no_grad():
        ref = HandNetwork(backbone, head)(x).numpy()
    fp, q8 = export_hand_model(backbone, head, tmp_path, calib, 64)
    run = {p: OnnxEmbedder(p, preprocess=Preprocess(size=(64, 64), flip_tta=False)).run(x.numpy()) for p in (fp, q8)}
    np.testing.assert_allclose(run[fp], ref, rtol=1e-4, atol=1e-5)
    cos = (run[q8] * ref).sum(1) / np.linalg.norm(run[q8], axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9
    assert q8.stat().st_size < fp.stat().st_size
    with pytest.raises(InputError, match="calibration"):
        export_hand_model(backbone, head, tmp_path, calib[:, :, :32], 64)
