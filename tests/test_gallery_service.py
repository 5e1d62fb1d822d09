"""GalleryService: enrol/verify/identify against slow brute-force loops, model-hash safety, atomic enrolment."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.gallery.service import GalleryService, RSMOptions
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images
from biomatch.matching.rsm import draw_references

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
    assert ok.accepted and ok.similarity > 0.9 and ok.threshold == THRESHOLD
    bad = service.verify("user3", probe)
    assert not bad.accepted and bad.similarity < THRESHOLD
    res = service.identify(probe, k=3)
    assert res.user == "user2" and len(res.candidates) == 3
    assert res.candidates[0].similarity >= res.candidates[1].similarity >= res.candidates[2].similarity
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
        np.testing.assert_allclose([m.similarity for m in got], [s for _, s in expected], atol=1e-5)
        assert got[0].user == expected[0][0]
        v = svc.verify(expected[3][0], probe)
        assert v.similarity == pytest.approx(expected[3][1], abs=1e-5)


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


# -- RSM re-scoring of the identify shortlist ------------------------------------------------


def _brute_force_rsm(svc: GalleryService, probe: Image.Image, k: int, opts: RSMOptions) -> list[tuple[str, float, float | None]]:
    """(user, cosine score, R) by plain loops: cosine top-k, its first `shortlist` re-ranked by R."""
    t = svc.store.templates(svc.embedder_id)
    q = [float(v) for v in svc.embed(probe)]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    S = lambda a, b: (1.0 - dot(a, b)) / 2.0  # noqa: E731
    per_user: dict[str, list[list[float]]] = {}
    for user, vec in zip(t.users, t.vectors):
        per_user.setdefault(user, []).append([float(v) for v in vec])
    agg = max if svc.policy == "max" else (lambda xs: sum(xs) / len(xs))
    cos = {u: agg([dot(v, q) for v in vs]) for u, vs in per_user.items()}
    plain = sorted(cos, key=lambda u: -cos[u])[: max(k, opts.shortlist)]
    picked = draw_references(len(t), opts.m, opts.seed).tolist()
    refs = [([float(v) for v in t.vectors[i]], t.users[i]) for i in picked]
    rsm = {}
    for u in plain[: opts.shortlist]:
        values = []
        for tv in per_user[u]:
            own = [r for r, owner in refs if owner != u]
            rel = sum(abs(S(q, r) - S(tv, r)) for r in own) / len(own) if own else 0.0
            values.append(rel + opts.alpha * S(q, tv))
        rsm[u] = min(values) if svc.policy == "max" else sum(values) / len(values)
    head = sorted(plain[: opts.shortlist], key=lambda u: rsm[u])
    return [(u, cos[u], rsm.get(u)) for u in head + plain[opts.shortlist :]][:k]


@pytest.mark.parametrize("policy", ["max", "mean"])
@pytest.mark.parametrize("k, opts", [(6, RSMOptions(m=7, alpha=1.0, seed=3, shortlist=4)),
                                     (2, RSMOptions(m=None, alpha=0.3, seed=0, shortlist=5))])
def test_rsm_identify_equals_brute_force(tmp_path: Path, policy: str, k: int, opts: RSMOptions) -> None:
    emb = PixelEmbedder(side=6)
    plain = GalleryService(emb, SQLiteStore(tmp_path / "g.db"), THRESHOLD, policy=policy)
    rng = np.random.default_rng(1)
    for u in range(12):
        plain.enroll(f"u{u:02d}", pattern_images(u, int(rng.integers(1, 4)), seed=1, noise=70))
    svc = GalleryService(emb, plain.store, THRESHOLD, policy=policy, rescore="rsm", rescore_options=opts)
    reordered = 0
    for probe in [*pattern_images(3, 3, seed=5, noise=90), *pattern_images(100, 2, seed=5)]:
        for kk in (k, opts.shortlist):
            expected = _brute_force_rsm(svc, probe, kk, opts)
            got = svc.identify(probe, k=kk).candidates
            assert [m.user for m in got] == [u for u, _, _ in expected]
            np.testing.assert_allclose([m.similarity for m in got], [s for _, s, _ in expected], atol=1e-5)
            np.testing.assert_allclose([-1 if m.rsm is None else m.rsm for m in got],
                                       [-1 if r is None else r for _, _, r in expected], atol=1e-6)
        plain_users = [m.user for m in plain.identify(probe, k=opts.shortlist).candidates]
        reordered += plain_users != [m.user for m in got]
    assert reordered > 0  # RSM really changed some orders (else this test shows nothing)


class VectorEmbedder:
    """Returns the vector carried in ``image.info["vec"]``: lets a test place embeddings exactly."""

    name, dim = "vectors", 8

    @property
    def model_hash(self) -> str:
        return "v" * 64

    def embed(self, images):  # noqa: ANN001, ANN201
        return np.stack([np.asarray(im.info["vec"], np.float32) for im in images])


def _vec_image(*vec: float) -> Image.Image:
    im = Image.new("L", (4, 4))
    im.info["vec"] = np.asarray(vec) / np.linalg.norm(vec)
    return im


def test_rsm_fixes_a_wrong_top1_on_a_toy_gallery(tmp_path: Path) -> None:
    """The probe of alice is directly closer to bob (cos 0.678 vs 0.540), but alice and the probe
    look alike *to the six other users* (same similarity profile), bob does not: RSM ranks alice first.

    Hand computation (S = (1 - cos) / 2, refs = all 8 templates minus the candidate's own):
    R(alice) = |S(q,bob) - S(alice,bob)| / 7 + S(q,alice) = 0.339114 / 7 + 0.23 = 0.278445
    R(bob) = (|S(q,alice) - S(bob,alice)| + 6 * 0.15) / 7 + S(q,bob) = 1.17 / 7 + 0.160886 = 0.328029
    """
    p = [0.3, -0.3, 0.3, -0.3, 0.3, -0.3]  # |p|^2 = 0.54
    r = float(np.sqrt(0.46))
    store = SQLiteStore(tmp_path / "g.db")
    plain = GalleryService(VectorEmbedder(), store, THRESHOLD)
    plain.enroll("alice", [_vec_image(0, r, *p)])
    plain.enroll("bob", [_vec_image(1, 0, 0, 0, 0, 0, 0, 0)])
    for i in range(6):
        plain.enroll(f"other{i}", [_vec_image(*np.eye(8)[2 + i])])
    probe = _vec_image(r, 0, *p)
    res = plain.identify(probe, k=2)
    assert [m.user for m in res.candidates] == ["bob", "alice"]  # plain cosine: wrong
    assert res.candidates[0].similarity == pytest.approx(r, abs=1e-6)
    rsm = GalleryService(VectorEmbedder(), store, THRESHOLD, rescore="rsm",
                         rescore_options={"m": None, "alpha": 1.0, "shortlist": 2})
    fixed = rsm.identify(probe, k=2)
    assert [m.user for m in fixed.candidates] == ["alice", "bob"]
    assert [m.rsm for m in fixed.candidates] == pytest.approx([0.278445, 0.328029], abs=1e-5)
    # accepting still compares the cosine score with the cosine threshold: 0.54 >= 0.5
    assert fixed.user == "alice" and fixed.candidates[0].similarity == pytest.approx(0.54, abs=1e-6)
    # with alpha large the direct term dominates and the order is cosine's again
    direct = GalleryService(VectorEmbedder(), store, THRESHOLD, rescore="rsm",
                            rescore_options={"m": None, "alpha": 10.0, "shortlist": 2})
    assert direct.identify(probe, k=2).candidates[0].user == "bob"


def test_rsm_options_are_checked(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    with pytest.raises(InputError, match="rescoring"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="kreciprocal")
    with pytest.raises(InputError, match="m >= 1"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="rsm", rescore_options={"m": 0})
    with pytest.raises(InputError, match="shortlist"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="rsm", rescore_options={"shortlist": 0})
    with pytest.raises(InputError, match="bad RSM options"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="rsm", rescore_options={"beta": 1})
    with pytest.raises(InputError, match="not both"):
        GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="rsm", rescorer=lambda q, t: t @ q)
    svc = GalleryService(PixelEmbedder(), store, THRESHOLD, rescore="rsm")
    svc.enroll("solo", pattern_images(0, 2))  # one user: no reference is disjoint, direct term only
    (m,) = svc.identify(pattern_images(0, 3)[2]).candidates
    assert m.rsm == pytest.approx(1.0 * (1 - m.similarity) / 2, abs=1e-5)


# -- face (detect) and face-crop templates never mix -------------------------------------------


def test_face_and_face_crop_templates_do_not_mix(tmp_path: Path) -> None:
    """Same ONNX file, different input pipeline: different store keys, a clear StateError; each
    pipeline loads its own calibrated threshold (bound to the model file and the pipeline)."""
    from biomatch.faces.embedder import FaceEmbedder
    from biomatch.gallery.setup import load_embedder, load_threshold
    from biomatch.paths import dataset_dir

    try:
        photo = Image.open(dataset_dir("lfw_pairs") / "images/AJ_Lamas/AJ_Lamas_0001.jpg").convert("RGB")
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")
    face, crop = load_embedder("face"), load_embedder("face-crop")
    assert isinstance(face, FaceEmbedder) and face.detect and not crop.detect
    assert face.model_hash == crop.model_hash  # one model file ...
    assert face.embedder_id != crop.embedder_id  # ... two kinds of templates
    assert face.embedder_id == FaceEmbedder.default(detect=True).embedder_id  # stable
    assert all(-1.0 < load_threshold(e, None, None) < 1.0 for e in (face, crop))

    store = SQLiteStore(tmp_path / "g.db")
    GalleryService(crop, store, THRESHOLD).enroll("alice", [photo])
    detecting = GalleryService(face, store, THRESHOLD)
    with pytest.raises(StateError, match=r"user 'alice' has no templates made by the current model "
                       r"mobilefacenet on input '\w+'.*1 from the same model on pre-cropped.*re-enrol"):
        detecting.verify("alice", photo)
    with pytest.raises(StateError, match="gallery is empty.*pre-cropped.*re-enrol"):
        detecting.identify(photo)

    detecting.enroll("bob", [photo])  # and the other way round
    with pytest.raises(StateError, match="user 'bob' has no templates .*on input 'crop'.*1 from the same model on (photos|aligned)"):
        GalleryService(crop, store, THRESHOLD).verify("bob", photo)
    assert GalleryService(crop, store, THRESHOLD).verify("alice", photo).accepted  # each sees its own
    assert {h: n for h, n in store.model_hashes().items()} == {face.embedder_id: 1, crop.embedder_id: 1}

    store.add("carol", np.eye(1, 128, dtype=np.float32), face.model_hash)  # keyed the old way
    with pytest.raises(StateError, match="before the preprocessing was recorded"):
        GalleryService(face, store, THRESHOLD).verify("carol", photo)


def test_embedders_without_embedder_id_key_on_model_hash(service: GalleryService) -> None:
    service.enroll("alice", pattern_images(0, 1))
    assert service.embedder_id == PixelEmbedder().model_hash
    assert service.store.model_hashes() == {PixelEmbedder().model_hash: 1}
