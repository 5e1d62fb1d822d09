"""Landmark detectors: the fallback order, who found the face, coordinates back in the photo's
pixels, and real detections on LFW crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.faces import landmarks as lm


def _lfw(n: int) -> list[Image.Image]:
    from biomatch.faces.lfw import default_pairs

    try:
        pairs = default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")
    return [Image.open(pairs.path(r)).convert("RGB") for r in pairs.images[:n]]


def test_fallback_order_first_success_wins(monkeypatch):
    calls = []

    def fake(name, rgb):
        calls.append(name)
        if name == "haar":
            return lm.Detection(np.array([[10.0, 10.0], [20.0, 10.0]]), ("eye_left", "eye_right"), "haar")
        return None

    monkeypatch.setattr(lm, "_run", fake)
    det = lm.detect_landmarks(Image.new("RGB", (40, 40)))
    assert calls == list(lm.DEFAULT_ORDER) and lm.DEFAULT_ORDER[-1] == "haar"
    assert det is not None and det.detector == "haar"
    calls.clear()
    det = lm.detect_landmarks(Image.new("RGB", (40, 40)), ("haar", "blazeface"))
    assert calls == ["haar"] and det.detector == "haar"  # later detectors are not tried
    calls.clear()
    assert lm.detect_landmarks(Image.new("RGB", (40, 40)), ("blazeface", "mesh")) is None
    assert calls == ["blazeface", "mesh"]


def test_points_come_back_in_original_pixels(monkeypatch):
    """Padding and shrinking are undone: a fake detector's point at the padded photo's centre maps
    to the original photo's centre."""
    def centre(name, rgb):
        h, w = rgb.shape[:2]
        return lm.Detection(np.array([[w / 2, h / 2]]), ("nose",), name)

    monkeypatch.setattr(lm, "_run", centre)
    for size in [(100, 60), (2000, 1000)]:  # the second is shrunk to MAX_SIDE first
        det = lm.detect_landmarks(Image.new("RGB", size), ("blazeface",))
        np.testing.assert_allclose(det.points[0], [size[0] / 2, size[1] / 2], atol=size[0] / lm.MAX_SIDE + 1)


def test_unknown_detector_and_bad_input():
    with pytest.raises(InputError, match="unknown face detector"):
        lm.detect_landmarks(Image.new("RGB", (40, 40)), ("nope",))
    with pytest.raises(InputError, match="PIL image"):
        lm.detect_landmarks(np.zeros((40, 40, 3)))  # type: ignore[arg-type]


def test_no_face_in_a_blank_image():
    assert lm.detect_landmarks(Image.new("RGB", (200, 150), (128, 128, 128))) is None


@pytest.mark.parametrize("name", ["blazeface", "mesh", "haar"])
def test_real_crops_eyes_where_lfw_puts_them(name):
    """On LFW crops each detector puts the eyes left/right of centre at about 0.42 of the height."""
    for im in _lfw(6):
        det = lm.detect_landmarks(im, (name,))
        assert det is not None and det.detector == name
        eyes = det.points[: 2] / np.array(im.size)
        assert eyes[0, 0] < 0.5 < eyes[1, 0]
        assert np.all(np.abs(eyes[:, 1] - 0.42) < 0.1)


def test_a_face_in_a_larger_photo_is_found_where_it_was_pasted():
    face = _lfw(1)[0]
    photo = Image.new("RGB", (640, 480), (70, 90, 60))
    photo.paste(face.resize((224, 224)), (300, 150))
    det = lm.detect_landmarks(photo)
    assert det is not None and det.detector == lm.DEFAULT_ORDER[0]
    assert np.all((det.points[:, 0] > 300) & (det.points[:, 0] < 524))
    assert np.all((det.points[:, 1] > 150) & (det.points[:, 1] < 374))
