"""A tiny learned palmprint embedder: small CNN + ArcFace (pytorch-metric-learning) trained on session 1.

Kept deliberately small (10 palms x 6-10 images per session): it exists to show RSM on
learned features, not to compete with CCNet. Seeded end to end (init, shuffling, augment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from biomatch.errors import InputError
from biomatch.matching.distances import cosine_dissimilarity
from biomatch.palmprint.ccnet import augment, prepare  # one ROI normalization and jitter for both learned matchers


class PalmNet(nn.Module):
    """4 conv blocks on a 64 x 64 grayscale ROI -> L2-normalized ``dim``-d embedding."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        chans = [1, 16, 32, 64, 96]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)  # 64 -> 4
        self.head = nn.Linear(chans[-1] * 16, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x).flatten(1)), dim=1)


def _prepare(rois: np.ndarray) -> Tensor:
    return prepare(rois, 64)


@dataclass
class LearnedMatcher:
    """CNN embedder trained with ArcFace on labelled ROIs; cosine dissimilarity in [0, 1]."""

    dim: int = 64
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    name: str = "PalmNet+ArcFace"
    model: PalmNet | None = None
    time_budget_s: float | None = None  # stop after this much training-loop wall time (None = all epochs)
    checkpoint: Path | None = None  # final weights are saved here (for the full-scale benchmark)
    log: Path | None = None
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0

    def fit(self, rois: np.ndarray, labels: np.ndarray) -> "LearnedMatcher":
        """Train on ROIs (n, H, W) with palm ids ``labels``; returns self."""
        from pytorch_metric_learning.losses import ArcFaceLoss

        if rois.shape[0] != labels.shape[0] or rois.shape[0] < 2:
            raise InputError(f"need >= 2 ROIs with one label each, got {rois.shape[0]} ROIs and {labels.shape[0]} labels")
        torch.manual_seed(self.seed)  # PML's loss weights are initialized from the global RNG
        gen = torch.Generator().manual_seed(self.seed)
        classes, y = np.unique(labels, return_inverse=True)
        x, yt = _prepare(rois), torch.from_numpy(y)
        model = PalmNet(self.dim)
        loss_fn = ArcFaceLoss(num_classes=len(classes), embedding_size=self.dim, margin=28.6, scale=30)
        opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        model.train()
        t0 = time.perf_counter()
        for epoch in range(self.epochs):
            if self.time_budget_s is not None and time.perf_counter() - t0 >= self.time_budget_s:
                break
            order = torch.randperm(x.shape[0], generator=gen)
            for start in range(0, x.shape[0], self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = loss_fn(model(augment(x[idx], gen)), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            self.history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "elapsed_s": time.perf_counter() - t0})
            if self.log is not None:
                with open(self.log, "a") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} epoch {epoch + 1} loss {float(loss.detach()):.3f} elapsed {time.perf_counter() - t0:.0f} s\n")
        self.train_s = time.perf_counter() - t0
        self.model = model.eval()
        if self.checkpoint is not None:
            torch.save({"model": model.state_dict(), "dim": self.dim, "history": self.history, "elapsed": self.train_s}, self.checkpoint)
        return self

    @classmethod
    def load(cls, checkpoint: Path) -> "LearnedMatcher":
        """A trained matcher from a checkpoint written by ``fit``."""
        state = torch.load(checkpoint, weights_only=False)
        model = PalmNet(state["dim"])
        model.load_state_dict(state["model"])
        return cls(dim=state["dim"], model=model.eval(), history=state["history"], train_s=state["elapsed"], checkpoint=Path(checkpoint))

    @torch.no_grad()
    def encode(self, rois: np.ndarray) -> Tensor:
        """Embeddings (n, dim), L2-normalized."""
        if self.model is None:
            raise InputError("LearnedMatcher.encode called before fit")
        x = _prepare(rois)
        return torch.cat([self.model(x[i : i + 512]) for i in range(0, x.shape[0], 512)])

    def dissimilarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine distance mapped to [0, 1]."""
        return cosine_dissimilarity(a, b, normalize=False)
