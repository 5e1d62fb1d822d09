"""What image resolution is worth for dorsal→palmar matching (issue #14 §3).

The 640×480 subset (`hands11k_hires`) holds some of the very photos that the 100–180 px set
(`hands11k`) holds. Measured on the 127 photos in both: a low-resolution image is the original
rotated by 180° (fingers up) and squashed to a square (180×180 or 100×100) — area-resampling
that copy of ours leaves an RMS difference of 4.0 (180 px) / 6.0 (100 px) grey levels, a vertical
flip instead ≈ 46 — and stored as JPEG quality 75 (its luminance quantization table is the
standard table at 75). `make_variant` rebuilds that processing at any size, so a trained
head can be scored on the same test photos at several resolutions (`score_variant`): the
only thing that changes between the rows is the image the landmarks, the aligned crop, the
photo features and the geometry come from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from biomatch.config import MethodConfig
from biomatch.data.datasets import Sample
from biomatch.errors import InputError, NotFoundError
from biomatch.hands.protocol import GALLERY_VIEW, QUERY_VIEW, HandsSplit
from biomatch.metrics.retrieval import (
    RetrievalRanks,
    ranks_from_scores,
    retrieval_summary,
)


@dataclass(frozen=True)
class Variant:
    """One resolution of the test photos: `size` None keeps 640×480; `exact` uses the
    low-resolution set's own file where it holds the photo at this very size."""

    name: str
    size: tuple[int, int] | None
    quality: int
    exact: bool = False


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("640x480", None, 95),  # the high-res photo (rotated like the low-res set, aspect kept)
    Variant("480x480", (480, 480), 95),  # high res, squashed like the low-res set: only resolution differs
    Variant("180x180", (180, 180), 75, exact=True),  # the low-res set's larger size
    Variant("100x100", (100, 100), 75, exact=True),  # the low-res set's smaller size
)}
PROCESSING_VERSION = "v1"  # bump when make_variant's processing changes (new folder, new cache keys)


def lowres_copy(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """The low-resolution set's processing: rotate 180°, squash to `size` (area resampling)."""
    out = image.convert("RGB").transpose(Image.Transpose.ROTATE_180)
    return out if size is None else out.resize(size, Image.Resampling.BOX)


def make_variant(samples: Sequence[Sample], variant: Variant, out_root: Path,
                 exact_files: Mapping[str, Path] | None = None) -> tuple[list[Sample], int]:
    """Samples of `variant` (identity, view, side kept) and how many are the low-resolution
    set's own files. Files are written once under out_root/<version>-<name>/ and reused (their
    mtime is part of the feature and landmark cache keys)."""
    folder = Path(out_root) / f"{PROCESSING_VERSION}-{variant.name}"
    folder.mkdir(parents=True, exist_ok=True)
    out, n_exact = [], 0
    for s in samples:
        if not s.path.is_file():
            raise NotFoundError(f"image not found: {s.path}")
        exact = (exact_files or {}).get(s.path.name) if variant.exact else None
        if exact is not None and variant.size is not None:
            with Image.open(exact) as im:
                if im.size == variant.size:
                    out.append(replace(s, path=Path(exact)))
                    n_exact += 1
                    continue
        target = folder / s.path.name
        if not target.is_file():
            with Image.open(s.path) as im:
                img = lowres_copy(im, variant.size)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.jpg")
            img.save(tmp, quality=variant.quality)
            os.replace(tmp, target)
        out.append(replace(s, path=target))
    return out, n_exact


def embed_with(model: nn.Module, bank, samples: Sequence[Sample], tta: bool = False) -> np.ndarray:
    """L2-normalized head embeddings of `samples` from a `FeatureBank` holding them (as run_method)."""
    from biomatch.hands.methods import head_embed

    canon, alt = bank.canonical(samples)
    return head_embed(model, canon, alt, tta)


@dataclass
class VariantScore:
    """One trained method scored on one set of test images."""

    ranks: RetrievalRanks
    metrics: dict[str, float]
    scores: np.ndarray
    queries: list[Sample]
    gallery: list[Sample]
    timing: dict[str, float]


def score_variant(cfg: MethodConfig, model: nn.Module, train_bank, train: Sequence[Sample],
                  test: Sequence[Sample], device: str = "cpu", cache: Path | None = None,
                  progress: bool = False) -> VariantScore:
    """Score `test` (dorsal queries → palmar gallery) with a head trained by `run_method` on
    `train` — the same embedding, geometry and score as run_method's own test pass (a test
    checks that), so other test images can be scored without retraining. `train_bank` is a
    FeatureBank holding `train` (for the geometry projection)."""
    from biomatch.hands.methods import FeatureBank

    if cfg.rerank != "none" or cfg.side_bonus or cfg.query_neighbours:
        raise InputError("score_variant supports neither re-ranking (rerank, query_neighbours) nor the side bonus")
    unsupported = [f for f in ("cohort_k", "identity_weight", "xqda_weight", "translation_weight") if getattr(cfg, f)]
    if unsupported:  # scoring without them would report another method's numbers under this name
        raise InputError(f"score_variant scores heads (+ geometry) only; this method also sets {', '.join(unsupported)}")
    queries, gallery = HandsSplit.queries(test), HandsSplit.gallery(test)
    if not queries or not gallery:
        raise InputError(f"test images need both {QUERY_VIEW} and {GALLERY_VIEW} views")
    timing: dict[str, float] = {}
    ordered = sorted(test, key=lambda s: str(s.path))
    if cfg.geometry_weight > 0 or any("@" in b for b in cfg.backbones):
        from biomatch.hands.landmarks import cached_landmarks

        start = time.perf_counter()
        cached_landmarks(ordered, cache, progress)  # timed on its own; the bank below reads the cache
        timing["landmarks_s"] = time.perf_counter() - start
    bank = FeatureBank(cfg, list(test), device, cache, progress)
    timing["features_s"] = bank.seconds
    start = time.perf_counter()
    q, g = embed_with(model, bank, queries, cfg.tta), embed_with(model, bank, gallery, cfg.tta)
    q_ids, g_ids = [s.identity for s in queries], [s.identity for s in gallery]
    scores = q @ g.T
    if cfg.geometry_weight:
        from biomatch.hands.geometry import GeometryScorer

        geo = GeometryScorer.fit(train_bank.geometry_of(train), [s.identity for s in train])
        scores = scores + cfg.geometry_weight * geo.scores(bank.geometry_of(queries), bank.geometry_of(gallery))
    ranks = ranks_from_scores(scores, q_ids, g_ids)
    timing["score_s"] = time.perf_counter() - start
    metrics = retrieval_summary(ranks)
    if bank.landmarks_ok is not None:
        for label, part in (("", list(test)), (f"_{QUERY_VIEW}", queries), (f"_{GALLERY_VIEW}", gallery)):
            ok = bank.ok(part)
            metrics[f"fta_rate{label}"] = float(1 - ok.mean())
            metrics[f"fta_count{label}"] = float((~ok).sum())
    return VariantScore(ranks, metrics, np.asarray(scores), queries, gallery, timing)


def paired_subject_bootstrap(first_rank_a: np.ndarray, first_rank_b: np.ndarray, subjects: Sequence[str],
                             n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Percentile CI of (a − b) for R@1 and mean rank when a and b rank the same queries:
    resampling *subjects* (all of a subject's queries together, since they share a hand and a
    photo session), not queries. Ranks may be (n_seeds, n_queries); they are averaged over seeds
    first. Returns {"recall@1": [point, lo, hi], "mean_rank": [point, lo, hi]}."""
    a, b = np.atleast_2d(np.asarray(first_rank_a, float)), np.atleast_2d(np.asarray(first_rank_b, float))
    if a.shape != b.shape or a.shape[1] != len(subjects):
        raise InputError(f"rank arrays {a.shape} / {b.shape} do not match {len(subjects)} query subjects")
    diffs = {"recall@1": ((a == 1).mean(0) - (b == 1).mean(0)), "mean_rank": (a.mean(0) - b.mean(0))}
    names, inverse = np.unique(np.asarray(subjects), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot).astype(float)
    out = {}
    for key, d in diffs.items():
        sums = np.bincount(inverse, weights=d, minlength=len(names))
        boot = (draws @ sums) / (draws @ counts)  # each drawn subject brings all of its queries
        lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
        out[key] = [float(d.mean()), float(lo), float(hi)]
    return out
