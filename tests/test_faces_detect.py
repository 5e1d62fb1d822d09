"""Haar detection: our numpy cascade against boxes from OpenCV 4.11's CascadeClassifier."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.detect import HaarCascade, crop_face, detect_faces, frame_from_box, group_rectangles
from biomatch.paths import dataset_dir


def _data(name: str):
    try:
        return dataset_dir(name)
    except NotFoundError:
        pytest.skip(f"dataset {name} not available")


# cv2 4.11 CascadeClassifier(haarcascade_frontalface_default.xml).detectMultiScale(grey,
# scaleFactor=1.1, minNeighbors=3, minSize=(24, 24)); lfw images padded by 40 px (edge replicate).
OPENCV_REFERENCE = {
    ("lfw_pairs", "images/AJ_Lamas/AJ_Lamas_0001.jpg", 40): (50, 51, 91, 91),
    ("lfw_pairs", "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg", 40): (57, 54, 80, 80),
    ("lfw_pairs", "images/Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", 40): (51, 50, 88, 88),
    ("att_faces", "s1/1.pgm", 0): (5, 23, 81, 81),
    ("att_faces", "s10/1.pgm", 0): (4, 37, 71, 71),
}


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


@pytest.mark.parametrize("key", list(OPENCV_REFERENCE))
def test_cascade_matches_opencv_reference(key):
    dataset, rel, pad = key
    grey = np.asarray(Image.open(_data(dataset) / rel).convert("L"))
    if pad:
        grey = np.pad(grey, pad, mode="edge")
    boxes = HaarCascade.load().detect(grey)
    assert len(boxes) == 1
    assert _iou(boxes[0], OPENCV_REFERENCE[key]) > 0.9


def test_no_face_in_flat_or_noise_image():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (200, 240), dtype=np.uint8))
    assert len(detect_faces(Image.new("RGB", (200, 160), (120, 120, 120)))) == 0
    assert len(detect_faces(noise)) == 0
    with pytest.raises(InputError, match="no face found in holiday.jpg"):
        crop_face(noise, "holiday.jpg")


def test_crop_face_recovers_lfw_frame_from_a_larger_photo():
    face = Image.open(_data("lfw_pairs") / "images/AJ_Lamas/AJ_Lamas_0001.jpg").convert("RGB")
    photo = Image.new("RGB", (480, 360), (100, 100, 100))
    photo.paste(face.resize((224, 224), Image.BICUBIC), (150, 60))
    boxes = detect_faces(photo)
    left, top, right, bottom = frame_from_box(boxes[0])
    # the face was pasted as the frame (150, 60, 374, 284): corners within 10 % of its side
    assert np.abs(np.array([left, top, right, bottom]) - [150, 60, 374, 284]).max() < 23
    assert crop_face(photo).size == (112, 112)


def test_group_rectangles_needs_neighbours_and_merges():
    boxes = np.array([[10, 10, 40, 40], [11, 10, 40, 40], [10, 11, 41, 41], [12, 12, 40, 40], [200, 200, 30, 30]])
    out = group_rectangles(boxes, min_neighbors=3)
    assert out.tolist() == [[11, 11, 40, 40]]  # lone box dropped, 4 similar ones averaged
    assert len(group_rectangles(boxes, min_neighbors=4)) == 0


def test_cascade_errors(tmp_path):
    with pytest.raises(NotFoundError):
        HaarCascade.load(tmp_path / "missing.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage><cascade><featureType>LBP</featureType></cascade></opencv_storage>")
    with pytest.raises(InputError, match="not a HAAR cascade"):
        HaarCascade.load(bad)
    with pytest.raises(InputError, match="PIL image"):
        crop_face(np.zeros((10, 10)), "x")  # type: ignore[arg-type]
