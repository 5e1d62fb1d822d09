"""The face-crop guard: real LFW crops pass, photos that are clearly not face crops are refused
(no face, face too small or off-centre), and the face-crop embedder applies it."""

from __future__ import annotations

import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.guard import check_face_crop


@pytest.fixture(scope="module")
def crops() -> list[Image.Image]:
    from biomatch.faces.lfw import default_pairs

    try:
        pairs = default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")
    return [Image.open(pairs.path(r)).convert("RGB") for r in pairs.images[:8]]


def _uncropped(face: Image.Image, scale: float) -> Image.Image:
    side = round(face.size[0] / scale)
    photo = Image.new("RGB", (side, side), (120, 140, 110))
    photo.paste(face, (side - face.size[0], 0))  # a corner, as in a holiday photo
    return photo


def test_real_crops_pass(crops):
    assert [check_face_crop(c) for c in crops] == ["crop"] * len(crops)


@pytest.mark.parametrize("scale", [0.5, 1 / 3])
def test_uncropped_photos_are_refused(crops, scale):
    for c in crops[:4]:
        with pytest.raises(InputError, match="not a face crop"):
            check_face_crop(_uncropped(c, scale), "holiday.jpg")


def test_no_face_is_refused():
    with pytest.raises(InputError, match="holiday.jpg is not a face crop: no face found"):
        check_face_crop(Image.new("RGB", (112, 112), (128, 128, 128)), "holiday.jpg")


def test_face_crop_embedder_guards_and_names_the_image(crops):
    from biomatch.faces.embedder import FaceEmbedder

    crop = FaceEmbedder.default(detect=False)
    assert crop.embed(crops[:2]).shape == (2, 128) and crop.last_detectors == ["crop", "crop"]
    with pytest.raises(InputError, match="b.jpg is not a face crop.*--embedder face"):
        crop.embed([crops[0], _uncropped(crops[1], 0.4)], names=["a.jpg", "b.jpg"])
    # the guard can be switched off (calibration on known crops does)
    assert FaceEmbedder.default(detect=False, guard=False).embed([_uncropped(crops[1], 0.4)]).shape == (1, 128)
