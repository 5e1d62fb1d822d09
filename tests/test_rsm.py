"""RSM re-scoring: exact match with the slow reference loop, shortlist, direction, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.matching.distances import cosine_dissimilarity, hamming_dissimilarity, pair_scores
from biomatch.matching.rsm import RSM, draw_references, rsm_matrix, rsm_shortlist
from biomatch.metrics.verification import eer


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((1 - torch.dot(u, v) / (u.norm() * v.norm())) / 2)


def _loop_rsm(rows, cols, refs, alpha, row_item_of_ref, col_item_of_ref) -> np.ndarray:
    """The formula, one pair and one reference at a time (slow reference implementation)."""
    out = np.zeros((len(rows), len(cols)))
    for i, xi in enumerate(rows):
        for j, xj in enumerate(cols):
            terms = [
                abs(_cos(xi, xk) - _cos(xj, xk))
                for k, xk in enumerate(refs)
                if row_item_of_ref[k] != i and col_item_of_ref[k] != j
            ]
            rel = sum(terms) / len(terms) if terms else 0.0
            out[i, j] = rel + alpha * _cos(xi, xj)
    return out


def _features(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_matches_loop_with_disjoint_references() -> None:
    x, refs = _features(9), _features(6, seed=1)
    got = RSM(m=None, alpha=0.5).from_features(x, x, refs, cosine_dissimilarity)
    want = _loop_rsm(x, x, refs, 0.5, [-1] * 6, [-1] * 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_matches_loop_when_references_are_the_items_themselves() -> None:
    x = _features(10, seed=2)
    rsm = RSM(m=4, alpha=1.0, seed=3, chunk_size=3)  # chunk boundaries cross owner rows
    sel = rsm.select(10)
    got = rsm.from_features(x, x, x, cosine_dissimilarity, row_ref_owner=torch.arange(10), col_ref_owner=torch.arange(10))
    owners = sel.tolist()
    want = _loop_rsm(x, x, x[sel], 1.0, owners, owners)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_matches_loop_test_vs_enrolled_with_enrolled_references() -> None:
    test, enrolled = _features(5, seed=4), _features(7, seed=5)
    rsm = RSM(m=3, alpha=2.0, seed=1)
    sel = rsm.select(7)
    got = rsm.from_features(test, enrolled, enrolled, cosine_dissimilarity, col_ref_owner=torch.arange(7))
    want = _loop_rsm(test, enrolled, enrolled[sel], 2.0, [-1] * 3, sel.tolist())
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_chunking_and_in_place_do_not_change_the_result() -> None:
    x, refs = _features(13, seed=6), _features(5, seed=7)
    d, a = cosine_dissimilarity(x, x), cosine_dissimilarity(x, refs)
    full = rsm_matrix(d, a, a, alpha=1.0, chunk_size=1000)
    for chunk in (1, 4):
        torch.testing.assert_close(rsm_matrix(d, a, a, chunk_size=chunk), full, rtol=0, atol=1e-12)
    d2 = d.clone()
    rsm_matrix(d2, a, a, out=d2, chunk_size=4)
    torch.testing.assert_close(d2, full, rtol=0, atol=1e-12)


def test_draw_references_is_seeded_without_repeats() -> None:
    a, b, c = draw_references(100, 30, seed=0), draw_references(100, 30, seed=0), draw_references(100, 30, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 30 and int(a.max()) < 100
    assert torch.equal(draw_references(10, None, seed=0), torch.arange(10))
    assert torch.equal(draw_references(10, 50, seed=0), torch.arange(10))


def test_lower_rsm_means_same_palm_on_a_toy_case() -> None:
    # a1, a2: one palm whose direct distance is inflated by noise; b1: another palm that
    # happens to be closer to a1 than a2 is. References see a1 and a2 alike.
    direct = torch.tensor([[0.0, 0.50, 0.45], [0.50, 0.0, 0.6], [0.45, 0.6, 0.0]], dtype=torch.float64)
    to_refs = torch.tensor([[0.2, 0.8, 0.5], [0.25, 0.75, 0.55], [0.8, 0.2, 0.3]], dtype=torch.float64)
    r = rsm_matrix(direct, to_refs, to_refs, alpha=1.0)
    assert direct[0, 1] > direct[0, 2]  # the plain score prefers the impostor
    assert r[0, 1] == pytest.approx(0.05 + 0.5) and r[0, 2] == pytest.approx((0.6 + 0.6 + 0.2) / 3 + 0.45)
    assert r[0, 1] < r[0, 2]  # RSM prefers the genuine pair: lower R = same palm
    scores, labels = pair_scores(r, torch.tensor([0, 0, 1]))
    plain, _ = pair_scores(direct, torch.tensor([0, 0, 1]))
    assert eer(scores.numpy(), labels.numpy()) == 0.0 < eer(plain.numpy(), labels.numpy())


def test_rsm_separates_noisy_identities_better_on_synthetic_embeddings() -> None:
    # 10 identities x 4 images; per-image noise is larger than the identity signal
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(10, 64, generator=gen)
    ids = torch.arange(10).repeat_interleave(4)
    x = protos[ids] + 1.5 * torch.randn(40, 64, generator=gen)
    refs = protos[torch.arange(10).repeat_interleave(3)] + 1.5 * torch.randn(30, 64, generator=gen)
    direct = cosine_dissimilarity(x, x)
    r = RSM(m=30, alpha=1.0).from_features(x, x, refs, cosine_dissimilarity)
    e_plain = eer(*(t.numpy() for t in pair_scores(direct, ids)))
    e_rsm = eer(*(t.numpy() for t in pair_scores(r, ids)))
    assert e_rsm < e_plain


def test_shortlist_matches_full_matrix_on_the_top_n() -> None:
    q, g, refs = _features(6, seed=8), _features(20, seed=9), _features(7, seed=10)
    d, qa, ga = cosine_dissimilarity(q, g), cosine_dissimilarity(q, refs), cosine_dissimilarity(g, refs)
    full = rsm_matrix(d, qa, ga, alpha=1.0)
    idx, sc = rsm_shortlist(d, qa, ga, top_n=5, alpha=1.0)
    nearest = d.topk(5, dim=1, largest=False).indices
    for row in range(6):
        assert set(idx[row].tolist()) == set(nearest[row].tolist())
        torch.testing.assert_close(sc[row], full[row, idx[row]])
        assert bool((sc[row][1:] >= sc[row][:-1]).all())
    idx_all, _ = rsm_shortlist(d, qa, ga, top_n=100, alpha=1.0)
    assert torch.equal(idx_all, full.argsort(dim=1, stable=True))


def test_hamming_dissimilarity_matches_bit_count() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 2, (4, 37), generator=gen), torch.randint(0, 2, (3, 37), generator=gen)
    want = torch.tensor([[float((ai != bj).sum()) / 37 for bj in b] for ai in a])
    torch.testing.assert_close(hamming_dissimilarity(a, b), want)


def test_bad_inputs_raise_input_error() -> None:
    d = torch.zeros(3, 4)
    with pytest.raises(InputError, match="rows_to_refs has 2 rows"):
        rsm_matrix(d, torch.zeros(2, 5), torch.zeros(4, 5))
    with pytest.raises(InputError, match="different references"):
        rsm_matrix(d, torch.zeros(3, 5), torch.zeros(4, 6))
    with pytest.raises(InputError, match="row_ref_owner points outside"):
        rsm_matrix(d, torch.zeros(3, 2), torch.zeros(4, 2), row_ref_owner=torch.tensor([0, 7]))
    with pytest.raises(InputError, match="M must be >= 1"):
        draw_references(10, 0, seed=0)
    with pytest.raises(InputError, match="feature sizes differ"):
        cosine_dissimilarity(torch.zeros(2, 3), torch.zeros(2, 4))


def test_in_place_and_other_dtype_outputs_equal_the_fresh_result() -> None:
    gen = torch.Generator().manual_seed(5)
    direct = torch.rand(50, 40, generator=gen, dtype=torch.float64)
    a, b = torch.rand(50, 7, generator=gen, dtype=torch.float64), torch.rand(40, 7, generator=gen, dtype=torch.float64)
    fresh = rsm_matrix(direct, a, b, alpha=0.7, chunk_size=16)
    in_place = direct.clone()
    assert rsm_matrix(in_place, a, b, alpha=0.7, chunk_size=16, out=in_place) is in_place
    assert torch.equal(in_place, fresh)
    other = torch.empty(50, 40, dtype=torch.float32)
    rsm_matrix(direct, a, b, alpha=0.7, chunk_size=16, out=other)
    assert torch.equal(other, fresh.float())
