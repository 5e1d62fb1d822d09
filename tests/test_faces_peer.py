"""The face_recognition peer reproduced with dlib: descriptors, the no-face fallback, the
resumable cache, and scores as negative Euclidean distances (higher = same)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import NotFoundError
from biomatch.faces import peer


@pytest.fixture(scope="module")
def pairs():
    if peer.available() is not None:
        pytest.skip(peer.available())
    from biomatch.faces.lfw import default_pairs

    try:
        return default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")


def test_descriptor_and_scores(pairs):
    p = peer.FaceRecognitionPeer()
    i = int(np.flatnonzero(pairs.labels == 1)[0])
    a, fa = p.encode(Image.open(pairs.path(pairs.left[i])))
    b, fb = p.encode(Image.open(pairs.path(pairs.right[i])))
    assert a.shape == (128,) and fa and fb
    emb = np.stack([a, b])
    s = peer.peer_scores(emb, np.array([0]), np.array([1]))
    assert s[0] == pytest.approx(-np.linalg.norm(a - b), rel=1e-6) and s[0] > -peer.TOLERANCE  # same person
    blank, found = p.encode(Image.new("RGB", (112, 112), (128, 128, 128)))
    assert not found and blank.shape == (128,)  # whole image used as the box, counted as FTA


def test_cache_resumes(pairs, tmp_path):
    imgs = pairs.images[:3]
    cache = tmp_path / "peer.npz"
    first = peer.cached_peer_embeddings(imgs, pairs.root, cache, limit=2, log=lambda s: None)
    assert first["done"].tolist() == [True, True, False]
    full = peer.cached_peer_embeddings(imgs, pairs.root, cache, log=lambda s: None)
    assert full["done"].all() and int(full["n_computed"]) == 3
    np.testing.assert_array_equal(full["emb"][:2], first["emb"][:2])
    assert float(full["cpu_s"]) >= float(first["cpu_s"]) > 0
