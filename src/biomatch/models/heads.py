"""Projection heads: backbone features → embedding (optionally L2-normalized)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from biomatch.errors import InputError


class ProjectionHead(nn.Module):
    """MLP `dims[0] → … → dims[-1]` (e.g. 2048→512→128) with BN+ReLU between layers."""

    def __init__(self, dims: Sequence[int], normalize: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise InputError(f"head dims need at least input and output sizes >= 1, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if dropout and i == 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.dims, self.normalize = list(dims), normalize

    @property
    def out_dim(self) -> int:
        return self.dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return F.normalize(z, dim=-1) if self.normalize else z


class EmbeddingModel(nn.Module):
    """Backbone + head: the trainable network for finetuning and for export."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
