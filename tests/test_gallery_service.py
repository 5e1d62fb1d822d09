"""GalleryService: enrol/verify/identify against slow brute-force loops, model-hash safety, atomic enrolment."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images

THRESHOLD = 0.5  # cosine similarity; views of one pattern score ~0.98, different patterns ~0


class OtherModel(PixelEmbedder):
    """Same maths, different weights hash: its templates must never be mixed with PixelEmbedder's."""

    @property
    def model_hash(self) -> str:
        return "f" * 64


@pytest.fixture
def service(tmp_path: Path) -> GalleryService:
    return GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), threshold=THRESHOLD)


def _enrol_many(svc: GalleryService, n_users: int, per_user: int = 3) -> None:
    for u in range(n_users):
        svc.enroll(f"user{u}", pattern_images(u, per_user, seed=0))


def test_enrol_verify_identify(service: GalleryService) -> None:
    _enrol_many(service, 6)
    probe = pattern_images(2, 5, seed=0)[4]  # a fresh view of user2
    ok = service.verify("user2", probe)
    assert ok.accepted and ok.distance < 0.1 and ok.threshold == THRESHOLD
    bad = service.verify("user3", probe)
    assert not bad.accepted and bad.score < THRESHOLD and bad.distance == pytest.approx(1 - bad.score)
    res = service.identify(probe, k=3)
    assert res.user == "user2" and len(res.candidates) == 3
    assert res.candidates[0].distance <= res.candidates[1].distance <= res.candidates[2].distance
    stranger = pattern_images(99, 1, seed=0)[0]
    assert service.identify(stranger).user is None  # best candidate beyond threshold → unknown
    assert len(service.identify(stranger).candidates) == 5


@pytest.mark.parametrize("policy", ["max", "mean"])
@pytest.mark.parametrize("search", ["exact", "numpy", "flat"])
def test_identify_equals_slow_loop(tmp_path: Path, policy: str, search: str) -> None:
    """Top-k users = brute force over every stored template, aggregated per user by the policy."""
    emb = PixelEmbedder(side=4)  # low dim → many near ties, a hard case for aggregation
    svc = GalleryService(emb, SQLiteStore(tmp_path / "g.db"), THRESHOLD, policy=policy, search=search)
    rng = np.random.default_rng(0)
    for u in range(15):
        n = int(rng.integers(1, 5))
        svc.enroll(f"u{u:02d}", pattern_images(u, n, seed=1, noise=60))
    templates = svc.store.templates(emb.model_hash)
    for probe in pattern_images(100, 4, seed=2, noise=80):
        q = emb.embed([probe])[0]
        per_user: dict[str, list[float]] = {}
        for user, vec in zip(templates.users, templates.vectors):
            per_user.setdefault(user, []).append(float(vec @ q))
        agg = {u: (max(s) if policy == "max" else float(np.mean(s))) for u, s in per_user.items()}
        expected = sorted(agg.items(), key=lambda t: -t[1])[:7]
        got = svc.identify(probe, k=7).candidates
        np.testing.assert_allclose([m.score for m in got], [s for _, s in expected], atol=1e-5)
        assert got[0].user == expected[0][0]
        v = svc.verify(expected[3][0], probe)
        assert v.score == pytest.approx(expected[3][1], abs=1e-5)


def test_k_larger_than_gallery(service: GalleryService) -> None:
    _enrol_many(service, 2)
    res = service.identify(pattern_images(0, 1, seed=0)[0], k=10)
    assert [m.user for m in res.candidates][:1] == ["user0"] and len(res.candidates) == 2


def test_gallery_cache_follows_store(service: GalleryService) -> None:
    _enrol_many(service, 3)
    probe = pattern_images(1, 4, seed=0)[3]
    assert service.identify(probe).user == "user1"
    service.delete("user1")
    assert service.identify(probe).user != "user1"  # the cached index was rebuilt
    service.enroll("user1b", pattern_images(1, 2, seed=0))
    assert service.identify(probe).user == "user1b"


def test_errors_are_clear(service: GalleryService, tmp_path: Path) -> None:
    img = pattern_images(0, 1)[0]
    with pytest.raises(StateError, match="gallery is empty"):
        service.identify(img)
    with pytest.raises(NotFoundError, match="unknown user 'ghost'"):
        service.verify("ghost", img)
    with pytest.raises(NotFoundError, match="unknown user"):
        service.delete("ghost")
    with pytest.raises(InputError, match="invalid user id"):
        service.enroll("../etc", [img])
    with pytest.raises(InputError, match="at least one image"):
        service.enroll("alice", [])
    with pytest.raises(InputError, match="cannot read image"):
        service.enroll("alice", [b"not an image"])
    with pytest.raises(NotFoundError, match="image not found"):
        service.enroll("alice", [tmp_path / "missing.png"])
    with pytest.raises(InputError, match="k must"):
        service.identify(img, k=0)


def test_enrolment_is_all_or_nothing(service: GalleryService) -> None:
    """One unreadable image in a batch stores none of the batch (validate before writing)."""
    good = pattern_images(0, 2)
    buf = io.BytesIO()
    good[0].save(buf, "PNG")
    corrupt = buf.getvalue()[:60]  # truncated PNG
    service.enroll("alice", [good[0]])
    rev = service.store.revision()
    with pytest.raises(InputError, match="image 3"):
        service.enroll("alice", [good[1], buf.getvalue(), corrupt])
    assert service.store.revision() == rev
    assert [(u.user, u.n_templates) for u in service.users()] == [("alice", 1)]


def test_templates_of_another_model_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    old = GalleryService(OtherModel(), store, THRESHOLD)
    old.enroll("alice", pattern_images(0, 2))
    new = GalleryService(PixelEmbedder(), store, THRESHOLD)
    img = pattern_images(0, 1)[0]
    with pytest.raises(StateError, match="other models .*ffffffffffff.*re-enrol"):
        new.identify(img)
    with pytest.raises(StateError, match="user 'alice' has no templates made by the current model"):
        new.verify("alice", img)
    new.enroll("bob", pattern_images(1, 2))  # the new model's gallery ignores alice's old templates
    assert new.identify(img).candidates[0].user == "bob"
    assert old.identify(img).user == "alice"


def test_embedder_output_is_checked(tmp_path: Path) -> None:
    class Broken(PixelEmbedder):
        def embed(self, images):  # noqa: ANN001, ANN201
            return np.full((len(images), self.dim), np.nan, np.float32)

    svc = GalleryService(Broken(), SQLiteStore(tmp_path / "g.db"), THRESHOLD)
    with pytest.raises(StateError, match="non-finite"):
        svc.enroll("alice", pattern_images(0, 1))
    assert svc.users() == []


def test_bad_configuration(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    with pytest.raises(InputError, match="policy"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, policy="median")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="search kind"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, search="annoy")
    with pytest.raises(InputError, match="threshold"):
        GalleryService(PixelEmbedder(), store, float("nan"))
    assert isinstance(Image.new("RGB", (2, 2)), Image.Image)
