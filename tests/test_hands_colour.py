"""White-balanced skin colour (biomatch.hands.colour): its descriptor against slow loops, its
invariance to the photo's white balance, its cache, its fused score and its config check."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from biomatch.config import MethodConfig
from biomatch.hands import colour


def _hand_on_a_sheet(rng: np.random.Generator, gains=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A 60×60 photo: a skin-coloured disc with texture on a light grey sheet, under channel `gains`."""
    rgb = np.empty((60, 60, 3))
    rgb[:] = (215, 210, 205)
    yy, xx = np.mgrid[:60, :60]
    mask = (yy - 30) ** 2 + (xx - 30) ** 2 < 18 ** 2
    rgb[mask] = np.array([190, 135, 105]) * rng.uniform(0.8, 1.1, (int(mask.sum()), 1))
    return np.clip(rgb * np.array(gains), 0, 255).round().astype(np.uint8), mask


def _slow_descriptor(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The descriptor by per-pixel loops (a brute-force reference)."""
    sheet = [float(np.median([rgb[y, x, c] + 1.0 for y in range(rgb.shape[0]) for x in range(rgb.shape[1])
                              if not mask[y, x]])) for c in range(3)]
    u, v, lum = [], [], []
    for y, x in zip(*np.nonzero(mask)):
        r, g, b = [(rgb[y, x, c] + 1.0) / sheet[c] for c in range(3)]
        u.append(np.log(r / g))
        v.append(np.log(b / g))
        lum.append(np.log((r + g + b) / 3))
    stats = []
    for c in (np.array(u), np.array(v), np.array(lum)):
        stats += [c.mean(), c.std(), *[np.percentile(c, p) for p in colour.PERCENTILES]]
    (u0, u1), (v0, v1) = colour.UV_RANGE
    hist = np.zeros((colour.BINS, colour.BINS))
    for a, b in zip(u, v):
        i = min(int((min(max(a, u0), u1) - u0) / (u1 - u0) * colour.BINS), colour.BINS - 1)
        j = min(int((min(max(b, v0), v1) - v0) / (v1 - v0) * colour.BINS), colour.BINS - 1)
        hist[i, j] += 1
    hist = np.sqrt(hist.ravel() / hist.sum())
    return np.concatenate([stats, hist / np.linalg.norm(hist)])


def test_the_descriptor_matches_per_pixel_loops():
    rgb, mask = _hand_on_a_sheet(np.random.default_rng(0))
    d = colour.skin_colour(rgb, mask)
    assert d.shape == (colour.WIDTH,)
    np.testing.assert_allclose(d, _slow_descriptor(rgb, mask), atol=1e-9)


def test_the_sheet_divides_the_white_balance_out():
    """The same hand under another white balance (channel gains up to ±20 %): the raw colour's
    log-chromaticity moves by ~0.3, the descriptor's statistics by a rounding error."""
    plain, mask = _hand_on_a_sheet(np.random.default_rng(1))
    warm, _ = _hand_on_a_sheet(np.random.default_rng(1), gains=(1.15, 1.0, 0.8))
    a, b = colour.skin_colour(plain, mask), colour.skin_colour(warm, mask)
    raw_shift = abs(np.log(warm[mask][:, 2] + 1.0).mean() - np.log(plain[mask][:, 2] + 1.0).mean())
    assert raw_shift > 0.2
    stats = 3 * (2 + len(colour.PERCENTILES))
    assert np.abs(a[:stats] - b[:stats]).max() < 0.02
    assert float(a[stats:] @ b[stats:]) > 0.95  # the chromaticity histograms (unit vectors) nearly agree


def test_colour_scores_are_xqda_and_translation_fused_as_the_method_fuses_them():
    from biomatch.hands.translation import translation_block_scores
    from biomatch.hands.xqda import row_zscore, xqda_block_scores

    rng = np.random.default_rng(2)
    ids = [str(i // 4) for i in range(80)]
    train = rng.normal(size=(80, 12)) + np.repeat(rng.normal(size=(20, 12)), 4, axis=0)
    view = np.tile([True, True, False, False], 20)
    q, g = rng.normal(size=(7, 12)), rng.normal(size=(9, 12))
    got = colour.colour_scores(train, ids, view, q, g, 8, 0.01, 1.0)
    args = (train, ids, view, q, g, [12], 8)
    want = row_zscore(row_zscore(xqda_block_scores(*args, 0.01)) + row_zscore(translation_block_scores(*args, 1.0)) / 3)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_colour_rows_are_cached_and_a_background_paint_has_its_own_key(hands_samples, tmp_path, monkeypatch):
    from biomatch.hands.masking import BackgroundFill

    few = sorted(hands_samples, key=lambda s: str(s.path))[:4]
    first = colour.cached_skin_colour(few, tmp_path)
    assert first.shape == (4, colour.WIDTH) and np.isfinite(first).all()
    monkeypatch.setattr(colour, "skin_colour", lambda *a: pytest.fail("recomputed a cached row"))
    np.testing.assert_array_equal(colour.cached_skin_colour(few, tmp_path), first)
    monkeypatch.undo()
    filled = colour.cached_skin_colour(few, tmp_path, paint=BackgroundFill("fill"))
    # with the sheet painted one grey, the white balance is gone: the hand's colour statistics change
    assert np.isfinite(filled).all() and not np.allclose(filled[:, :21], first[:, :21])
    # with the hand painted one grey, its "skin" is uniform: no spread in u, v or brightness is left
    only = colour.cached_skin_colour(few, tmp_path, paint=BackgroundFill("only"))
    assert np.isfinite(only).all() and np.abs(only[:, [1, 8, 15]]).max() < 1e-9


def test_colour_weight_needs_the_fused_scores_it_adds_to():
    with pytest.raises(ValidationError, match="colour_weight"):
        MethodConfig(name="t", backbones=["tiny_cnn"], colour_weight=0.2)
    assert MethodConfig(name="t", backbones=["tiny_cnn"], colour_weight=0.2, xqda_weight=0.3).colour_weight == 0.2
