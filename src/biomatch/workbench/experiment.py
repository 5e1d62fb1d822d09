"""Train one loss/mining strategy on an identity dataset and score it with k-NN and NCM.

Three modes:
- frozen: a pretrained source (EfficientNet-Lite0/2, MobileFaceNet) computes cached features
  once; only a projection head is trained (seconds per strategy on a 2-core CPU);
- scratch: `tiny_cnn` is trained end to end on 64×64 images held in memory as tensors;
- finetune (`finetune=True`): a pretrained torch backbone + head trained end to end on small
  images (e.g. 64 px), for data whose look ImageNet features do not capture (traffic signs).

Every strategy sees about the same number of embeddings per epoch, so the loss and
validation curves of the comparison are on one time axis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from biomatch.data.datasets import Sample
from biomatch.data.samplers import PKSampler
from biomatch.errors import InputError
from biomatch.metrics.classification import KNNClassifier, NearestClassMean, classification_report
from biomatch.objectives import make_objective
from biomatch.training import History, TrainConfig, fit
from biomatch.workbench.data import IdentitySplit
from biomatch.workbench.networks import RowTripletObjective
from biomatch.workbench.pairs import TupleBatchSampler, balanced_pairs, triplets

SCRATCH_BACKBONES = ("tiny_cnn", "small_cnn")
AUGMENTS = ("none", "shift", "shift_flip", "sign")
# strategy → (how batches are drawn, what loss is applied)
STRATEGIES: dict[str, str] = {
    "contrastive": "twin network, balanced random pairs, squared-hinge contrastive (y=1 same)",
    "triplet_random": "triplet network, uniformly random triplets",
    "triplet_batch_all": "PK batches, triplet loss over all valid triplets (non-zero averaged)",
    "triplet_batch_hard": "PK batches, hardest positive and negative per anchor",
    "triplet_semi_hard": "PK batches, semi-hard negatives (FaceNet)",
    "multi_similarity": "PK batches, multi-similarity loss + miner",
    "arcface": "PK batches, ArcFace (additive angular margin) classification loss",
}


# test-time views: (zoom, shift x, shift y in pixels); never flipped
TTA_VIEWS = ((1.08, 0.0, 0.0), (1.0, 2.0, 0.0), (1.0, -2.0, 0.0), (1.0, 0.0, 2.0))


@dataclass
class ExperimentConfig:
    """One run. `dim` is the embedding size; `hidden=0` makes the head linear."""

    strategy: str = "triplet_batch_hard"
    backbone: str = "efficientnet_lite0"
    dim: int = 128
    hidden: int = 512
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    p: int = 16
    k: int = 4
    margin: float | None = None
    image_size: int = 64
    augment: str = "shift"  # image modes: none | shift | shift_flip | sign (affine ±10°, zoom, colour; no flip)
    standardize: bool = True  # scratch mode: per-image, per-channel standardization (dark signs)
    finetune: bool = False  # train a pretrained backbone end to end on images of image_size
    knn_k: int = 5
    seed: int = 0
    warmup_epochs: int = 0
    optimizer: str = "adamw"
    arc_scale: float = 64.0  # ArcFace logit scale (margin: `margin`, degrees)
    roi_crop: bool = False  # crop each image to its official ROI box (root/index.csv), resize back
    roi_margin: float = 0.0  # extra margin around the ROI box, fraction of the box size per side
    train_on_val: bool = False  # train on train+val for the fixed epoch count, keep the last epoch
    tta: int = 0  # test-time augmentation: average the embedding with `tta` shifted/zoomed copies (0-4)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.dim < 1 or self.epochs < 1 or self.p < 2 or self.k < 2:
            raise InputError("dim and epochs must be >= 1, p and k >= 2")
        if not 0 <= self.tta <= len(TTA_VIEWS):
            raise InputError(f"tta must be 0..{len(TTA_VIEWS)}")
        if self.augment not in AUGMENTS:
            raise InputError(f"unknown augment {self.augment!r}; use {', '.join(AUGMENTS)}")

    @property
    def scratch(self) -> bool:
        return self.backbone in SCRATCH_BACKBONES

    @property
    def on_images(self) -> bool:
        """Trained on images (scratch or finetune) rather than on cached features."""
        return self.scratch or self.finetune

    @property
    def per_image_standardize(self) -> bool:
        return self.standardize and self.scratch  # pretrained backbones expect ImageNet normalization

    @property
    def name(self) -> str:
        return f"{self.backbone}{'-ft' if self.finetune else ''}/{self.strategy}/d{self.dim}"


@dataclass
class ExperimentResult:
    """Curves, test metrics and embeddings of one run (test embeddings for maps/look-alikes)."""

    config: ExperimentConfig
    history: History
    metrics: dict[str, float]
    timing: dict[str, float]
    train_emb: np.ndarray
    train_labels: np.ndarray
    test_emb: np.ndarray
    test_labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    @property
    def val_accuracy(self) -> list[float]:
        return [v["accuracy"] for v in self.history.val]

    def summary(self) -> dict:
        return {"config": asdict(self.config), "metrics": self.metrics, "timing": self.timing,
                "loss": self.history.loss, "val_accuracy": self.val_accuracy,
                "best_epoch": self.history.best_epoch}


class RowsDataset(Dataset):
    """Rows of a tensor as (input, label, view=0); in image modes images are augmented by a
    seeded random shift (pad 4, crop) and optional horizontal flip, or with `sign` by a random
    affine map (rotation ±10°, zoom 1–1.15 ≈ crop scale 0.75–1 of the area, shift ±4 px, border
    replicated) and a per-channel gain/offset jitter; never flipped (flips change some signs)."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray, augment: str = "none", seed: int = 0) -> None:
        self.x, self.labels = x, torch.as_tensor(labels)
        self.augment, self.gen = augment, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x)

    def _sign(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(7, generator=self.gen)
        angle = (u[0] * 2 - 1) * (10 * torch.pi / 180)
        zoom = 1 + 0.15 * u[1]
        h, w = x.shape[1:]
        tx, ty = (u[2] * 2 - 1) * 8 / w, (u[3] * 2 - 1) * 8 / h  # ±4 px in [-1, 1] coordinates
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, tx]), torch.stack([sin, cos, ty])])[None]
        grid = nn.functional.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = nn.functional.grid_sample(x[None], grid, mode="bilinear", padding_mode="border",
                                      align_corners=False)[0]
        gain = 1 + (torch.rand(x.shape[0], 1, 1, generator=self.gen) * 2 - 1) * 0.15
        offset = (u[4] * 2 - 1) * 0.2
        return x * gain + offset

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment == "sign" and x.ndim == 3:
            x = self._sign(x)
        elif self.augment != "none" and x.ndim == 3:
            pad = 4
            dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=self.gen))
            x = nn.functional.pad(x[None], (pad,) * 4, mode="replicate")[0, :, dy : dy + self.x.shape[2],
                                                                        dx : dx + self.x.shape[3]]
            if self.augment == "shift_flip" and bool(torch.rand((), generator=self.gen) < 0.5):
                x = x.flip(-1)
        return x, self.labels[i], 0


def roi_crop_image(img, box: Sequence[float], orig_size: tuple[int, int], margin: float = 0.0):
    """A PIL image cropped to an ROI box given in original pixel coordinates (see `roi_to_image`)."""
    from biomatch.workbench.data import roi_to_image

    x1, y1, x2, y2 = roi_to_image(box, orig_size, img.size, margin)
    return img.crop((round(x1), round(y1), max(round(x2), round(x1) + 1), max(round(y2), round(y1) + 1)))


def load_image_tensor(samples: Sequence[Sample], size: int, progress: bool = False,
                      standardize: bool = False, roi_crop: bool = False, roi_margin: float = 0.0) -> torch.Tensor:
    """(N, 3, size, size) float tensor of the images (held in memory): ImageNet-normalized, or
    with `standardize` each image's channels to zero mean / unit std, which removes the
    exposure differences that dominate raw pixels of traffic-sign photos. `roi_crop`: crop each
    image to its official ROI box (dataset root's index.csv) before resizing to `size`."""
    from tqdm.auto import tqdm

    from biomatch.data.images import load_image
    from biomatch.data.transforms import eval_transform
    from biomatch.workbench.data import roi_of

    tf = eval_transform(size)

    def one(s: Sample):
        img = load_image(s.path)
        if roi_crop:
            img = roi_crop_image(img, *roi_of(s.path), margin=roi_margin)
        return tf(img)

    x = torch.stack([one(s) for s in tqdm(samples, desc="loading images", disable=None if progress else True, leave=False)])
    if standardize:
        x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-3)
    return x


def make_objective_for(cfg: ExperimentConfig, n_classes: int) -> nn.Module:
    """The loss of a strategy (embeddings are L2-normalized, so distances lie in [0, 2])."""
    s = cfg.strategy
    if s == "contrastive":
        return make_objective("pair_contrastive", margin=1.0 if cfg.margin is None else cfg.margin)
    if s == "triplet_random":
        return RowTripletObjective(0.2 if cfg.margin is None else cfg.margin)
    if s.startswith("triplet_"):
        return make_objective("pml", loss="triplet", miner=s.removeprefix("triplet_"), margin=cfg.margin)
    if s == "multi_similarity":
        return make_objective("pml", loss="multi_similarity", miner="multi_similarity")
    obj = make_objective("pml", loss="arcface", miner="none", margin=cfg.margin, embedding_dim=cfg.dim,
                         num_classes=n_classes)
    obj.loss.scale = cfg.arc_scale
    return obj


def make_batch_sampler(cfg: ExperimentConfig, labels: np.ndarray):
    """Same number of embeddings per batch (≈ p·k) and per epoch (≈ one pass) for every strategy."""
    batch = cfg.p * cfg.k
    per_epoch = max(1, len(labels) // batch)
    if cfg.strategy == "contrastive":
        return TupleBatchSampler(labels, balanced_pairs, 2, batch // 2, per_epoch, cfg.seed)
    if cfg.strategy == "triplet_random":
        return TupleBatchSampler(labels, triplets, 3, batch // 3, per_epoch, cfg.seed)
    return PKSampler(labels.tolist(), min(cfg.p, len(np.unique(labels))), cfg.k, batches_per_epoch=per_epoch,
                     seed=cfg.seed)


def build_model(cfg: ExperimentConfig, in_dim: int | None) -> nn.Module:
    """Frozen mode: the head alone. Scratch mode: tiny CNN + head (one shared embedder)."""
    from biomatch.models.heads import EmbeddingModel, ProjectionHead

    torch.manual_seed(cfg.seed)
    if cfg.on_images:
        from biomatch.models.backbones import create_backbone

        backbone = create_backbone(cfg.backbone, pretrained=cfg.finetune)
        dims = [backbone.feat_dim, cfg.hidden, cfg.dim] if cfg.hidden else [backbone.feat_dim, cfg.dim]
        return EmbeddingModel(backbone, ProjectionHead(dims, normalize=True))
    assert in_dim is not None
    dims = [in_dim, cfg.hidden, cfg.dim] if cfg.hidden else [in_dim, cfg.dim]
    return ProjectionHead(dims, normalize=True)


def tta_view(x: torch.Tensor, zoom: float, dx: float, dy: float) -> torch.Tensor:
    """Images (N, C, H, W) zoomed in by `zoom` and shifted by (dx, dy) pixels, border replicated."""
    h, w = x.shape[2:]
    theta = torch.tensor([[1 / zoom, 0.0, -2 * dx / w], [0.0, 1 / zoom, -2 * dy / h]]).expand(len(x), 2, 3)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def embed_rows(model: nn.Module, x: torch.Tensor, batch: int = 256, tta: int = 0) -> np.ndarray:
    """Embeddings of input rows (features or images), eval mode, float32; with `tta` > 0 (images)
    the L2-renormalized mean over the image and its first `tta` TTA_VIEWS."""
    model.eval()
    emb = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).float()
    if tta and x.ndim == 4:
        for zoom, dx, dy in TTA_VIEWS[:tta]:
            emb = emb + torch.cat([model(tta_view(x[i : i + batch], zoom, dx, dy))
                                   for i in range(0, len(x), batch)]).float()
        emb = nn.functional.normalize(emb, dim=1)
    return emb.numpy()


def run_experiment(cfg: ExperimentConfig, split: IdentitySplit, features=None, images=None,
                   progress: bool = True) -> ExperimentResult:
    """Train `cfg` on split.train, validate (k-NN on split.val) every epoch, keep the best
    epoch, then classify split.test with k-NN and NCM fitted on train+val embeddings.

    `features`: a `FeatureTable` (frozen mode); `images`: a callable samples → image tensor
    (scratch mode; pass a cached one to load each image once across strategies).
    """
    if not split.val:
        raise InputError("the workbench needs a validation split for its per-epoch curves")
    if cfg.on_images:
        get = images or (lambda s: load_image_tensor(s, cfg.image_size, standardize=cfg.per_image_standardize,
                                                     roi_crop=cfg.roi_crop, roi_margin=cfg.roi_margin))
        x_train, x_val, x_test = get(split.train), get(split.val), get(split.test)
    else:
        if features is None:
            raise InputError(f"frozen mode ({cfg.backbone}) needs precomputed features")
        x_train, x_val, x_test = (torch.from_numpy(features(s)) for s in (split.train, split.val, split.test))
    y_train, y_val, y_test = split.labels(split.train), split.labels(split.val), split.labels(split.test)
    model = build_model(cfg, None if cfg.on_images else x_train.shape[1])
    objective = make_objective_for(cfg, len(split.classes))
    x_fit, y_fit = (torch.cat([x_train, x_val]), np.concatenate([y_train, y_val])) if cfg.train_on_val \
        else (x_train, y_train)
    dataset = RowsDataset(x_fit, y_fit, cfg.augment if cfg.on_images else "none", cfg.seed)

    def validate(m: nn.Module) -> dict[str, float]:
        tr, va = embed_rows(m, x_train), embed_rows(m, x_val)
        knn = KNNClassifier(k=min(cfg.knn_k, len(tr))).fit(tr, y_train).score(va, y_val)
        return {"accuracy": knn, "ncm_accuracy": NearestClassMean().fit(tr, y_train).score(va, y_val)}

    tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, monitor="accuracy",
                       seed=cfg.seed, warmup_epochs=cfg.warmup_epochs, optimizer=cfg.optimizer)
    start = time.perf_counter()
    # train_on_val: no validation (val is training data), the last epoch is kept
    history = fit(model, dataset, make_batch_sampler(cfg, y_fit), objective, tcfg,
                  None if cfg.train_on_val else validate, progress=progress)
    train_s = time.perf_counter() - start
    ref_x, ref_y = torch.cat([x_train, x_val]), np.concatenate([y_train, y_val])
    ref_emb, test_emb = embed_rows(model, ref_x, tta=cfg.tta), embed_rows(model, x_test, tta=cfg.tta)
    metrics = classification_report(ref_emb, ref_y, test_emb, y_test, k=cfg.knn_k)
    if not cfg.train_on_val:  # validation accuracy of the kept weights (with TTA if asked), for selection
        tr, va = embed_rows(model, x_train, tta=cfg.tta), embed_rows(model, x_val, tta=cfg.tta)
        metrics["val_knn_accuracy"] = KNNClassifier(k=min(cfg.knn_k, len(tr))).fit(tr, y_train).score(va, y_val)
        metrics["val_ncm_accuracy"] = NearestClassMean().fit(tr, y_train).score(va, y_val)
    return ExperimentResult(cfg, history, metrics, {"train_s": train_s}, ref_emb, ref_y, test_emb, y_test,
                            split.classes)


def baseline_metrics(features, split: IdentitySplit, knn_k: int = 5) -> dict[str, float]:
    """k-NN / NCM directly on the frozen features (no training): what a head must beat."""
    ref = split.train + split.val
    return classification_report(features(ref), split.labels(ref), features(split.test),
                                 split.labels(split.test), k=knn_k)
