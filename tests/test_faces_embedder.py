"""FaceEmbedder on real LFW crops: protocol, flip invariance, separation, the detect + align path,
one ONNX forward per call, the face-crop pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.embedder import FLOAT_MODEL, FaceEmbedder, assets_dir
from biomatch.models.embedder import Embedder, sha256_file


def lfw_pairs_or_skip():
    from biomatch.faces.lfw import default_pairs

    try:
        return default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")


def lfw_images(n: int) -> list[Image.Image]:
    pairs = lfw_pairs_or_skip()
    return [Image.open(pairs.path(r)).convert("RGB") for r in pairs.images[:n]]


@pytest.fixture(scope="module")
def face() -> FaceEmbedder:
    return FaceEmbedder.default()


def test_protocol_and_hash(face):
    assert isinstance(face, Embedder)
    assert face.dim == 128 and face.name == "mobilefacenet"
    assert face.model_hash == sha256_file(assets_dir() / FLOAT_MODEL)
    emb = face.embed(lfw_images(3))
    assert emb.shape == (3, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_flip_averaging_makes_mirror_images_identical():
    # the face-crop box is left-right symmetric, so TTA(img) == TTA(mirror(img))
    crop = FaceEmbedder.default(detect=False)
    imgs = lfw_images(4)
    a = crop.embed(imgs)
    b = crop.embed([ImageOps.mirror(im) for im in imgs])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_aligned_mirror_images_nearly_identical(face):
    # detection on the mirror finds mirrored landmarks; the template is almost symmetric
    imgs = lfw_images(4)
    a = face.embed(imgs)
    b = face.embed([ImageOps.mirror(im) for im in imgs])
    assert (a * b).sum(1).min() > 0.95
    assert face.last_detectors == ["mesh"] * 4


def test_one_onnx_forward_per_call(face, monkeypatch):
    """The HTTP service micro-batches by calling embed(list) once: images and mirrors in one run."""
    calls = []
    real = face._session

    class Spy:
        def run(self, out, feeds):
            calls.append(next(iter(feeds.values())).shape)
            return real.run(out, feeds)

    monkeypatch.setattr(face, "_session", Spy())
    emb = face.embed(lfw_images(11))
    assert emb.shape == (11, 128) and calls == [(22, 3, 112, 112)]


def test_genuine_pairs_score_higher_than_impostors(face):
    pairs = lfw_pairs_or_skip()
    idx = np.r_[0:20, 300:320]  # 20 matched + 20 mismatched pairs of fold 1
    left = face.embed([Image.open(pairs.path(pairs.left[i])) for i in idx])
    right = face.embed([Image.open(pairs.path(pairs.right[i])) for i in idx])
    s = (left * right).sum(1)
    gen, imp = s[pairs.labels[idx] == 1], s[pairs.labels[idx] == 0]
    assert gen.mean() - imp.mean() > 0.3
    assert ((s > 0.35) == (pairs.labels[idx] == 1)).mean() >= 0.9


def test_detect_path_on_uncropped_photo():
    imgs = lfw_images(2)
    photos = []
    for im in imgs:
        canvas = Image.new("RGB", (400, 300), (90, 100, 110))
        canvas.paste(im.resize((200, 200), Image.BICUBIC), (120, 40))
        photos.append(canvas)
    direct = FaceEmbedder.default().embed(imgs)
    detected = FaceEmbedder.default(detect=True).embed(photos, names=["a.jpg", "b.jpg"])
    assert (direct * detected).sum(1).min() > 0.9  # same face, aligned the same way
    blank = Image.new("RGB", (300, 300), (128, 128, 128))
    with pytest.raises(InputError, match="no face found in b.jpg"):
        FaceEmbedder.default(detect=True).embed([photos[0], blank], names=["a.jpg", "b.jpg"])


def test_bad_inputs(tmp_path, face):
    with pytest.raises(NotFoundError, match="ONNX model not found"):
        FaceEmbedder.default(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="smaller than"):
        face.embed([Image.new("RGB", (10, 300))])
    with pytest.raises(InputError, match="on_missing"):
        FaceEmbedder.default(on_missing="guess")
    with pytest.raises(InputError, match="PIL image"):
        face.embed([np.zeros((112, 112, 3))])  # type: ignore[list-item]
    assert face.embed([]).shape == (0, 128)
