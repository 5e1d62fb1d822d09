"""Look-alike search: own identity and the query file excluded, nearest identities first,
clear errors, the grid image; faces through the shipped MobileFaceNet when LFW62 is here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.lookalike import LookalikeFinder, center_crop, lookalike_grid


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """5 identities × 2 images of distinct coloured patterns (a generic, non-face gallery)."""
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    for c in range(5):
        (root / f"person{c}").mkdir()
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
        for i in range(2):
            img = np.kron(base, np.ones((16, 16, 1), np.uint8)).astype(np.int16) + rng.integers(-10, 10, (64, 64, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"person{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def finder(gallery, tmp_path_factory):
    return LookalikeFinder(gallery, "efficientnet_lite0", cache=tmp_path_factory.mktemp("cache"), progress=False)


def test_query_in_gallery_excludes_own_identity_and_itself(finder, gallery):
    q = gallery / "person2" / "0.png"
    matches, crop, how = finder.search(q, k=4)
    assert [m.identity for m in matches].count("person2") == 0 and len(matches) == 4
    assert len({m.identity for m in matches}) == 4
    assert [m.distance for m in matches] == sorted(m.distance for m in matches)
    with_own, _, _ = finder.search(q, k=1, auto_exclude=False)
    # its own identity's *other* image is the nearest; the query file itself is never returned
    assert with_own[0].identity == "person2" and with_own[0].path.name == "1.png" and with_own[0].distance > 0
    assert how == "center crop"


def test_external_copy_finds_its_source_at_distance_zero(finder, gallery, tmp_path):
    q = tmp_path / "me.png"
    shutil.copy(gallery / "person3" / "1.png", q)
    matches, _, _ = finder.search(q, k=2)
    assert matches[0].identity == "person3" and matches[0].distance == pytest.approx(0.0, abs=1e-4)
    excluded, _, _ = finder.search(q, k=2, exclude_identity="person3")
    assert "person3" not in [m.identity for m in excluded]
    out = lookalike_grid(Image.open(q).convert("RGB"), matches, tmp_path / "grid.png", title="t")
    assert out.stat().st_size > 0


def test_errors_are_clear(finder, gallery, tmp_path):
    q = gallery / "person0" / "0.png"
    with pytest.raises(InputError, match="unknown identity"):
        finder.search(q, exclude_identity="nobody")
    with pytest.raises(InputError, match="only 4 candidate"):
        finder.search(q, k=5)  # 5 identities, minus its own
    with pytest.raises(InputError, match="positive integer"):
        finder.search(q, k=0)
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        LookalikeFinder(tmp_path / "empty", "efficientnet_lite0")
    with pytest.raises(NotFoundError):
        LookalikeFinder(tmp_path / "missing", "efficientnet_lite0")
    with pytest.raises(InputError):
        lookalike_grid(Image.new("RGB", (8, 8)), [], tmp_path / "x.png")


def test_center_crop_is_square_and_central():
    img = Image.new("RGB", (40, 20))
    img.paste((255, 0, 0), (10, 0, 30, 20))
    out = center_crop(img)
    assert out.size == (20, 20) and out.getpixel((0, 0)) == (255, 0, 0)
    assert center_crop(img, 8).size == (8, 8)


def test_faces_use_the_face_embedder_and_exclude_the_person(tmp_path):
    from biomatch.paths import dataset_dir

    try:
        lfw = dataset_dir("lfw62")
    except NotFoundError:
        pytest.skip("lfw62 not available")
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())[:4]
    for name in people:
        (tmp_path / "g" / name).mkdir(parents=True)
        for f in sorted((lfw / name).iterdir())[:3]:
            shutil.copy(f, tmp_path / "g" / name / f.name)
    finder = LookalikeFinder(tmp_path / "g", "auto", cache=tmp_path / "cache", progress=False)
    assert finder.embedder == "face"
    # another photo of person 0 (not in the gallery) is recognised when not excluded ...
    other = sorted((lfw / people[0]).iterdir())[5]
    top, crop, how = finder.search(other, k=1)
    assert top[0].identity == people[0] and how == "face detector" and crop.size == (112, 112)
    # ... and excluded when its identity is given
    rest, _, _ = finder.search(other, k=3, exclude_identity=people[0])
    assert people[0] not in [m.identity for m in rest]
    # a picture without a face falls back to a center crop
    Image.new("RGB", (200, 120), (90, 120, 200)).save(tmp_path / "sky.png")
    _, crop, how = finder.search(tmp_path / "sky.png", k=1)
    assert how.startswith("center crop") and crop.size == (112, 112)
