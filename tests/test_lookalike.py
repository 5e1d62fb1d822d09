"""Look-alike search: own identity and the query file excluded, most similar identities first
(cosine similarity), per-identity aggregates against brute force, clear errors, the grid image;
faces detected and aligned through the shipped MobileFaceNet when LFW62 is here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.lookalike import AGGREGATES, LookalikeFinder, aggregate_scores, center_crop, lookalike_grid


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
    return LookalikeFinder(gallery, "efficientnet_lite0", cache=tmp_path_factory.mktemp("cache"), progress=False,
                           aggregate="nearest")


def test_query_in_gallery_excludes_own_identity_and_itself(finder, gallery):
    q = gallery / "person2" / "0.png"
    matches, crop, how = finder.search(q, k=4)
    assert [m.identity for m in matches].count("person2") == 0 and len(matches) == 4
    assert len({m.identity for m in matches}) == 4
    assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
    with_own, _, _ = finder.search(q, k=1, auto_exclude=False)
    # its own identity's *other* image is the nearest; the query file itself is never returned
    assert with_own[0].identity == "person2" and with_own[0].path.name == "1.png" and with_own[0].similarity < 1 - 1e-4
    assert how == "center crop"


def test_external_copy_finds_its_source_at_distance_zero(finder, gallery, tmp_path):
    q = tmp_path / "me.png"
    shutil.copy(gallery / "person3" / "1.png", q)
    matches, _, _ = finder.search(q, k=2)
    assert matches[0].identity == "person3" and matches[0].similarity == pytest.approx(1.0, abs=1e-4)
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


def test_aggregates_against_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 30)
    labels[:5] = np.arange(5)  # every identity present
    q = emb[0] * 0.5 + emb[7] * 0.5
    q /= np.linalg.norm(q)
    sims = emb @ q
    for how in AGGREGATES:
        got = aggregate_scores(sims, labels, 5, how, emb, q)
        for c in range(5):
            s = sorted(float(v) for v in sims[labels == c])
            want = {"nearest": s[-1], "top3": sum(s[-3:]) / len(s[-3:]),
                    "centroid": float(emb[labels == c].mean(0) @ q / np.linalg.norm(emb[labels == c].mean(0)))}[how]
            assert got[c] == pytest.approx(want)
    sims[labels == 2] = -np.inf  # an identity without usable images drops out
    assert aggregate_scores(sims, labels, 5, "top3")[2] == -np.inf
    with pytest.raises(InputError, match="unknown aggregate"):
        aggregate_scores(sims, labels, 5, "median")


def test_aggregate_does_not_favour_identities_with_many_photos():
    """One moderately similar photo among many should not beat a consistently similar identity."""
    rng = np.random.default_rng(1)
    many = np.r_[0.62, rng.uniform(-0.1, 0.2, 99)]  # 100 photos, one lucky
    few = np.array([0.6, 0.58, 0.57])  # 3 photos, all alike
    sims = np.r_[many, few]
    labels = np.r_[np.zeros(100, int), np.ones(3, int)]
    assert np.argmax(aggregate_scores(sims, labels, 2, "nearest")) == 0
    assert np.argmax(aggregate_scores(sims, labels, 2, "top3")) == 1
    # centroid: 100 unrelated directions average out; 3 aligned ones do not
    rng = np.random.default_rng(2)
    q = np.eye(16)[0]
    lucky = rng.standard_normal((100, 16))
    lucky[0] = q * 0.62 + np.eye(16)[1] * 0.78
    alike = q * 0.6 + rng.standard_normal((3, 16)) * 0.1
    emb = np.r_[lucky, alike]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    c = aggregate_scores(emb @ q, labels, 2, "centroid", emb, q)
    assert np.argmax(c) == 1


def _lfw_gallery(root: Path, n_people: int, per_person: int, write) -> tuple[Path, list[str]]:
    """A one-folder-per-identity gallery under ``root`` from the first LFW62 people (skip without them);
    ``write(src, dst)`` puts each image there. Returns the LFW62 folder and the people used."""
    from biomatch.paths import dataset_dir

    try:
        lfw = dataset_dir("lfw62")
    except NotFoundError:
        pytest.skip("lfw62 not available")
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())[:n_people]
    for name in people:
        (root / name).mkdir(parents=True)
        for f in sorted((lfw / name).iterdir())[:per_person]:
            write(f, root / name / f.name)
    return lfw, people


def test_faces_are_detected_aligned_and_no_face_is_an_error(tmp_path):
    def in_a_bigger_photo(src: Path, dst: Path) -> None:  # ordinary photos: the face somewhere in a bigger picture
        photo = Image.new("RGB", (400, 300), (60, 80, 100))
        photo.paste(Image.open(src).convert("RGB").resize((160, 160)), (200, 60))
        photo.save(dst)

    lfw, people = _lfw_gallery(tmp_path / "g", n_people=4, per_person=3, write=in_a_bigger_photo)
    Image.new("RGB", (200, 120), (90, 120, 200)).save(tmp_path / "g" / people[1] / "sky.png")  # no face
    finder = LookalikeFinder(tmp_path / "g", "auto", cache=tmp_path / "cache", progress=False)
    assert finder.embedder == "face" and finder.n_without_face == 1 and finder.aggregate == "centroid"
    # another photo of person 0 (not in the gallery) is recognised when not excluded ...
    other = sorted((lfw / people[0]).iterdir())[5]
    top, crop, how = finder.search(other, k=1)
    assert top[0].identity == people[0] and how.startswith("face found by") and crop.size == (112, 112)
    assert -1.0 <= top[0].similarity <= 1.0 and top[0].path.name != "sky.png"
    # ... and excluded when its identity is given
    rest, _, _ = finder.search(other, k=3, exclude_identity=people[0])
    assert people[0] not in [m.identity for m in rest]
    assert [m.similarity for m in rest] == sorted((m.similarity for m in rest), reverse=True)
    # a picture without a face is an error, unless detection is switched off
    with pytest.raises(InputError, match="no face found in .*sky.png.*--no-detect"):
        finder.search(tmp_path / "g" / people[1] / "sky.png", k=1)
    _, crop, how = finder.search(tmp_path / "g" / people[1] / "sky.png", k=1, detect=False)
    assert how.startswith("no detection") and crop.size == (112, 112)


def test_cli_lookalike_prints_cosine_similarity_and_fails_without_a_face(tmp_path):
    from typer.testing import CliRunner

    from biomatch.cli import app
    lfw, people = _lfw_gallery(tmp_path / "g", n_people=3, per_person=2, write=shutil.copy)
    query = sorted((lfw / people[0]).iterdir())[4]
    runner = CliRunner()
    res = runner.invoke(app, ["lookalike", str(query), "--gallery", str(tmp_path / "g"), "-k", "2",
                              "--out", str(tmp_path / "grid.png")])
    assert res.exit_code == 0, res.output
    assert "similarity" in res.output and "distance" not in res.output and (tmp_path / "grid.png").is_file()
    hand = tmp_path / "hand.png"
    Image.new("RGB", (200, 150), (200, 160, 140)).save(hand)
    res = runner.invoke(app, ["lookalike", str(hand), "--gallery", str(tmp_path / "g"), "-k", "2",
                              "--out", str(tmp_path / "grid2.png")])
    # biomatch.cli.main turns this InputError into one line on stderr and exit code 2
    assert res.exit_code != 0 and isinstance(res.exception, InputError) and "no face found" in str(res.exception)
    res = runner.invoke(app, ["lookalike", str(hand), "--gallery", str(tmp_path / "g"), "-k", "2", "--no-detect",
                              "--out", str(tmp_path / "grid3.png")])
    assert res.exit_code == 0, res.output
