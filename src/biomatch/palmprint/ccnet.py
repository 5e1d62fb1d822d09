"""A learned competitive-coding network in the spirit of CCNet (Yang et al., 2023), sized for a CPU.

Why this shape: CompCode works because palm lines are dark, oriented structures and the
*winning* orientation is robust to illumination. CCNet keeps that prior but learns it:
Gabor filters whose parameters (scale, wavelength, aspect, orientation) are trained, a soft
competition over orientations (softmax across the orientation channels, with a learned
temperature), then a few convolutions and an ArcFace head. Here: two scales of 12 learnable
Gabor orientations on a 64 x 64 ROI, each followed by the competition and two conv blocks,
concatenated into a 256-d L2-normalized embedding (cosine dissimilarity for matching).

Training is bounded by wall time (``time_budget_s``) and by ``max_epochs``, with a cosine LR
schedule over whichever of the two runs out first (so the LR reaches 0 either way), a checkpoint
after every epoch (resumable) and a progress log. It runs on any torch device (``device``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from biomatch.errors import InputError
from biomatch.matching.distances import cosine_dissimilarity


class LearnableGabor(nn.Module):
    """``n_orient`` real Gabor kernels with trainable sigma, wavelength, aspect and angle (zero-mean)."""

    def __init__(self, n_orient: int, size: int, sigma: float, wavelength: float, stride: int = 1) -> None:
        super().__init__()
        self.size, self.stride = size, stride
        self.theta = nn.Parameter(torch.arange(n_orient, dtype=torch.float32) * math.pi / n_orient)
        self.log_sigma = nn.Parameter(torch.full((n_orient,), math.log(sigma)))
        self.log_wavelength = nn.Parameter(torch.full((n_orient,), math.log(wavelength)))
        self.log_gamma = nn.Parameter(torch.zeros(n_orient))
        half = size // 2
        ys, xs = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
        self.register_buffer("xs", xs, persistent=False)
        self.register_buffer("ys", ys, persistent=False)

    def kernels(self) -> Tensor:
        """(n_orient, 1, size, size) kernels, zero mean and unit L1 norm (no DC: lighting picks no winner)."""
        th = self.theta[:, None, None]
        xr = self.xs * torch.cos(th) + self.ys * torch.sin(th)
        yr = -self.xs * torch.sin(th) + self.ys * torch.cos(th)
        sigma = self.log_sigma.exp()[:, None, None]
        gamma = self.log_gamma.exp()[:, None, None]
        lam = self.log_wavelength.exp()[:, None, None]
        k = torch.exp(-(xr**2 + (gamma * yr) ** 2) / (2 * sigma**2)) * torch.cos(2 * math.pi * xr / lam)
        k = k - k.mean(dim=(1, 2), keepdim=True)
        k = k / k.abs().sum(dim=(1, 2), keepdim=True)
        return k.unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernels(), stride=self.stride, padding=self.size // 2)


class Competition(nn.Module):
    """Soft winner-take-all over orientations: softmax(-beta * response) across channels.

    The minus sign: a dark line gives the most *negative* response at its orientation (as in
    CompCode's argmin). As beta grows this tends to CompCode's one-hot winner.
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    def forward(self, response: Tensor) -> Tensor:
        return torch.softmax(-self.log_beta.exp() * response, dim=1)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class CompetitiveBranch(nn.Module):
    """Learnable Gabor bank -> orientation competition -> 2 conv blocks."""

    def __init__(self, n_orient: int, size: int, sigma: float, wavelength: float, width: int) -> None:
        super().__init__()
        self.gabor = LearnableGabor(n_orient, size, sigma, wavelength, stride=2)
        self.compete = Competition()
        self.convs = nn.Sequential(_conv_block(n_orient, width), _conv_block(width, 2 * width))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(self.compete(self.gabor(x)))


class CompNetLite(nn.Module):
    """Two competitive branches (coarse and fine Gabor scale) on a 64 x 64 ROI -> ``dim``-d unit embedding."""

    def __init__(self, dim: int = 256, n_orient: int = 12, width: int = 32, size: int = 64) -> None:
        super().__init__()
        if size % 8:
            raise InputError(f"input size must be a multiple of 8, got {size}")
        self.size = size
        self.branches = nn.ModuleList([
            CompetitiveBranch(n_orient, 17, 2.8, 5.5, width),  # CompCode's 35 px / sigma 5.6 / lambda 11 at half size
            CompetitiveBranch(n_orient, 9, 1.5, 3.0, width),
        ])
        feat = len(self.branches) * 2 * width * (size // 8) ** 2
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(feat, dim), nn.BatchNorm1d(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise InputError(f"expected (n, 1, H, W) grayscale input, got {tuple(x.shape)}")
        z = torch.cat([b(x).flatten(1) for b in self.branches], dim=1)
        return F.normalize(self.head(z), dim=1)


class ArcFaceHead(nn.Module):
    """Additive angular margin classifier (Deng et al., ArcFace 2019): s * cos(theta_y + m)."""

    def __init__(self, dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        cos = emb @ F.normalize(self.weight, dim=1).T
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta.gather(1, labels[:, None]) + self.margin)
        # keep the target logit monotonic past theta > pi - m (ArcFace's "easy margin" fallback)
        target = torch.where(theta.gather(1, labels[:, None]) < math.pi - self.margin, target, cos.gather(1, labels[:, None]) - self.margin * math.sin(self.margin))
        logits = cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(self.scale * logits, labels)


def resize_rois(rois: np.ndarray, size: int) -> Tensor:
    """(n, H, W) in [0, 1] -> (n, 1, size, size) float32, area interpolation (none if already that size)."""
    x = torch.from_numpy(np.ascontiguousarray(rois, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def prepare(rois: np.ndarray, size: int) -> Tensor:
    """(n, H, W) in [0, 1] -> (n, 1, size, size), each image zero-mean unit-variance."""
    x = resize_rois(rois, size)
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-6)


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """ROI misalignment between sessions (rotation +-8 deg, shift +-6 %, scale +-5 %) and contrast.

    The random draws come from ``gen`` on the CPU whatever ``x``'s device, so a run is the same
    sequence of augmentations on a CPU and a GPU."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * (2 * math.pi / 180 * 8)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.12
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.1
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return out * gain.to(x.device)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (recorded next to the checkpoint)."""

    dim: int = 256
    n_orient: int = 12
    width: int = 32
    size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    batch_size: int = 64
    max_epochs: int = 100
    time_budget_s: float = 1500.0
    seed: int = 0
    threads: int = 1


@dataclass
class CompNetMatcher:
    """Trainable matcher: ``fit`` (time-bounded, checkpointed) then cosine dissimilarity in [0, 1]."""

    config: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: Path | None = None
    log: Path | None = None
    device: str = "cpu"  # where ``fit`` trains; checkpoints and ``encode`` are on the CPU
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    name: str = "CompNet-lite (learned competitive coding)"
    model: CompNetLite | None = None
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0

    def _log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        if self.log is not None:
            with open(self.log, "a") as fh:
                fh.write(line + "\n")
        else:
            print(line, flush=True)

    def fit(self, rois: np.ndarray, labels: np.ndarray) -> CompNetMatcher:
        """Train with ArcFace on ROIs (n, H, W) and palm ids; resumes from ``checkpoint`` if present."""
        cfg = self.config
        if rois.shape[0] != labels.shape[0] or rois.shape[0] < 2:
            raise InputError(f"need >= 2 ROIs with one label each, got {rois.shape[0]} and {labels.shape[0]}")
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        classes, y = np.unique(labels, return_inverse=True)
        dev = torch.device(self.device)
        x, yt = prepare(rois, cfg.size).to(dev), torch.from_numpy(y).to(dev)
        model = CompNetLite(cfg.dim, cfg.n_orient, cfg.width, cfg.size).to(dev)
        head = ArcFaceHead(cfg.dim, len(classes)).to(dev)
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        epoch, elapsed = 0, 0.0
        if self.checkpoint is not None and Path(self.checkpoint).is_file():
            state = torch.load(self.checkpoint, weights_only=False, map_location=dev)
            if state.get("config") != asdict(cfg) or state.get("n_classes") != len(classes):
                raise InputError(f"checkpoint {self.checkpoint} was made with another config or label set")
            model.load_state_dict(state["model"])
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            epoch, elapsed, self.history = state["epoch"], state["elapsed"], state["history"]
            self._log(f"resumed at epoch {epoch}, {elapsed:.0f} s used")
        n_batches = max(1, x.shape[0] // cfg.batch_size)
        while epoch < cfg.max_epochs and elapsed < cfg.time_budget_s:
            model.train()
            t0 = time.perf_counter()
            order = torch.randperm(x.shape[0], generator=gen)
            total_t: Tensor | None = None
            for b in range(n_batches):
                step = epoch * n_batches + b + 1
                frac = min(1.0, max((elapsed + time.perf_counter() - t0) / cfg.time_budget_s,
                                    step / (cfg.max_epochs * n_batches)))
                lr = cfg.lr * min(1.0, step / (2 * n_batches))  # 2-epoch warm-up
                lr *= 0.5 * (1 + math.cos(math.pi * frac))  # cosine over the time or epoch budget, whichever ends first
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(dev)
                loss = head(model(augment(x[idx], gen)), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total_t = loss.detach() if total_t is None else total_t + loss.detach()  # no GPU sync per step
            epoch += 1
            total = float(total_t) / n_batches
            elapsed += time.perf_counter() - t0
            self.history.append({"epoch": epoch, "loss": total, "elapsed_s": elapsed, "lr": lr})
            self._log(f"epoch {epoch} loss {total:.3f} lr {lr:.2e} elapsed {elapsed:.0f}/{cfg.time_budget_s:.0f} s")
            last = epoch >= cfg.max_epochs or elapsed >= cfg.time_budget_s
            if self.checkpoint is not None and (last or epoch % self.checkpoint_every == 0):
                tmp = Path(str(self.checkpoint) + ".tmp")
                torch.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                            "gen": gen.get_state(), "epoch": epoch, "elapsed": elapsed, "history": self.history,
                            "config": asdict(cfg), "n_classes": len(classes)}, tmp)
                tmp.replace(self.checkpoint)
        self.train_s = elapsed
        self.model = model.cpu().eval()
        return self

    @classmethod
    def load(cls, checkpoint: Path, **kwargs) -> CompNetMatcher:
        """A trained matcher from a checkpoint written by ``fit`` (no training)."""
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")
        cfg = TrainConfig(**state["config"])
        model = CompNetLite(cfg.dim, cfg.n_orient, cfg.width, cfg.size)
        model.load_state_dict(state["model"])
        return cls(config=cfg, checkpoint=Path(checkpoint), model=model.eval(), history=state["history"],
                   train_s=state["elapsed"], **kwargs)

    @torch.no_grad()
    def encode(self, rois: np.ndarray, batch: int = 256) -> Tensor:
        """Embeddings (n, dim), L2-normalized."""
        if self.model is None:
            raise InputError("CompNetMatcher.encode called before fit/load")
        x = prepare(rois, self.config.size)
        return torch.cat([self.model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])

    def dissimilarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine distance mapped to [0, 1]."""
        return cosine_dissimilarity(a, b, normalize=False)


def save_history(matcher: CompNetMatcher, path: Path) -> None:
    """Loss/LR per epoch as JSON (for the report)."""
    Path(path).write_text(json.dumps(matcher.history, indent=1) + "\n")
