"""White-balanced skin colour of a hand photo, and its dorsal→palm score.

Why: each 11k Hands photo session has its own lighting and white balance, and the sheet under the
hand shows it. Dividing every channel by the sheet's median (the photo's background, outside
`biomatch.hands.masking.hand_mask`) leaves the hand's own colour: skin tone, which is a trait of the
person in both views (palms are lighter than backs, by a mapping XQDA and the dorsal→palm
translation learn from the training subjects). The descriptor: mean, std and percentiles of the
log-chromaticities u = log(R/G), v = log(B/G) and the brightness l = log(mean(R, G, B)) over the
hand's pixels, then the square-rooted, L2-normalized 8×8 histogram of (u, v).

Screened late on the best method's scores (benchmarks/hands_fusion_screen.py, session 22, tuning
seeds, three head draws): 2.025 against 2.119 at weight 0.2. Written by hand: a few lines of numpy;
colour-constancy libraries correct whole images, not a hand against its own background.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.data.datasets import Sample

UV_RANGE = ((-0.2, 0.8), (-1.0, 0.2))  # log(R/G), log(B/G) of white-balanced skin (R > G > B), fixed before looking
PERCENTILES = (10, 25, 50, 75, 90)
BINS = 8
WIDTH = 3 * (2 + len(PERCENTILES)) + BINS * BINS
TRANSLATION_SHARE = 1 / 3  # translation's weight beside XQDA's: the method's own ratio (0.1 / 0.3)
COLOUR_VERSION = "skin-colour-v1"


def skin_colour(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB and its (H, W) hand mask → the WIDTH-long descriptor (module docstring);
    NaN where the mask leaves no hand or no background.

    >>> rgb = np.full((4, 4, 3), 200, np.uint8); rgb[1:3, 1:3] = (180, 120, 90)  # skin on a grey sheet
    >>> mask = np.zeros((4, 4), bool); mask[1:3, 1:3] = True
    >>> d = skin_colour(rgb, mask)
    >>> [round(float(x), 3) for x in (d[0], d[7], d[14])]  # mean u, v, l: log(181/121), log(91/121), log(131/201)
    [0.403, -0.285, -0.428]
    >>> bool(np.isnan(skin_colour(rgb, np.zeros((4, 4), bool))).all())
    True
    """
    if mask.sum() == 0 or (~mask).sum() == 0:
        return np.full(WIDTH, np.nan)
    x = rgb.astype(np.float64) + 1.0  # no log(0)
    x = x / np.median(x[~mask], axis=0)
    hand = x[mask]
    u, v = np.log(hand[:, 0] / hand[:, 1]), np.log(hand[:, 2] / hand[:, 1])
    stats = [f for c in (u, v, np.log(hand.mean(1))) for f in (c.mean(), c.std(), *np.percentile(c, PERCENTILES))]
    (u0, u1), (v0, v1) = UV_RANGE
    hist, _, _ = np.histogram2d(np.clip(u, u0, u1), np.clip(v, v0, v1), bins=BINS, range=UV_RANGE)
    hist = np.sqrt(hist.ravel() / hist.sum())
    return np.concatenate([stats, hist / max(float(np.linalg.norm(hist)), 1e-12)])


def cached_skin_colour(samples: Sequence[Sample], cache: Path | None = None,
                       paint: Callable[[Image.Image], Image.Image] | None = None) -> np.ndarray:
    """(N, WIDTH) descriptors of the samples' photos, rows without a hand or sheet filled with the
    column means; cached beside the landmarks, keyed on the image files and `paint` (a
    `biomatch.hands.masking.BackgroundFill` for the background controls: the hand is masked on the
    photo and described on the painted image)."""
    from concurrent.futures import ThreadPoolExecutor

    from biomatch.data.images import file_fingerprint
    from biomatch.embeddings import disk_cached
    from biomatch.hands.landmarks import landmark_cache_path
    from biomatch.hands.masking import hand_mask

    h = hashlib.sha256((COLOUR_VERSION + (f"|{paint!r}" if paint else "")).encode())
    for s in samples:
        h.update(file_fingerprint(s.path).encode() + b"\0")
    path = landmark_cache_path(cache).parent / f"colour-{h.hexdigest()[:24]}.npy"

    def one(s: Sample) -> np.ndarray:
        # the hand is found on the photo, as BackgroundFill finds it, and described on the painted image:
        # "fill" leaves the hand's raw colour (no sheet to divide by), "only" leaves the sheet's colour alone
        image = Image.open(s.path).convert("RGB")
        photo = np.asarray(image)
        return skin_colour(np.asarray(paint(image)) if paint else photo, hand_mask(photo))

    def compute() -> np.ndarray:
        with ThreadPoolExecutor(max_workers=2) as pool:  # decoding and OpenCV release the GIL
            rows = np.stack(list(pool.map(one, samples))) if samples else np.zeros((0, WIDTH))
        if np.isnan(rows).any():
            rows = np.where(np.isfinite(rows), rows, np.nan_to_num(np.nanmean(rows, axis=0)))
        return rows

    return disk_cached(path, len(samples), compute)


def colour_scores(train: np.ndarray, train_ids: Sequence[str], train_is_gallery: np.ndarray, queries: np.ndarray,
                  gallery: np.ndarray, pca_dims: int, xqda_lambda: float, translation_lambda: float) -> np.ndarray:
    """rowz(rowz(XQDA) + TRANSLATION_SHARE · rowz(translation)) of the colour rows: XQDA and the
    dorsal→palm translation (both fitted on the training rows), fused as the method fuses them."""
    from biomatch.hands.translation import translation_block_scores
    from biomatch.hands.xqda import row_zscore, xqda_block_scores

    args = (train, train_ids, train_is_gallery, queries, gallery, [train.shape[1]], pca_dims)
    xq = xqda_block_scores(*args, xqda_lambda)
    moved = translation_block_scores(*args, translation_lambda)
    return row_zscore(row_zscore(xq) + TRANSLATION_SHARE * row_zscore(moved))
