"""Parts mosaic: fingers straightened whatever their spread, mirror views line up, no-hand fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from biomatch.config import MethodConfig
from biomatch.hands.landmarks import FINGERS, MIDDLE_MCP, WRIST
from biomatch.hands.parts import (
    FINGER_ORDER,
    MOSAIC,
    STRIP,
    PartsLoader,
    part_matrix,
    parts_mosaic,
)

COLOURS = {"thumb": (200, 30, 30), "index": (30, 160, 30), "middle": (30, 30, 200), "ring": (200, 160, 0),
           "little": (150, 0, 150)}
PALM = 60.0  # wrist → middle MCP, pixels


def _hand(spread_deg: float) -> tuple[Image.Image, np.ndarray]:
    """A drawn hand, fingers as coloured bars fanned out by `spread_deg` between neighbours, and
    its 21 landmarks (MediaPipe order). The palm is fixed; only the finger angles change."""
    pts = np.zeros((21, 2))
    wrist = np.array([200.0, 330.0])
    pts[WRIST] = wrist
    bases = {"thumb": (-40.0, -10.0), "index": (-27.0, -PALM), "middle": (0.0, -PALM), "ring": (27.0, -PALM),
             "little": (52.0, -PALM + 8)}
    lengths = {"thumb": 85.0, "index": 90.0, "middle": 100.0, "ring": 92.0, "little": 70.0}
    tilt = {"thumb": -2.0, "index": -1.0, "middle": 0.0, "ring": 1.0, "little": 2.0}
    img = Image.new("RGB", (400, 400), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.polygon([tuple(wrist + (-45, 5)), tuple(wrist + (60, 5)), tuple(wrist + (60, -PALM)),
                  tuple(wrist + (-40, -PALM))], fill=(225, 190, 170))
    for finger, joints in FINGERS.items():
        base = wrist + np.array(bases[finger])
        a = np.deg2rad(tilt[finger] * spread_deg + (-35.0 if finger == "thumb" else 0.0))
        direction = np.array([np.sin(a), -np.cos(a)])
        for j, joint in enumerate(joints):
            pts[joint] = base + direction * lengths[finger] * j / 3
        tip = pts[joints[-1]]
        draw.line([tuple(base), tuple(tip)], fill=COLOURS[finger], width=14)
        draw.ellipse([*(tip - 7), *(tip + 7)], fill=COLOURS[finger])
    return img, pts


def _strip(mosaic: Image.Image, finger: str) -> np.ndarray:
    x = 2 + FINGER_ORDER.index(finger) * STRIP[0]
    return np.asarray(mosaic, np.float32)[: STRIP[1], x:x + STRIP[0]]


def test_part_matrix_maps_the_axis_upright_and_the_thumb_side_left():
    center, up = np.array([50.0, 40.0]), np.array([1.0, -1.0]) / np.sqrt(2)
    thumb = np.array([-1.0, -1.0])  # to the upper left of the finger axis
    m = part_matrix(center, up, thumb, (10.0, 20.0), (10, 20))

    def apply(p: np.ndarray) -> np.ndarray:
        return m @ np.array([*p, 1.0])

    np.testing.assert_allclose(apply(center), [5.0, 10.0], atol=1e-9)
    np.testing.assert_allclose(apply(center + 10 * up), [5.0, 0.0], atol=1e-9)  # along the axis: straight up
    assert apply(center + 3 * thumb / np.linalg.norm(thumb))[0] < 5.0  # thumb side: left
    # the mirror image of the same geometry gives the same patch coordinates
    flip = np.array([[-1.0, 0.0], [0.0, 1.0]])
    mf = part_matrix(flip @ center, flip @ up, flip @ thumb, (10.0, 20.0), (10, 20))
    probe = center + np.array([2.0, 5.0])
    np.testing.assert_allclose(mf @ np.array([*(flip @ probe), 1.0]), apply(probe), atol=1e-9)


@pytest.mark.parametrize("spread", [6.0, 14.0])
def test_each_finger_strip_is_the_same_whatever_the_spread(spread):
    """Fingers fanned out by 6° or 14° per neighbour give the strips of fingers held together."""
    (img0, pts0), (img1, pts1) = _hand(0.0), _hand(spread)
    together, spread_out = parts_mosaic(img0, pts0), parts_mosaic(img1, pts1)
    unstraightened = parts_mosaic(img1, pts0)  # the spread photo cut along the held-together axes

    def match(strip: np.ndarray, finger: str, where: np.ndarray) -> float:
        return float((np.abs(strip - np.array(COLOURS[finger], np.float32)).sum(axis=2) < 40)[where].mean())

    for finger in ("index", "ring", "little"):
        a = _strip(together, finger)
        on_finger = np.abs(a - np.array(COLOURS[finger], np.float32)).sum(axis=2) < 40  # its own pixels
        assert on_finger.mean() > 0.15, finger
        assert match(_strip(spread_out, finger), finger, on_finger) > 0.9, finger
    assert match(_strip(unstraightened, "little"), "little", on_finger) < 0.8  # the control: axes matter
    assert np.abs(np.asarray(together, np.float32) - np.asarray(spread_out, np.float32)).mean() < 4.0


def test_mirrored_photo_gives_the_same_mosaic():
    """A dorsal and a palmar photo of one hand are mirror images in layout: same mosaic."""
    img, pts = _hand(8.0)
    mirrored = img.transpose(Image.FLIP_LEFT_RIGHT)
    mpts = pts.copy()
    mpts[:, 0] = img.width - 1 - pts[:, 0]
    a = np.asarray(parts_mosaic(img, pts), np.float32)
    b = np.asarray(parts_mosaic(mirrored, mpts), np.float32)
    assert a.shape == (MOSAIC, MOSAIC, 3)
    assert np.abs(a - b).mean() < 3.0  # interpolation only
    # finger order is anatomical: the thumb strip shows the thumb's colour
    thumb = _strip(parts_mosaic(img, pts), "thumb")
    assert (np.abs(thumb - np.array(COLOURS["thumb"], np.float32)).sum(axis=2) < 40).mean() > 0.1


def test_no_landmarks_falls_back_to_the_resized_photo():
    img, pts = _hand(0.0)
    expected = np.asarray(img.resize((MOSAIC, MOSAIC), Image.BILINEAR))
    np.testing.assert_array_equal(np.asarray(parts_mosaic(img, None)), expected)
    bad = pts.copy()
    bad[3] = np.nan
    np.testing.assert_array_equal(np.asarray(parts_mosaic(img, bad)), expected)
    degenerate = np.repeat(pts[[WRIST]], 21, axis=0)  # palm length 0
    np.testing.assert_array_equal(np.asarray(parts_mosaic(img, degenerate)), expected)
    assert pts[MIDDLE_MCP, 1] < pts[WRIST, 1]


def test_loader_reads_samples_and_names_its_settings(tmp_path):
    from biomatch.data.datasets import Sample

    img, pts = _hand(5.0)
    path = tmp_path / "Hand_0000001.jpg"
    img.save(path, quality=95)
    loader = PartsLoader([Sample(path, "s1", "dorsal")], pts[None])
    out = loader(0)
    assert out.size == (MOSAIC, MOSAIC)
    assert "PartsLoader(" in repr(loader) and f"strip={STRIP}" in repr(loader)
    fallback = PartsLoader([Sample(path, "s1", "dorsal")], None)(0)
    assert np.asarray(fallback).shape == (MOSAIC, MOSAIC, 3)


def test_config_accepts_parts_entries_and_names_bad_variants():
    cfg = MethodConfig(name="x", backbones=["efficientnet_lite0", "efficientnet_lite0@parts"])
    assert cfg.needs_landmarks
    with pytest.raises(ValueError, match="@parts"):
        MethodConfig(name="x", backbones=["efficientnet_lite0@fingers"])
