"""Hand landmarks: canonical alignment, view-invariant geometry, the no-hand fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe")

from biomatch.data.datasets import Sample  # noqa: E402
from biomatch.hands.geometry import GeometryScorer  # noqa: E402
from biomatch.faces.align import apply  # one 2x3-affine helper for faces and hands
from biomatch.hands.landmarks import (  # noqa: E402
    CROP,
    INDEX_MCP,
    MIDDLE_MCP,
    PINKY_MCP,
    WRIST,
    LandmarkDetector,
    align_hand,
    alignment_matrix,
    cached_landmarks,
    canonical_mirror,
    geometry_features,
)


def _similarity(points: np.ndarray, angle_deg: float, scale: float, shift=(30.0, -12.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    return points @ rot.T + np.asarray(shift)


@pytest.fixture(scope="module")
def detector():
    d = LandmarkDetector()
    yield d
    d.close()


@pytest.fixture(scope="module")
def hand(hands_samples, detector):
    """A bundled 180 px photo where MediaPipe finds the hand, with its landmarks."""
    for s in hands_samples[:200]:
        img = Image.open(s.path).convert("RGB")
        if img.size[0] >= 180:
            lm = detector(np.asarray(img))
            if lm.ok:
                return img, lm.points
    pytest.skip("no bundled image with a detected hand")


def test_alignment_maps_landmarks_to_the_same_canonical_place(hand):
    """Exact geometry: any rotation/scale/shift of the landmarks gives the same canonical landmarks."""
    _, pts = hand
    m0, mir0 = alignment_matrix(pts)
    ref = apply(m0, pts)
    assert ref[MIDDLE_MCP, 0] == pytest.approx(ref[WRIST, 0], abs=1e-6)  # middle finger straight up
    assert ref[MIDDLE_MCP, 1] < ref[WRIST, 1]
    assert ref[INDEX_MCP, 0] < ref[PINKY_MCP, 0]  # thumb side on the left
    for angle, scale in ((35, 1.0), (-120, 0.6), (170, 2.3)):
        moved = _similarity(pts, angle, scale)
        m, mir = alignment_matrix(moved)
        assert mir == mir0
        np.testing.assert_allclose(apply(m, moved), ref, atol=1e-3)


def test_rotated_photo_aligns_to_the_same_crop(hand, detector):
    """End to end with MediaPipe: a photo rotated by 40° aligns to (nearly) the same crop."""
    import cv2

    img, pts = hand
    rgb = np.asarray(img)
    h, w = rgb.shape[:2]
    big = cv2.copyMakeBorder(rgb, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REPLICATE)
    rot = cv2.getRotationMatrix2D((big.shape[1] / 2, big.shape[0] / 2), 40, 1.0)
    turned = cv2.warpAffine(big, rot, (big.shape[1], big.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    lm = detector(turned)
    assert lm.ok
    a = np.asarray(align_hand(img, pts), np.float32)
    b = np.asarray(align_hand(Image.fromarray(turned), lm.points), np.float32)
    assert a.shape == b.shape == (CROP, CROP, 3)
    # canonical landmarks agree within a few pixels of the 224 px crop, and the pixels with them
    pa = apply(alignment_matrix(pts)[0], pts)
    pb = apply(alignment_matrix(lm.points)[0], lm.points)
    assert np.median(np.linalg.norm(pa - pb, axis=1)) < 0.05 * CROP
    unaligned = np.asarray(Image.fromarray(turned).resize((CROP, CROP)), np.float32)
    assert np.abs(a - b).mean() < 0.5 * np.abs(a - unaligned).mean()


def test_geometry_is_invariant_to_rotation_scale_and_mirroring(hand):
    _, pts = hand
    ref = geometry_features(pts)
    assert np.isfinite(ref[:-4]).all()
    for angle, scale in ((25, 1.0), (-90, 0.5), (180, 3.0)):
        np.testing.assert_allclose(geometry_features(_similarity(pts, angle, scale)), ref, rtol=1e-4, atol=1e-5)
    mirrored = pts.copy()
    mirrored[:, 0] = 500 - mirrored[:, 0]  # the palmar/dorsal mirror of the same hand layout
    np.testing.assert_allclose(geometry_features(mirrored), ref, rtol=1e-4, atol=1e-5)
    assert canonical_mirror(mirrored) != canonical_mirror(pts)  # … and the alignment undoes it
    m1, _ = alignment_matrix(pts)
    m2, _ = alignment_matrix(mirrored)
    np.testing.assert_allclose(apply(m2, mirrored), apply(m1, pts), atol=1e-3)


def test_geometry_changes_with_the_hand():
    """Not a constant: lengthening one finger changes its length feature only among lengths."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (21, 2))
    longer = pts.copy()
    longer[8] += (longer[8] - longer[7]) * 0.5  # index tip further out
    a, b = geometry_features(pts), geometry_features(longer)
    assert not np.allclose(a[:-4], b[:-4])


def test_no_hand_falls_back_and_is_kept(tmp_path, detector):
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (120, 120), (250, 250, 250)).save(blank)
    assert not detector(np.asarray(Image.open(blank))).ok
    crop = align_hand(Image.open(blank), None)
    assert crop.size == (CROP, CROP)  # the un-aligned path: the plain image, resized
    assert np.isnan(geometry_features(None)).all()
    samples = [Sample(blank, "x", "dorsal")]
    pts, ok = cached_landmarks(samples, cache=tmp_path / "cache", progress=False)
    assert pts.shape == (1, 21, 2) and ok.tolist() == [False]
    pts2, ok2 = cached_landmarks(samples, cache=tmp_path / "cache", progress=False)  # from the cache
    assert ok2.tolist() == [False] and np.isnan(pts2).all()


def test_geometry_scorer_is_neutral_for_missing_rows():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(20), 4).astype(str)
    centers = rng.normal(size=(20, 6))
    x = centers[np.repeat(np.arange(20), 4)] + 0.1 * rng.normal(size=(80, 6))
    scorer = GeometryScorer.fit(x, ids, dims=4)
    q = x[::4].copy()
    g = x[1::4].copy()
    g[3] = np.nan  # gallery item without landmarks
    q[5] = np.nan  # query without landmarks
    s = scorer.scores(q, g)
    assert np.isfinite(s).all()
    assert np.ptp(s[5]) == 0  # a query without landmarks: a constant row, ranks by other cues only
    others = np.delete(s[0], 3)
    assert s[0, 3] == pytest.approx(others.mean(), abs=1e-6)  # the missing palm gets the row mean
    # with landmarks, the right subject scores highest for most queries (a learned, real signal)
    rows = [i for i in range(20) if i not in (3, 5)]
    assert np.mean([np.argmax(s[i]) == i for i in rows]) > 0.8


def test_split_detection_matches_serial_and_survives_a_failed_child(hands_samples, tmp_path, monkeypatch):
    """The two-process landmark pass gives the serial pass's points, in order; a child that fails
    has its half redone in this process."""
    from biomatch.hands import landmarks

    paths = [str(s.path) for s in hands_samples[:8]]
    serial = np.stack(list(landmarks._detect_serial(paths)))
    monkeypatch.setattr(landmarks, "PARALLEL_MIN_IMAGES", 4)
    monkeypatch.setattr(landmarks.os, "cpu_count", lambda: 2)
    split = np.stack(list(landmarks._detect_all(paths)))
    np.testing.assert_array_equal(split, serial)
    monkeypatch.setattr(landmarks.sys, "executable", "false")  # the child exits 1 at once
    np.testing.assert_array_equal(np.stack(list(landmarks._detect_all(paths))), serial)


def test_cache_keys_follow_content_not_modification_time(tmp_path):
    import os

    from biomatch.data.images import file_fingerprint

    a = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(a)
    key = file_fingerprint(a)
    os.utime(a, (1_000_000, 1_000_000))  # a re-copied file: same bytes, new time
    assert file_fingerprint(a) == key
    Image.new("RGB", (8, 8), (3, 2, 1)).save(a)  # same size, other content
    assert file_fingerprint(a) != key
