"""Searchers against brute force: exact top-k equals a full sort; faiss agrees with exact."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.errors import InputError
from biomatch.gallery.search import ExactSearcher, FaissSearcher, build_searcher, default_nprobe


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def face_like(n_ids: int, per_id: int, dim: int, seed: int, spread: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors (identity centre + noise), like face templates; returns (x, centres)."""
    rng = np.random.default_rng(seed)
    centres = _unit(n_ids, dim, seed + 1)
    noise = rng.normal(size=(n_ids, per_id, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    x = (centres[:, None, :] + noise).reshape(-1, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True), centres


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("k", [1, 7, 600])
def test_exact_matches_full_sort(backend: str, k: int) -> None:
    gallery, queries = _unit(500, 16, 0), _unit(9, 16, 1)
    searcher = ExactSearcher(gallery, backend=backend, chunk=128)  # several chunks to merge
    scores, idx = searcher.search(queries, k)
    full = queries @ gallery.T
    for q in range(len(queries)):
        order = np.argsort(-full[q])[: min(k, 500)]
        np.testing.assert_allclose(scores[q, : len(order)], full[q, order], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.sort(idx[q, : len(order)]), np.sort(order))
    if k > 500:  # padding past the gallery
        assert np.all(idx[:, 500:] == -1) and np.all(np.isneginf(scores[:, 500:]))


def test_torch_chunked_path_matches_numpy() -> None:
    """Big query blocks go through the chunked torch path; it must agree with numpy."""
    gallery, queries = _unit(3000, 8, 2), _unit(30000, 8, 3)  # 9e7 scores > one-shot limit
    a = ExactSearcher(gallery, "torch", chunk=1024).search(queries[:2000], 3)
    b = ExactSearcher(gallery, "numpy").search(queries[:2000], 3)
    np.testing.assert_array_equal(a[1][:, 0], b[1][:, 0])
    big = ExactSearcher(gallery, "torch", chunk=1024)
    s, i = big.search(queries, 2)
    ref = np.argmax(queries[:500] @ gallery.T, axis=1)
    np.testing.assert_array_equal(i[:500, 0], ref)


def test_flat_faiss_equals_exact() -> None:
    gallery, queries = _unit(2000, 32, 4), _unit(50, 32, 5)
    es, ei = build_searcher(gallery, "exact").search(queries, 5)
    fs, fi = build_searcher(gallery, "flat").search(queries, 5)
    np.testing.assert_array_equal(ei, fi)
    np.testing.assert_allclose(es, fs, rtol=1e-5, atol=1e-5)


def test_ivf_parity_at_1e5() -> None:
    """Issues #5 and #13: same top-1 identity as exact search for >= 99 % of queries at 10^5
    face-like templates with the default IVF parameters, and nearly always the same template."""
    n_ids, per_id, dim = 20_000, 5, 128
    gallery, centres = face_like(n_ids, per_id, dim, seed=6)
    rng = np.random.default_rng(7)
    who = rng.choice(n_ids, 500, replace=False)
    probe = centres[who] + rng.normal(size=(500, dim)).astype(np.float32) * (0.9 / np.sqrt(dim))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    _, exact = ExactSearcher(gallery).search(probe, 1)
    ivf = FaissSearcher(gallery, "ivf")
    _, ann = ivf.search(probe, 1)
    parity = float(np.mean(exact[:, 0] // per_id == ann[:, 0] // per_id))
    assert parity >= 0.99, parity
    # issue #13: the default nprobe also finds the same *template* for nearly every query. The
    # >= 0.99 target is met at 10^6 (benchmarks/engine_speed.py); at 10^5 it is 0.97-0.99
    # depending on the k-means seed (measured over 3 seeds on this data and the benchmark's).
    assert ivf.index.nprobe == default_nprobe(ivf.index.nlist)
    template = float(np.mean(exact[:, 0] == ann[:, 0]))
    assert template >= 0.97, template
    assert np.mean(exact[:, 0] // per_id == who) > 0.95  # the data is what we think it is
    # a deliberately starved index must show up as lower parity (the check can fail)
    ivf.index.nprobe = 1
    _, starved = ivf.search(probe, 1)
    assert np.mean(exact[:, 0] // per_id == starved[:, 0] // per_id) < 0.9


def test_default_nprobe_is_a_share_of_the_lists() -> None:
    assert default_nprobe(1) == 1
    assert default_nprobe(316) == 158
    assert default_nprobe(1000) == 500
    x = _unit(4000, 16, 10)
    assert FaissSearcher(x, "ivf", nprobe=3).index.nprobe == 3  # an explicit value wins


def test_hnsw_small_parity() -> None:
    gallery, centres = face_like(1000, 4, 32, seed=8)
    probe = centres[:200] + np.random.default_rng(9).normal(size=(200, 32)).astype(np.float32) * 0.15
    _, exact = ExactSearcher(gallery).search(probe, 1)
    _, ann = FaissSearcher(gallery, "hnsw").search(probe, 1)
    assert np.mean(exact[:, 0] == ann[:, 0]) >= 0.99


def test_bad_arguments() -> None:
    g = _unit(10, 4, 0)
    with pytest.raises(InputError, match="shape"):
        ExactSearcher(g).search(_unit(1, 5, 0), 1)
    with pytest.raises(InputError, match="k must"):
        ExactSearcher(g).search(_unit(1, 4, 0), 0)
    with pytest.raises(InputError, match="unknown search kind"):
        build_searcher(g, "annoy")
    with pytest.raises(InputError, match="non-empty"):
        FaissSearcher(np.zeros((0, 4), np.float32), "flat")
    s, i = ExactSearcher(np.zeros((0, 4), np.float32)).search(_unit(2, 4, 0), 3)
    assert np.all(i == -1) and s.shape == (2, 3)
