"""Five-point alignment: known landmarks land on the ArcFace template (within 1 px), the
transform matches a known similarity, and a real face re-detected after alignment sits there."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.align import ARCFACE_TEMPLATE, POINTS, align, apply, similarity_transform

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_transform_recovers_a_known_similarity(seed):
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3.0), *rng.uniform(-80, 80, 2))
    src = rng.uniform(0, 300, (5, 2))
    est = similarity_transform(src, apply(m, src))
    np.testing.assert_allclose(est, m, atol=1e-8)
    # with noise the estimate is the least-squares one: no other similarity fits better
    noisy = apply(m, src) + rng.normal(0, 2, (5, 2))
    est = similarity_transform(src, noisy)
    err = ((apply(est, src) - noisy) ** 2).sum()
    for _ in range(50):
        other = est + rng.normal(0, 1e-3, est.shape) * np.array([[1, 1, 100], [1, 1, 100]])
        other[1, :2] = [-other[0, 1], other[0, 0]]  # keep it a similarity
        assert ((apply(other, src) - noisy) ** 2).sum() >= err - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_known_landmarks_land_on_the_template_within_one_pixel(seed):
    """Dots drawn at the template points moved by a random similarity come back onto the template."""
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(-0.5, 0.5), rng.uniform(1.5, 4.0), 0, 0)
    pts = apply(m, ARCFACE_TEMPLATE)
    pts += 60 - pts.min(0) + rng.uniform(0, 100, 2)
    side = int(pts.max() + 80)
    img = Image.new("RGB", (side, side), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    r = 2.0 * np.sqrt(abs(np.linalg.det(m[:, :2])))  # dots of radius 2 px once aligned
    for (x, y), col in zip(pts, COLOURS):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
    out = np.asarray(align(img, pts, POINTS)).astype(float)
    assert out.shape == (112, 112, 3)
    for (tx, ty), col in zip(ARCFACE_TEMPLATE, COLOURS):
        w = np.clip(1 - np.abs(out - np.array(col, float)).sum(2) / 255, 0, None)  # how much of this colour
        w[w < 0.5] = 0
        yy, xx = np.mgrid[0:112, 0:112]
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert np.hypot(cx - tx, cy - ty) < 1.0


def test_bad_point_sets():
    with pytest.raises(InputError):
        similarity_transform(np.zeros((5, 2)), ARCFACE_TEMPLATE)  # coincident points
    with pytest.raises(InputError):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(KeyError):
        align(Image.new("RGB", (50, 50)), np.zeros((1, 2)), ["ear"])


def test_real_face_redetected_after_alignment_sits_on_the_template():
    from biomatch.faces.landmarks import detect_landmarks
    from biomatch.faces.lfw import default_pairs

    try:
        pairs = default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")
    errors = []
    for rel in pairs.images[:10]:
        im = Image.open(pairs.path(rel)).convert("RGB")
        det = detect_landmarks(im, ("mesh",))
        assert det is not None
        again = detect_landmarks(align(im, det.points, det.names), ("mesh",))
        assert again is not None
        errors.append(np.linalg.norm(again.points - ARCFACE_TEMPLATE, axis=1).mean())
    # re-detection noise plus the template's fit to each face: a few pixels, not tens
    assert np.median(errors) < 4.0
