"""Haar detection through cv2.CascadeClassifier, against boxes recorded earlier with OpenCV 4.11."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.detect import MAX_DETECT_SIDE, crop_face, default_cascade_path, detect_faces, frame_from_box
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


@pytest.mark.parametrize("key", list(OPENCV_REFERENCE))
def test_detect_faces_matches_opencv_4_11_reference(key):
    dataset, rel, pad = key
    grey = np.asarray(Image.open(_data(dataset) / rel).convert("L"))
    if pad:
        grey = np.pad(grey, pad, mode="edge")
    assert max(grey.shape) <= MAX_DETECT_SIDE  # no shrinking: the boxes are comparable pixel for pixel
    boxes = detect_faces(Image.fromarray(grey))
    assert len(boxes) == 1
    assert np.abs(boxes[0] - np.array(OPENCV_REFERENCE[key])).max() <= 1


def test_large_photo_is_shrunk_and_boxes_scaled_back():
    face = Image.open(_data("lfw_pairs") / "images/AJ_Lamas/AJ_Lamas_0001.jpg").convert("RGB")
    small = Image.new("RGB", (480, 360), (100, 100, 100))
    small.paste(face.resize((224, 224), Image.BICUBIC), (150, 60))
    big = small.resize((1440, 1080), Image.BICUBIC)  # 3x: detected at 480 px, boxes in 1440 px units
    (box_small,) = detect_faces(small)
    (box_big,) = detect_faces(big)
    assert np.abs(box_big - 3 * box_small).max() <= 6  # resampling differences of ~1-2 px at 480


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


def test_cascade_errors(tmp_path):
    assert default_cascade_path().is_file()
    with pytest.raises(NotFoundError):
        detect_faces(Image.new("L", (50, 50)), cascade=tmp_path / "missing.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage><cascade><featureType>LBP</featureType></cascade></opencv_storage>")
    with pytest.raises(InputError, match="cannot load a cascade"):
        detect_faces(Image.new("L", (50, 50)), cascade=bad)
    with pytest.raises(InputError, match="PIL image"):
        crop_face(np.zeros((10, 10)), "x")  # type: ignore[arg-type]
