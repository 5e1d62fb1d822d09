"""Run one dorsal→palmar method on one split: features → train → embed → rank.

Frozen mode trains only the head on cached backbone features (seconds on a CPU); finetune
mode warms the head up on cached features, then trains backbone + head on images.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from biomatch.config import MethodConfig
from biomatch.data.datasets import Sample
from biomatch.data.pairs import PairBatchSampler
from biomatch.data.samplers import LookalikePKSampler, PKSampler, cross_view_neighbours
from biomatch.data.transforms import AugmentConfig, eval_transform, train_transform
from biomatch.embeddings import FeatureJob, ImageDataset, extract, run_feature_jobs
from biomatch.hands.protocol import GALLERY_VIEW, QUERY_VIEW, HandsSplit
from biomatch.metrics.retrieval import RetrievalRanks, ranks_from_scores, retrieval_ranks, retrieval_summary
from biomatch.models.backbones import Backbone, create_backbone
from biomatch.models.heads import EmbeddingModel, ProjectionHead
from biomatch.models.onnx_features import on_runtime
from biomatch.objectives import make_objective
from biomatch.training import History, TrainConfig, fit, torch_threads

if TYPE_CHECKING:
    from biomatch.hands.xqda import Whitening


@dataclass
class RunResult:
    """What one method produced on one split."""

    method: str
    seed: int
    ranks: RetrievalRanks
    metrics: dict[str, float]
    history: History
    queries: list[Sample]
    gallery: list[Sample]
    query_emb: np.ndarray
    gallery_emb: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None  # the trained head (frozen mode) or backbone+head (finetune)
    scores: np.ndarray | None = None  # final (query, gallery) similarities when not query_emb @ gallery_emb.T

    def score_matrix(self) -> np.ndarray:
        """The similarities the ranks were computed from (higher = same)."""
        return self.scores if self.scores is not None else self.query_emb @ self.gallery_emb.T


class FeatureDataset(Dataset):
    """Cached features as a dataset; with `flip_augment`, returns the mirrored image's
    features half of the time (a flip augmentation that costs nothing)."""

    def __init__(self, canon: np.ndarray, alt: np.ndarray | None, labels: Sequence[int], views: Sequence[int],
                 flip_augment: bool, seed: int) -> None:
        self.canon, self.alt = torch.from_numpy(canon), None if alt is None else torch.from_numpy(alt)
        self.labels, self.views = torch.as_tensor(labels), torch.as_tensor(views)
        self.flip, self.gen = flip_augment and alt is not None, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.canon)

    def __getitem__(self, i: int):
        use_alt = self.flip and bool(torch.rand((), generator=self.gen) < 0.5)
        x = self.alt[i] if use_alt else self.canon[i]  # type: ignore[index]
        return x, self.labels[i], self.views[i]


class MirroredImageDataset(ImageDataset):
    """Images for finetuning: gallery-view images mirrored when asked; yields (x, label, view)."""

    def __init__(self, samples, transform, labels, mirror_gallery: bool) -> None:
        super().__init__(samples, transform, labels)
        self.mirror_gallery = mirror_gallery

    def __getitem__(self, i: int):
        from PIL import ImageOps

        from biomatch.data.images import load_image

        s = self.samples[i]
        img = load_image(s.path)
        if self.mirror_gallery and s.view == GALLERY_VIEW:
            img = ImageOps.mirror(img)
        return self.transform(img), self.labels[i], int(s.view != QUERY_VIEW)


def _label_index(samples: Sequence[Sample]) -> list[int]:
    ids = {ident: i for i, ident in enumerate(sorted({s.identity for s in samples}))}
    return [ids[s.identity] for s in samples]


def _views(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([int(s.view != QUERY_VIEW) for s in samples])


def feature_extractor(cfg: MethodConfig, name: str, backbone: Backbone,
                      taps: Sequence[str] | None = None) -> tuple[nn.Module, str]:
    """What the head reads from one backbone (pooled map or tap statistics) and its cache name;
    `taps` replaces `cfg.taps` (FeatureBank adds XQDA's extra taps to the same pass)."""
    taps = list(cfg.taps if taps is None else taps)
    if taps:
        from biomatch.hands.features import TapFeatures, taps_id

        return TapFeatures(backbone, taps), f"{name}@taps-{taps_id(taps)}"
    return backbone, name if cfg.pool == "avg" else f"{name}@{cfg.pool}"


def _xqda_groups(extractor: nn.Module) -> list[np.ndarray]:
    """Columns of each XQDA block in a tap extractor's output: the whole-image taps, then the
    hand-only taps (`mavg`/`mstd`/`mcov`) when there are any. Why two blocks: on tuning seeds,
    XQDA over both tap kinds in one block reached mean rank 5.49 alone, in two blocks 5.41 with a
    higher R@1 (0.589 vs 0.552; Lite0 photo taps, biomatch.hands.features.masked_pool)."""
    bounds = np.cumsum([0, *extractor.tap_dims()])
    hand = np.array(extractor.hand_only())
    return [np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in np.flatnonzero(hand == kind)])
            for kind in (False, True) if (hand == kind).any()]


def build_head(cfg: MethodConfig, in_dim: int, seed: int = 0) -> ProjectionHead:
    """One projection head, its initial weights drawn from `seed` (no global RNG touched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ProjectionHead([in_dim, *cfg.head_dims], normalize=cfg.normalize, dropout=cfg.dropout)


def _cache_exists(extractor: nn.Module, key: str, samples: Sequence[Sample], transform, cache: Path | None) -> bool:
    from biomatch.embeddings import cache_key, feature_cache_path

    weights_id = getattr(extractor, "weights_id", "unknown")
    return feature_cache_path(key, cache_key(key, weights_id, transform, samples), cache).is_file()


def _union_extractor(cfg: MethodConfig, backbone: Backbone) -> nn.Module | None:
    """The shared all-taps extractor when `cfg` reads a subset of `UNION_TAPS` (or the plain
    average-pooled map) of an EfficientNet(-Lite) at its own input size; else None."""
    from biomatch.errors import InputError
    from biomatch.hands.features import UNION_TAPS, TapFeatures, parse_tap

    wanted = cfg.taps or (["head:avg"] if cfg.pool == "avg" else [])
    union = {"{}:{}".format(*parse_tap(t)) for t in UNION_TAPS}
    if not wanted or not all("{}:{}".format(*parse_tap(t)) in union for t in wanted):
        return None
    try:
        return TapFeatures(backbone, UNION_TAPS)
    except InputError:  # not an EfficientNet: no taps
        return None


def _whole_dataset(samples: list[Sample]) -> list[Sample]:
    """Every image of the 11k Hands folder these samples come from (sorted by path), when they
    all come from one and cover at least half of it: then every split seed and script shares one
    feature cache file per data set instead of one per sample subset. Otherwise the samples."""
    roots = {s.path.parent.parent for s in samples}
    if len(roots) != 1:
        return samples
    root = next(iter(roots))
    if not (root / "HandInfo.csv").is_file():
        return samples
    from biomatch.data.datasets import load_hands11k

    try:
        everything = sorted(load_hands11k(root, samples[0].path.parent.name), key=lambda s: str(s.path))
    except Exception:  # not an 11k Hands layout after all
        return samples
    paths = {s.path for s in everything}
    # a split of the data set (≈ 97 % of its images) shares the file; a small subset (tests) does not
    covers = all(s.path in paths for s in samples) and len(samples) >= 0.5 * len(everything)
    return everything if covers else samples


class FeatureBank:
    """Backbone features (plain and mirrored) of every sample, L2-normalized per backbone and
    concatenated: the input of the head in frozen mode. `dims` holds each backbone's width, in
    the order of `cfg.backbones`. With `cfg.background` other than "keep", the images are masked
    first (`biomatch.hands.masking`; the transform's repr puts the features in their own cache file).

    Features are computed over the samples sorted by path, so every split seed of one data set
    shares one cache file; the cache name carries the pooling or the taps, so features of
    different poolings never share a file."""

    def __init__(self, cfg: MethodConfig, samples: Sequence[Sample], device: str = "cpu",
                 cache: Path | None = None, progress: bool = True) -> None:
        by_root: dict[Path, list[Sample]] = {}
        for s in sorted(samples, key=lambda s: str(s.path)):
            by_root.setdefault(s.path.parent.parent, []).append(s)
        # each data set whole (e.g. the low-res set + the extra training photos), in a fixed order
        ordered = [s for root in sorted(by_root) for s in _whole_dataset(by_root[root])]
        self.index = {s.path: i for i, s in enumerate(ordered)}
        from biomatch.hands.masking import BackgroundFill, background_transform

        plain, mirrored, self.backbones = [], [], []
        jobs: list[FeatureJob] = []
        picks: list[list[slice] | None] = []  # per job: the columns of the union pass this entry reads
        head_widths: list[int | None] = []  # per job: with xqda_taps, the columns the heads read (the first)
        groups: list[list[np.ndarray] | None] = []  # per job: with xqda_taps, the columns of each XQDA block
        xqda_plain: list[torch.Tensor] = []
        need_mirror = cfg.mirror_gallery or cfg.flip_augment or cfg.tta
        start = time.perf_counter()
        self.landmarks_ok: np.ndarray | None = None  # per ordered sample: was a hand found?
        self.geometry: np.ndarray | None = None
        points = None
        if cfg.needs_landmarks:
            from biomatch.hands.landmarks import cached_geometry, cached_landmarks

            points, self.landmarks_ok = cached_landmarks(ordered, cache, progress)
            if cfg.geometry_weight > 0:
                self.geometry = cached_geometry(ordered, points, cache)
        # the background control's painting, for the parts that read photos outside the backbone transforms
        paint = None if cfg.background == "keep" else BackgroundFill(cfg.background, tuple(cfg.background_color))
        self.colour: np.ndarray | None = None
        if cfg.colour_weight > 0:
            from biomatch.hands.colour import cached_skin_colour

            self.colour = cached_skin_colour(ordered, cache, paint)
        hand_net: dict[int, np.ndarray] = {}  # entry index → hand-net taps (biomatch.hands.handnet), no job
        job_entry: list[int] = []  # per job: its entry in cfg.backbones
        for e, entry in enumerate(cfg.backbones):
            name, _, variant = entry.partition("@")
            if name == HAND_NET:
                from biomatch.hands.handnet import cached_handnet_features

                hand_net[e] = cached_handnet_features(ordered, points, cache, progress, paint)
                continue
            bb = create_backbone(name, pool=cfg.pool).to(device)
            size = cfg.image_size or bb.input_size
            tf = background_transform(cfg.background, tuple(cfg.background_color),
                                      eval_transform(size, bb.mean, bb.std))
            # one pass for the heads' taps and XQDA's extra taps, sliced apart below
            extractor, key = feature_extractor(cfg, name, bb, [*cfg.taps, *cfg.xqda_taps])
            head_width = sum(extractor.tap_dims()[: len(cfg.taps)]) if cfg.xqda_taps else None
            xqda_groups = _xqda_groups(extractor) if cfg.xqda_taps else None
            extractor = on_runtime(extractor, device)  # ONNX Runtime on the CPU (biomatch.models.onnx_features)
            # aligned crops serve only this entry; the shared pass has no XQDA-only taps
            union = _union_extractor(cfg, bb) if not variant and not cfg.xqda_taps else None
            if union is not None:
                from biomatch.hands.features import UNION_TAPS, taps_id, union_slices

                union_key = f"{name}@taps-{taps_id(UNION_TAPS)}"
                needs_head = not cfg.taps or any(t.startswith("head") for t in cfg.taps)
                slices = union_slices(union, cfg.taps or ["head:avg"])
                union = on_runtime(union, device)
                if _cache_exists(extractor, key, ordered, tf, cache):
                    union = None  # features cached before the shared pass existed: the same numbers, reuse them
                elif not (needs_head or _cache_exists(union, union_key, ordered, tf, cache)):
                    union = None  # early taps only, no shared pass cached: stop at the deepest tap (same numbers)
            if union is not None:  # one shared pass for taps and pooled features (biomatch.hands.features)
                extractor, key = union, union_key
            else:
                slices = None
            extractor.to(device)
            loader, loader_id = None, ""
            if variant == "aligned":
                from biomatch.hands.landmarks import AlignedLoader

                loader = AlignedLoader(ordered, points)
                loader_id, key = repr(loader), f"{key}@aligned"
            elif variant == "parts":
                from biomatch.hands.parts import PartsLoader

                loader = PartsLoader(ordered, points)
                loader_id, key = repr(loader), f"{key}@parts"
            for mirror in (False, True) if need_mirror else (False,):
                jobs.append(FeatureJob(extractor, key, ordered, tf, (size, size), mirror, loader, loader_id))
                job_entry.append(e)
                picks.append(slices)
                head_widths.append(head_width)
                groups.append(xqda_groups)
            self.backbones.append(bb)
        # every entry's features (two at a time where they must be computed: biomatch.embeddings), in entry order
        by_entry: dict[int, list[tuple[bool, np.ndarray, int | None, list[np.ndarray] | None]]] = {}
        for job, e, slices, width, cols, feats in zip(jobs, job_entry, picks, head_widths, groups,
                                                      run_feature_jobs(jobs, cache, progress)):
            if slices is not None:
                feats = np.concatenate([feats[:, sl] for sl in slices], axis=1)
            by_entry.setdefault(e, []).append((job.mirror, feats, width, cols))
        self.xqda_entry: list[str] = []  # per XQDA block: the cfg.backbones entry it comes from
        for e, entry in enumerate(cfg.backbones):
            if e in hand_net:  # head taps first, then the covariances: one XQDA block, like a tap extractor's
                from biomatch.hands.handnet import head_width as hand_net_width

                f, w = hand_net[e], hand_net_width()
                by_entry[e] = [(False, f, w, [np.arange(f.shape[1])]) if cfg.xqda_taps else (False, f[:, :w], None, None)]
            for mirror, feats, width, cols in by_entry[e]:
                if width is not None and cols is not None:  # XQDA reads every tap, the heads the first `width` columns
                    xqda_plain += [F.normalize(torch.from_numpy(np.ascontiguousarray(feats[:, c])), dim=1) for c in cols]
                    self.xqda_entry += [entry] * len(cols)
                    feats = feats[:, :width]
                (mirrored if mirror else plain).append(F.normalize(torch.from_numpy(np.ascontiguousarray(feats)), dim=1))
        self.seconds = time.perf_counter() - start
        self.dims = [p.shape[1] for p in plain]
        self.plain = torch.cat(plain, 1).numpy()
        self.mirrored = torch.cat(mirrored, 1).numpy() if mirrored else None
        self.mirror_gallery = cfg.mirror_gallery
        self.xqda_plain = torch.cat(xqda_plain, 1).numpy() if xqda_plain else None
        self.xqda_dims = [p.shape[1] for p in xqda_plain]

    @property
    def dim(self) -> int:
        return self.plain.shape[1]

    def ok(self, samples: Sequence[Sample]) -> np.ndarray:
        """Per sample: were hand landmarks found (False = failure to acquire, un-aligned fallback)?"""
        if self.landmarks_ok is None:
            return np.ones(len(samples), bool)
        return self.landmarks_ok[[self.index[s.path] for s in samples]]

    def geometry_of(self, samples: Sequence[Sample]) -> np.ndarray:
        """Landmark geometry rows (NaN rows where no hand was found)."""
        if self.geometry is None:
            raise ValueError("no geometry features: set geometry_weight > 0")
        return self.geometry[[self.index[s.path] for s in samples]]

    def colour_of(self, samples: Sequence[Sample]) -> np.ndarray:
        """Skin-colour rows (biomatch.hands.colour) of `samples`."""
        if self.colour is None:
            raise ValueError("no colour features: set colour_weight > 0")
        return self.colour[[self.index[s.path] for s in samples]]

    def xqda_features(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[int]]:
        """(features XQDA reads, their width per backbone): the heads' features, or with
        `xqda_taps` those taps and the extra ones (each backbone's block L2-normalized)."""
        if self.xqda_plain is None:
            return self.canonical(samples)[0], self.dims
        return self.xqda_plain[[self.index[s.path] for s in samples]], self.xqda_dims

    def append_xqda_to_heads(self, whitenings: Sequence[Whitening]) -> None:
        """Widen every backbone's head input by its XQDA features, whitened by `whitenings`
        (fitted on the training images) and L2-normalized (`heads_read_xqda`)."""
        from biomatch.hands.xqda import append_whitened_blocks

        if self.xqda_plain is None or self.mirrored is not None:
            raise ValueError("heads_read_xqda needs xqda_taps and no mirrored features")
        self.plain, self.dims = append_whitened_blocks(self.plain, self.dims, self.xqda_plain, self.xqda_dims,
                                                       whitenings)

    def canonical(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray | None]:
        """(features as fed to the head, features of the mirrored image) for these samples."""
        idx = np.array([self.index[s.path] for s in samples])
        gallery = np.array([s.view == GALLERY_VIEW for s in samples])
        plain = self.plain[idx]
        if self.mirrored is None:
            return plain, None
        mirrored = self.mirrored[idx]
        if not self.mirror_gallery:
            return plain, mirrored
        canon = np.where(gallery[:, None], mirrored, plain)
        alt = np.where(gallery[:, None], plain, mirrored)
        return canon, alt


def head_embed(head: nn.Module, canon: np.ndarray, alt: np.ndarray | None, tta: bool) -> np.ndarray:
    """L2-normalized head embeddings of canonical features (+ the mirrored ones when ``tta``)."""
    head.eval()
    with torch.no_grad():
        z = head(torch.from_numpy(canon))
        if tta and alt is not None:
            z = z + head(torch.from_numpy(alt))
        return F.normalize(z, dim=1).numpy()


def _make_sampler(cfg: MethodConfig, samples: Sequence[Sample], labels: list[int], seed: int,
                  neighbours: dict[int, list[int]] | None = None):
    """The training batch sampler `cfg.sampler` names; `neighbours` (identity → look-alike
    identities, one table of `lookalike_tables`) is needed by pk_view_lookalike only."""
    views = [s.view for s in samples]
    n_ids = len(set(labels))
    if cfg.sampler == "pairs":
        per_epoch = cfg.batches_per_epoch or max(1, len(samples) // cfg.pairs_per_batch)
        return PairBatchSampler(labels, cfg.pairs_per_batch, per_epoch, seed, views, (QUERY_VIEW, GALLERY_VIEW))
    p = min(cfg.p, n_ids)
    per_epoch = cfg.batches_per_epoch or max(1, len(samples) // (p * cfg.k))
    if cfg.sampler == "pk_view_lookalike":
        if neighbours is None:
            from biomatch.errors import InputError

            raise InputError("sampler pk_view_lookalike needs frozen features for its neighbour table (mode: frozen)")
        return LookalikePKSampler(labels, p, cfg.k, neighbours, cfg.lookalike_group, cfg.lookalike_top, views=views,
                                  view_aware=True, batches_per_epoch=per_epoch, seed=seed,
                                  view_pair=(QUERY_VIEW, GALLERY_VIEW))
    return PKSampler(labels, p, cfg.k, views, view_aware=cfg.sampler == "pk_view", batches_per_epoch=per_epoch,
                     seed=seed, view_pair=(QUERY_VIEW, GALLERY_VIEW))


def lookalike_tables(cfg: MethodConfig, canon: np.ndarray, bounds: np.ndarray, labels: Sequence[int],
                     samples: Sequence[Sample]) -> list[dict[int, list[int]] | None]:
    """Per backbone block: each training identity's look-alikes by that block's frozen features
    (None for every block unless `cfg.sampler` is pk_view_lookalike)."""
    n_blocks = len(bounds) - 1
    if cfg.sampler != "pk_view_lookalike":
        return [None] * n_blocks
    views = [s.view for s in samples]
    return [cross_view_neighbours(canon[:, lo:hi], labels, views, (QUERY_VIEW, GALLERY_VIEW), cfg.lookalike_top)
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _objective(cfg: MethodConfig, n_classes: int) -> nn.Module:
    if cfg.objective == "pml":
        return make_objective("pml", loss=cfg.loss, miner=cfg.miner, margin=cfg.margin,
                              embedding_dim=cfg.head_dims[-1], num_classes=n_classes)
    if cfg.objective == "cross_view_softmax":
        return make_objective("cross_view_softmax", temperature=cfg.temperature)
    margin = cfg.margin if cfg.margin is not None else (2.0 if cfg.objective == "pair_contrastive" else 0.2)
    return make_objective(cfg.objective, margin=margin)


class EnsembleHead(nn.Module):
    """Several heads on the same input; the output is their L2-normalized embeddings concatenated
    and re-normalized, so a cosine score is the mean of the heads' cosine scores."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([F.normalize(h(x), dim=1) for h in self.heads], dim=1), dim=1)


class FusionHead(nn.Module):
    """Score-level fusion of several backbones: the input (per-backbone L2-normalized blocks of
    widths `dims`, concatenated) is split, each block goes through its own head (ensemble), and
    the L2-normalized outputs are concatenated and scaled by 1/sqrt(n), so a cosine score is the
    mean of the per-backbone cosine scores."""

    def __init__(self, parts: Sequence[nn.Module], dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(parts) != len(dims) or (weights and len(weights) != len(dims)):
            raise ValueError("one head (ensemble) and one weight per input block")
        self.parts, self.dims = nn.ModuleList(parts), [int(d) for d in dims]
        w = np.asarray(weights if weights else [1.0] * len(dims), np.float64)
        self.scales = [math.sqrt(v / w.sum()) for v in w]  # cosine = weighted mean of block cosines

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = [F.normalize(p(c), dim=1) * s for p, c, s in zip(self.parts, torch.split(x, self.dims, dim=1), self.scales)]
        return torch.cat(z, dim=1)


GEOMETRY_SWEEP = (0.0, 0.05, 0.1, 0.2, 0.4)
HAND_NET = "mediapipe_hand"  # the branch read from MediaPipe's hand-landmark CNN (biomatch.hands.handnet)
HEAD_TRAIN_THREADS = 1  # every benchmark row was measured this way (benchmarks' --threads 1)
HEAD_SEED_STRIDE = 7919  # head j of an ensemble trains with seed split.seed + j * stride
BACKBONE_SEED_STRIDE = 104729  # with score fusion, backbone b's heads add b * this
INPUT_DROPOUT_SEED_OFFSET = 15485863  # a head's input-dropout masks: its seed + this (not its sampler's stream)
# draw d of the heads' seeds (run_method's head_draw) shifts every head's seed by d * this: the same
# method and split with other head initializations and batches, to measure how much those alone move a result
HEAD_DRAW_STRIDE = 1000003


def leaf_seed(base: int, block: int, head: int) -> int:
    """Seed of head `head` of block `block` (see `build_model`) for a run whose heads start from `base`."""
    return base + head * HEAD_SEED_STRIDE + block * BACKBONE_SEED_STRIDE


def head_input_dims(cfg: MethodConfig, backbone_dims: Sequence[int]) -> list[int]:
    """Input widths of the head parts: one per backbone with `fusion: score`, else their sum."""
    if cfg.fusion == "score" and len(backbone_dims) > 1:
        return [int(d) for d in backbone_dims]
    return [int(sum(backbone_dims))]


def build_model(cfg: MethodConfig, in_dims: Sequence[int], seed: int = 0) -> nn.Module:
    """The (untrained) head structure of `cfg` for head-input widths `in_dims` (see
    `head_input_dims`): one head, an `EnsembleHead` of `cfg.n_heads`, or a `FusionHead` of one
    such per input block. Head j of block b draws its weights from `leaf_seed(seed, b, j)`."""
    parts = []
    for b, dim in enumerate(in_dims):
        heads = [build_head(cfg, dim, leaf_seed(seed, b, j)) for j in range(cfg.n_heads)]
        parts.append(heads[0] if len(heads) == 1 else EnsembleHead(heads))
    if len(parts) == 1:
        return parts[0]
    if cfg.fusion_weights and len(cfg.fusion_weights) != len(parts):
        from biomatch.errors import InputError

        raise InputError(f"fusion_weights needs one weight per backbone ({len(parts)}), got {cfg.fusion_weights}")
    return FusionHead(parts, in_dims, cfg.fusion_weights or None)


def model_leaves(model: nn.Module) -> list[tuple[int, int, nn.Module]]:
    """(block index, head index, head) of every projection head of a `build_model` structure."""
    parts = list(model.parts) if isinstance(model, FusionHead) else [model]
    return [(b, j, h) for b, part in enumerate(parts)
            for j, h in enumerate(part.heads if isinstance(part, EnsembleHead) else [part])]


def model_input_dims(model: nn.Module) -> list[int]:
    """Inverse of `build_model`: the head-input widths of a trained structure."""
    if isinstance(model, FusionHead):
        return list(model.dims)
    return [model_leaves(model)[0][2].dims[0]]


def side_scores(scores: np.ndarray, queries: Sequence[Sample], gallery: Sequence[Sample],
                bonus: float) -> np.ndarray:
    """Scores (similarities) plus `bonus` where query and gallery image show the same side
    (left/right, from HandInfo) — a separate protocol row, since it reads the side labels."""
    same = np.array([[q.side == g.side for g in gallery] for q in queries], dtype=bool)
    return scores + bonus * same


def run_method(cfg: MethodConfig, split: HandsSplit, device: str = "cpu", cache: Path | None = None,
               progress: bool = True, checkpoint: Path | None = None, head_draw: int = 0) -> RunResult:
    """Train `cfg` on split.train (validating on split.val) and evaluate on split.test.

    With `cfg.train_on_val` the head trains on train + val for the fixed budget, without
    validation (the 11 % val split is too small to select epochs by). With `cfg.n_heads` > 1,
    that many heads train with different seeds and are averaged (`EnsembleHead`). With
    `cfg.rerank`, the test ranking is re-scored (a separate protocol row). `head_draw` d > 0 trains
    every head from other seeds (each shifted by d × HEAD_DRAW_STRIDE; 0 = the recorded rows): the
    same method on the same split, to measure the spread the heads' seeds alone cause."""
    if head_draw < 0:
        from biomatch.errors import InputError

        raise InputError(f"head_draw must be 0 or more, got {head_draw}")
    head_base = split.seed + head_draw * HEAD_DRAW_STRIDE
    all_samples = split.train + split.val + split.test
    from biomatch.hands.extra_train import extra_photos, for_subjects

    # every subject's extra photos join the bank (one cache file for all seeds); only the
    # training subjects' photos join the training set
    extras = extra_photos(cfg.extra_train, all_samples, cache)
    bank = FeatureBank(cfg, all_samples + extras, device, cache, progress)
    train, val, test = split.train, split.val, split.test
    if cfg.train_on_val:
        train, val = train + val, []
    train = train + for_subjects(extras, {s.identity for s in train})
    labels = _label_index(train)
    # XQDA's training features and per-block whitening, gathered and fitted once per run: the heads
    # (heads_read_xqda), XQDA and the translation all read them
    xqda_train: tuple[np.ndarray, list[int]] | None = None
    whitenings: list[Whitening] = []
    if cfg.heads_read_xqda or cfg.xqda_weight or cfg.translation_weight:
        from biomatch.hands.xqda import fit_block_whitenings

        xqda_train = bank.xqda_features(train)
        whitenings = fit_block_whitenings(*xqda_train, cfg.xqda_pca)
    if cfg.heads_read_xqda:
        bank.append_xqda_to_heads(whitenings)
    if cfg.n_heads > 1 and cfg.mode != "frozen":
        from biomatch.errors import InputError

        raise InputError("n_heads > 1 needs mode: frozen")
    objective = _objective(cfg, len(set(labels)))
    tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, patience=cfg.patience,
                       seed=head_base, device=device)

    def embed_head(samples: Sequence[Sample], module: nn.Module) -> np.ndarray:
        canon, alt = bank.canonical(samples)
        return head_embed(module.cpu() if device == "cpu" else module, canon, alt, cfg.tta)

    def validate(module: nn.Module) -> dict[str, float]:
        q, g = HandsSplit.queries(val), HandsSplit.gallery(val)
        r = retrieval_ranks(embed_head(q, module), embed_head(g, module),
                            [s.identity for s in q], [s.identity for s in g])
        return retrieval_summary(r)

    # head training on CPU runs on a fixed thread count, so a split's result does not depend
    # on the machine's core count or on the entry point (demo, benchmark, tests)
    pinned = HEAD_TRAIN_THREADS if cfg.mode == "frozen" and torch.device(device).type == "cpu" else None
    workers = max(1, torch.get_num_threads() // (pinned or torch.get_num_threads()))  # parallel head groups
    with torch_threads(pinned):
        start = time.perf_counter()
        canon, alt = bank.canonical(train)
        head_epochs = cfg.epochs if cfg.mode == "frozen" else max(cfg.warmup_head_epochs, 1)
        in_dims = head_input_dims(cfg, bank.dims)
        if len(in_dims) > 1 and cfg.mode != "frozen":
            from biomatch.errors import InputError

            raise InputError("fusion: score needs mode: frozen")
        head = build_model(cfg, in_dims, head_base)
        leaves = model_leaves(head)
        bounds = np.cumsum([0, *in_dims])
        history = History()
        from biomatch.hands.stacked import fit_stacked_parallel, stackable, stderr_progress

        single = len(leaves) == 1
        needs_val = bool(val) and cfg.mode == "frozen" and single
        tables = lookalike_tables(cfg, canon, bounds, labels, train)
        if (cfg.mode == "frozen" and not cfg.flip_augment and not needs_val and checkpoint is None
                and stackable([leaf for _, _, leaf in leaves])):
            # every head at once, same training as the loop below (biomatch.hands.stacked)
            seeds = [leaf_seed(head_base, b, j) for b, j, _ in leaves]
            canon_t = torch.from_numpy(canon)
            inputs = [canon_t[:, bounds[b]:bounds[b + 1]] for b, _, _ in leaves]
            samplers = [_make_sampler(cfg, train, labels, seed, tables[b]) for seed, (b, _, _) in zip(seeds, leaves)]
            loud = progress and not sys.stderr.isatty()
            histories = fit_stacked_parallel([leaf for _, _, leaf in leaves], inputs, samplers,
                                             torch.as_tensor(labels), torch.as_tensor(_views(train)), objective,
                                             TrainConfig(**{**tcfg.__dict__, "epochs": head_epochs}), workers,
                                             stderr_progress if loud else None, cfg.input_dropout,
                                             [s + INPUT_DROPOUT_SEED_OFFSET for s in seeds])
            history = histories[0]
            leaves_to_fit = []
        else:
            if cfg.input_dropout:
                from biomatch.errors import InputError

                raise InputError("input_dropout needs the stacked head trainer (mode: frozen, two-layer heads, "
                                 "no flip_augment, no per-epoch validation, no checkpoint)")
            leaves_to_fit = leaves
        for b, j, leaf in leaves_to_fit:
            seed = leaf_seed(head_base, b, j)
            lo, hi = bounds[b], bounds[b + 1]
            dataset = FeatureDataset(np.ascontiguousarray(canon[:, lo:hi]),
                                     None if alt is None else np.ascontiguousarray(alt[:, lo:hi]),
                                     labels, _views(train), cfg.flip_augment, seed)
            # validation embeds through the whole structure, so only a lone head validates
            head_history = fit(leaf, dataset, _make_sampler(cfg, train, labels, seed, tables[b]), objective,
                               TrainConfig(**{**tcfg.__dict__, "epochs": head_epochs, "seed": seed}),
                               validate if needs_val else None,
                               checkpoint=checkpoint if single else None,
                               resume=checkpoint is not None and single, progress=progress)
            history = head_history if (b, j) == (0, 0) else history
        queries, gallery = HandsSplit.queries(test), HandsSplit.gallery(test)
        if cfg.mode == "frozen":
            q_emb, g_emb = embed_head(queries, head), embed_head(gallery, head)
        else:
            q_emb, g_emb, history = _finetune(cfg, bank.backbones, head, objective, split, labels, tcfg, device,
                                              progress, queries, gallery)
        train_s = time.perf_counter() - start
    q_ids, g_ids = [s.identity for s in queries], [s.identity for s in gallery]
    extra: dict[str, float] = {}
    if bank.landmarks_ok is not None:
        ok = bank.ok(all_samples)
        extra["fta_rate"] = float(1 - ok.mean())
        extra["fta_count"] = float((~ok).sum())
    scores = None
    if (cfg.rerank == "none" and cfg.side_bonus == 0 and cfg.geometry_weight == 0 and not cfg.cohort_k
            and not cfg.identity_weight and not cfg.xqda_weight and not cfg.query_neighbours
            and not cfg.translation_weight):
        ranks = retrieval_ranks(q_emb, g_emb, q_ids, g_ids)
    else:
        from biomatch.hands.rerank import rerank_scores
        from biomatch.hands.scoring import cohort_corrected_scores, identity_mean_boost, split_blocks

        if cfg.cohort_k:  # the training dorsal images (subject-disjoint from the test) are the cohort
            widths = [q_emb.shape[1] // len(in_dims)] * len(in_dims)  # equal-width blocks, one per backbone
            cohort = embed_head(HandsSplit.queries(train), head)
            scores = cohort_corrected_scores(split_blocks(q_emb, widths), split_blocks(g_emb, widths),
                                             split_blocks(cohort, widths), cfg.cohort_k)
        else:
            scores = (q_emb @ g_emb.T if cfg.rerank == "none" else
                      rerank_scores(q_emb, g_emb, cfg.rerank, k1=cfg.rerank_k1, k2=cfg.rerank_k2,
                                    lam=cfg.rerank_lambda))
        if cfg.side_bonus:
            scores = side_scores(scores, queries, gallery, cfg.side_bonus)

        def boosted(s: np.ndarray) -> np.ndarray:
            return identity_mean_boost(s, g_ids, cfg.identity_weight) if cfg.identity_weight else s

        if cfg.geometry_weight:
            from biomatch.hands.geometry import GeometryScorer

            geo = GeometryScorer.fit(bank.geometry_of(train), [s.identity for s in train])
            geo_scores = geo.scores(bank.geometry_of(queries), bank.geometry_of(gallery))
            # the same heads at other geometry weights (0 = without geometry): a free ablation,
            # recorded for the tuning seeds' choice of the weight
            for w in GEOMETRY_SWEEP:
                _record_ablation(extra, f"geo{w:g}", boosted(scores + w * geo_scores), q_ids, g_ids)
            scores = scores + cfg.geometry_weight * geo_scores
        scores = boosted(scores)
        if xqda_train is not None and (cfg.xqda_weight or cfg.translation_weight):
            feats, scored_whitenings = _scored_blocks(cfg, bank, (xqda_train, bank.xqda_features(queries),
                                                                  bank.xqda_features(gallery)), whitenings)
            if cfg.xqda_weight:
                scores = _fuse_xqda(cfg, feats, train, scores, q_ids, g_ids, extra, scored_whitenings)
            if cfg.translation_weight:
                scores = _fuse_translation(cfg, feats, train, scores, q_ids, g_ids, extra, scored_whitenings)
        if cfg.colour_weight:
            scores = _fuse_colour(cfg, bank, train, queries, gallery, scores, q_ids, g_ids, extra)
        if cfg.query_neighbours:
            scores = _query_set(cfg, bank, train, queries, scores, q_ids, g_ids, extra)
        ranks = ranks_from_scores(scores, q_ids, g_ids)
    n_images = len(all_samples) * len(cfg.backbones) * (2 if bank.mirrored is not None else 1)
    timing = {"features_s": bank.seconds, "train_s": train_s}
    if bank.seconds > 1.0:  # cached features would make a throughput meaningless
        timing["embed_img_per_s"] = n_images / bank.seconds
    return RunResult(cfg.name, split.seed, ranks, {**retrieval_summary(ranks), **extra}, history, queries, gallery,
                     q_emb, g_emb, timing, model=head, scores=scores)


def _record_ablation(extra: dict[str, float], name: str, scores: np.ndarray, q_ids: Sequence[str],
                     g_ids: Sequence[str]) -> None:
    """extra["<name>:recall@1"] and extra["<name>:mean_rank"] of `scores`: a part or variant of the
    method measured in the same run (the geometry sweep, heads / XQDA alone, before the query-set step)."""
    r = retrieval_summary(ranks_from_scores(scores, q_ids, g_ids))
    extra[f"{name}:recall@1"], extra[f"{name}:mean_rank"] = r["recall@1"], r["mean_rank"]


# (train, queries, gallery) features as `FeatureBank.xqda_features` gives them: (rows, block widths)
XqdaFeatures = tuple[tuple[np.ndarray, list[int]], ...]


def _scored_blocks(cfg: MethodConfig, bank: FeatureBank, feats: XqdaFeatures,
                   whitenings: Sequence[Whitening]) -> tuple[XqdaFeatures, list[Whitening]]:
    """`feats` and `whitenings` without the XQDA blocks of the `cfg.xqda_score_skip` branches: those
    blocks feed the heads (heads_read_xqda) but not the XQDA and translation score sums."""
    if not cfg.xqda_score_skip:
        return feats, list(whitenings)
    keep = [i for i, entry in enumerate(bank.xqda_entry) if entry not in cfg.xqda_score_skip]
    bounds = np.cumsum([0, *feats[0][1]])
    cols = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in keep])
    widths = [feats[0][1][i] for i in keep]
    return tuple((x[:, cols], widths) for x, _ in feats), [whitenings[i] for i in keep]


def _fuse_xqda(cfg: MethodConfig, feats: XqdaFeatures, train: Sequence[Sample], scores: np.ndarray,
               q_ids: Sequence[str], g_ids: Sequence[str], extra: dict[str, float],
               whitenings: Sequence[Whitening]) -> np.ndarray:
    """z(scores) + xqda_weight × z(XQDA block scores) on the frozen features (biomatch.hands.xqda);
    the heads alone and XQDA alone go to `extra` (a free ablation, like the geometry sweep)."""
    from biomatch.hands.xqda import row_zscore, xqda_block_scores

    (tr, dims), (qf, _), (gf, _) = feats
    xq = xqda_block_scores(tr, [s.identity for s in train], np.array([s.view == GALLERY_VIEW for s in train]),
                           qf, gf, dims, cfg.xqda_pca, cfg.xqda_lambda, whitenings)
    for name, s in (("heads", scores), ("xqda", xq)):
        _record_ablation(extra, name, s, q_ids, g_ids)
    return row_zscore(scores) + cfg.xqda_weight * row_zscore(xq)


def _fuse_translation(cfg: MethodConfig, feats: XqdaFeatures, train: Sequence[Sample], scores: np.ndarray,
                      q_ids: Sequence[str], g_ids: Sequence[str], extra: dict[str, float],
                      whitenings: Sequence[Whitening]) -> np.ndarray:
    """(scores, z-scored unless XQDA's fusion already did) + translation_weight × z(translation
    block scores) (biomatch.hands.translation); the fusion before this step and the translation
    alone go to `extra`."""
    from biomatch.hands.translation import translation_block_scores
    from biomatch.hands.xqda import row_zscore

    (tr, dims), (qf, _), (gf, _) = feats
    moved = translation_block_scores(tr, [s.identity for s in train],
                                     np.array([s.view == GALLERY_VIEW for s in train]), qf, gf, dims,
                                     cfg.xqda_pca, cfg.translation_lambda, whitenings)
    for name, s in (("before_translation", scores), ("translation", moved)):
        _record_ablation(extra, name, s, q_ids, g_ids)
    return (scores if cfg.xqda_weight else row_zscore(scores)) + cfg.translation_weight * row_zscore(moved)


def _fuse_colour(cfg: MethodConfig, bank: FeatureBank, train: Sequence[Sample], queries: Sequence[Sample],
                 gallery: Sequence[Sample], scores: np.ndarray, q_ids: Sequence[str], g_ids: Sequence[str],
                 extra: dict[str, float]) -> np.ndarray:
    """scores + colour_weight × the skin-colour score (biomatch.hands.colour); the fusion before this
    step and the colour alone go to `extra`."""
    from biomatch.hands.colour import colour_scores

    colour = colour_scores(bank.colour_of(train), [s.identity for s in train],
                           np.array([s.view == GALLERY_VIEW for s in train]), bank.colour_of(queries),
                           bank.colour_of(gallery), cfg.xqda_pca, cfg.xqda_lambda, cfg.translation_lambda)
    for name, s in (("before_colour", scores), ("colour", colour)):
        _record_ablation(extra, name, s, q_ids, g_ids)
    return scores + cfg.colour_weight * colour


def _query_set(cfg: MethodConfig, bank: FeatureBank, train: Sequence[Sample], queries: Sequence[Sample],
               scores: np.ndarray, q_ids: Sequence[str], g_ids: Sequence[str], extra: dict[str, float]) -> np.ndarray:
    """Query-set re-ranking (biomatch.hands.query_set) of the final scores; the single-query
    numbers of the same run go to `extra` ("single_query:…"), so one run gives both protocols."""
    from biomatch.hands.query_set import query_set_scores
    from biomatch.hands.xqda import same_view_block_scores

    dorsal = HandsSplit.queries(train)
    (tr, dims), (qf, _) = bank.xqda_features(dorsal), bank.xqda_features(queries)
    similarity = same_view_block_scores(tr, [s.identity for s in dorsal], qf, dims, cfg.xqda_pca, cfg.xqda_lambda)
    _record_ablation(extra, "single_query", scores, q_ids, g_ids)
    return query_set_scores(scores, similarity, cfg.query_neighbours, cfg.query_neighbour_weight)


def _finetune(cfg: MethodConfig, backbones: list[Backbone], head: ProjectionHead, objective: nn.Module,
              split: HandsSplit, labels: list[int], tcfg: TrainConfig, device: str, progress: bool,
              queries: list[Sample], gallery: list[Sample]):
    """Full finetune of a single backbone + the warmed-up head, then embed the test set."""
    if len(cfg.backbones) != 1:
        from biomatch.errors import InputError

        raise InputError("finetune mode takes exactly one backbone")
    backbone = backbones[0]
    size = cfg.image_size or backbone.input_size
    model = EmbeddingModel(backbone, head)
    aug = AugmentConfig(hflip=cfg.flip_augment)
    dataset = MirroredImageDataset(split.train, train_transform(size, aug), labels, cfg.mirror_gallery)
    history = fit(model, dataset, _make_sampler(cfg, split.train, labels, split.seed), objective,
                  TrainConfig(**{**tcfg.__dict__, "lr": cfg.backbone_lr}), None, progress=progress)
    tf = eval_transform(size, backbone.mean, backbone.std)

    def embed(samples: list[Sample]) -> np.ndarray:
        mirror = cfg.mirror_gallery and bool(samples) and samples[0].view == GALLERY_VIEW
        z = torch.from_numpy(extract(model, samples, tf, mirror=mirror, progress=progress))
        if cfg.tta:
            z = z + torch.from_numpy(extract(model, samples, tf, mirror=not mirror, progress=progress))
        return F.normalize(z, dim=1).numpy()

    return embed(queries), embed(gallery), history
