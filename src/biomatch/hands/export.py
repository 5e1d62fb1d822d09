"""A trained single-backbone hand model as one ONNX graph (backbone → L2 norm → head), and its
static int8 copy, so devices can run dorsal→palmar matching without PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomatch.errors import InputError
from biomatch.export import export_onnx, quantize_static_int8
from biomatch.models.backbones import Backbone
from biomatch.models.heads import ProjectionHead


class HandNetwork(nn.Module):
    """Backbone features, L2-normalized as in training, through the head (unnormalized output:
    normalization happens after TTA, outside the graph)."""

    def __init__(self, backbone: Backbone, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.net(F.normalize(self.backbone(x), dim=1))


def export_hand_model(backbone: Backbone, head: ProjectionHead, out_dir: Path, calibration: np.ndarray,
                      input_size: int, int8_weights: str = "int8_7bit") -> tuple[Path, Path]:
    """Write hands.onnx (float) and hands.int8.onnx (static QDQ, calibrated on `calibration`,
    weights laid out as `int8_weights`: see biomatch.export.quantize_static_int8)."""
    if calibration.ndim != 4 or calibration.shape[1:] != (3, input_size, input_size):
        raise InputError(f"calibration must be (N, 3, {input_size}, {input_size}), got {calibration.shape}")
    net = HandNetwork(backbone, head).eval()
    float_path = export_onnx(net, out_dir / "hands.onnx", (input_size, input_size))
    int8_path = quantize_static_int8(float_path, out_dir / "hands.int8.onnx", calibration, weights=int8_weights)
    return float_path, int8_path
