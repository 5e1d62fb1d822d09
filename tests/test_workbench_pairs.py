"""Pair/triplet generation (balance, validity, seeding), twin/triplet networks sharing one
embedder, and the identity-dataset splits of the workbench."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from biomatch.errors import InputError
from biomatch.workbench.data import load_split
from biomatch.workbench.networks import RowTripletObjective, SiameseNetwork, TripletNetwork
from biomatch.workbench.pairs import TupleBatchSampler, balanced_pairs, triplets

LABELS = np.repeat(np.arange(7), [2, 3, 5, 8, 1, 4, 6])  # uneven, one singleton identity


@pytest.mark.parametrize("n", [2, 51, 400])
def test_balanced_pairs_are_exactly_balanced_and_valid(n):
    pairs = balanced_pairs(LABELS, n, seed=3)
    assert pairs.shape == (n, 3)
    same = pairs[:, 2]
    assert same.sum() == (n + 1) // 2  # exact balance, not a coin flip
    i, j = pairs[:, 0], pairs[:, 1]
    np.testing.assert_array_equal(LABELS[i] == LABELS[j], same == 1)  # the flag tells the truth
    assert np.all(i[same == 1] != j[same == 1])  # a positive is never an image with itself
    assert not np.any(LABELS[i[same == 1]] == 4)  # the singleton identity cannot be a positive anchor


def test_balanced_pairs_are_seeded_and_shuffled():
    a, b, c = balanced_pairs(LABELS, 200, 1), balanced_pairs(LABELS, 200, 1), balanced_pairs(LABELS, 200, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0 < a[:100, 2].sum() < 100  # positives and negatives interleaved, not in two blocks
    with pytest.raises(InputError):
        balanced_pairs([0, 1, 2], 10, 0)  # no identity with two images
    with pytest.raises(InputError):
        balanced_pairs(LABELS, 1, 0)


def test_triplets_are_valid_and_seeded():
    t = triplets(LABELS, 300, seed=5)
    a, p, n = t.T
    assert np.all(LABELS[a] == LABELS[p]) and np.all(a != p) and np.all(LABELS[a] != LABELS[n])
    np.testing.assert_array_equal(t, triplets(LABELS, 300, seed=5))
    assert not np.array_equal(t, triplets(LABELS, 300, seed=6))
    # every identity with >= 2 images serves as an anchor at some point
    assert set(LABELS[a]) == {0, 1, 2, 3, 5, 6}


def test_tuple_sampler_flattens_rows_and_changes_with_epoch():
    s = TupleBatchSampler(LABELS, triplets, 3, per_batch=4, batches_per_epoch=5, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 5 and all(len(b) == 12 for b in batches)
    rows = np.array(batches[0]).reshape(-1, 3)
    assert np.all(LABELS[rows[:, 0]] == LABELS[rows[:, 1]]) and np.all(LABELS[rows[:, 0]] != LABELS[rows[:, 2]])
    again = list(TupleBatchSampler(LABELS, triplets, 3, 4, 5, seed=0))
    assert batches == again
    s.set_epoch(1)
    assert list(s) != batches
    pairs = TupleBatchSampler(LABELS, balanced_pairs, 2, 8, 3, seed=0)
    flat = np.array(next(iter(pairs))).reshape(-1, 2)
    assert (LABELS[flat[:, 0]] == LABELS[flat[:, 1]]).sum() == 4


def test_twin_and_triplet_networks_share_one_embedder():
    torch.manual_seed(0)
    emb = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)).eval()
    twin, trip = SiameseNetwork(emb), TripletNetwork(emb)
    assert twin.embedder is trip.embedder
    assert {id(p) for p in twin.parameters()} == {id(p) for p in trip.parameters()}
    a, b, c = torch.randn(3, 5, 6).unbind(0)
    za, zb = twin(a, b)
    torch.testing.assert_close(za, emb(a))
    torch.testing.assert_close(zb, emb(b))
    torch.testing.assert_close(twin.distance(a, b), (emb(a) - emb(b)).norm(dim=1))
    ta, tp, tn = trip(a, b, c)
    torch.testing.assert_close(tn, emb(c))
    with pytest.raises(InputError):
        twin(a, b[:3])


def test_row_triplet_objective_is_the_hinge():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0],  # d(a,p)=1, d(a,n)=.5 → 1-.5+.2 = .7
                      [0.0, 0.0], [0.1, 0.0], [3.0, 0.0]])  # easy triplet → 0
    loss = RowTripletObjective(0.2)(e, torch.zeros(6), torch.zeros(6))
    assert float(loss) == pytest.approx(0.35, abs=1e-5)
    with pytest.raises(InputError):
        RowTripletObjective()(e[:4], torch.zeros(4), torch.zeros(4))


def _folder_dataset(root, counts: dict[str, int]):
    for ident, n in counts.items():
        (root / ident).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(root / ident / f"{i}.png")


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    _folder_dataset(tmp_path, {"a": 8, "b": 12, "c": 4})
    sp = load_split(tmp_path, seed=0, test_fraction=0.25, val_fraction=0.2)
    paths = [{s.path for s in part} for part in (sp.train, sp.val, sp.test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert sum(map(len, paths)) == 24
    for ident, n in {"a": 8, "b": 12, "c": 4}.items():
        assert sum(s.identity == ident for s in sp.test) == round(0.25 * n)
        assert sum(s.identity == ident for s in sp.val) >= 1
    assert sp.classes == ["a", "b", "c"] and not sp.official_test
    assert {s.path for s in load_split(tmp_path, seed=0).test} == paths[2]
    assert {s.path for s in load_split(tmp_path, seed=1).test} != paths[2]
    np.testing.assert_array_equal(sp.labels(sp.test), [sp.classes.index(s.identity) for s in sp.test])


def test_official_test_folder_is_kept(tmp_path):
    _folder_dataset(tmp_path / "train", {"x": 5, "y": 5})
    _folder_dataset(tmp_path / "test", {"x": 2, "y": 3})
    sp = load_split(tmp_path, seed=4)
    assert sp.official_test and len(sp.test) == 5 and all("test" in s.path.parts for s in sp.test)
    _folder_dataset(tmp_path / "bad" / "train", {"x": 3, "y": 3})
    _folder_dataset(tmp_path / "bad" / "test", {"z": 2})
    with pytest.raises(InputError, match="without training images"):
        load_split(tmp_path / "bad")
    with pytest.raises(Exception, match="neither"):
        load_split(tmp_path / "missing")
