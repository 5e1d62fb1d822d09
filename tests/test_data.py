"""Dataset adapters, splits, samplers and pair generation on the real 11k Hands data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from biomatch.data.datasets import load_hands11k, load_identity_folders
from biomatch.data.images import load_image
from biomatch.data.pairs import PairBatchSampler, random_pairs, random_triplets
from biomatch.data.samplers import PKSampler
from biomatch.data.splits import cross_view_identities, split_identities, split_samples, stratified_split
from biomatch.errors import InputError, NotFoundError
from biomatch.hands.protocol import HandsSplit, make_split


def test_hands_adapter_reads_real_metadata(hands_samples):
    assert len(hands_samples) == 2101
    assert len({s.identity for s in hands_samples}) == 188
    assert Counter(s.view for s in hands_samples) == {"dorsal": 1061, "palmar": 1040}
    assert {s.side for s in hands_samples} == {"left", "right"}
    assert len(cross_view_identities(hands_samples)) == 181
    s = hands_samples[0]
    assert s.path.is_file() and {"age", "gender", "skinColor", "nailPolish"} <= set(s.attrs)


def test_hands_adapter_errors(tmp_path):
    with pytest.raises(NotFoundError, match="HandInfo.csv"):
        load_hands11k(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "HandInfo.csv").write_text("id,imageName\n1,a.jpg\n")
    with pytest.raises(InputError, match="aspectOfHand"):
        load_hands11k(tmp_path)
    (tmp_path / "HandInfo.csv").write_text("id,aspectOfHand,imageName\n1,dorsal right,a.jpg\n")
    with pytest.raises(InputError, match="no image listed"):
        load_hands11k(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "HandInfo.csv").write_text("id,aspectOfHand,imageName\n1,sideways,a.jpg\n")
    with pytest.raises(InputError, match="HandInfo.csv:2"):
        load_hands11k(tmp_path)


def test_identity_folders_and_image_errors(tmp_path):
    for ident in ("ann", "bob"):
        (tmp_path / ident).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / ident / f"{i}.png")
    (tmp_path / "bob" / "notes.txt").write_text("not an image")
    samples = load_identity_folders(tmp_path)
    assert [s.identity for s in samples] == ["ann"] * 3 + ["bob"] * 3
    (tmp_path / "bob" / "broken.png").write_bytes(b"\x89PNG\r\n garbage")
    with pytest.raises(InputError, match="broken.png"):
        load_image(tmp_path / "bob" / "broken.png")
    with pytest.raises(NotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="<upload>"):
        load_image(b"not an image")
    with pytest.raises(NotFoundError):
        load_identity_folders(tmp_path / "nope")


def test_identity_split_is_disjoint_seeded_and_sized():
    ids = [f"s{i:03d}" for i in range(181)]
    parts = split_identities(ids, seed=5)
    assert [len(p) for p in parts] == [123, 20, 38]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert parts == split_identities(ids, seed=5) and parts != split_identities(ids, seed=6)
    with pytest.raises(InputError, match="sum to 1"):
        split_identities(ids, (0.5, 0.2))


def test_hands_split_protocol(hands_samples):
    split = make_split(hands_samples, seed=0)
    train, val, test = ({s.identity for s in part} for part in (split.train, split.val, split.test))
    assert not (train & val or train & test or val & test)
    assert {s.identity for s in HandsSplit.queries(split.test)} == test == \
        {s.identity for s in HandsSplit.gallery(split.test)}
    assert all(s.view == "dorsal" for s in HandsSplit.queries(split.test))


def test_stratified_split_keeps_every_identity_in_both_parts():
    from biomatch.data.datasets import Sample
    from pathlib import Path

    samples = [Sample(Path(f"{c}{i}.png"), c) for c in "abc" for i in range(8)]
    train, test = stratified_split(samples, 0.25, seed=1)
    assert Counter(s.identity for s in test) == {"a": 2, "b": 2, "c": 2}
    assert not set(train) & set(test) and len(train) + len(test) == 24
    assert split_samples(samples, (0.5, 0.5), seed=0)[0]


def test_pk_sampler_shapes_and_views():
    labels = np.repeat(np.arange(10), 6)
    views = ["dorsal", "palmar", "dorsal", "dorsal", "dorsal", "dorsal"] * 10
    sampler = PKSampler(labels, p=4, k=4, views=views, view_aware=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    for batch in batches:
        assert len(batch) == 16
        per_id = Counter(labels[batch])
        assert len(per_id) == 4 and set(per_id.values()) == {4}
        for ident in per_id:
            got = Counter(views[i] for i in batch if labels[i] == ident)
            assert got == {"dorsal": 2, "palmar": 2}
    assert batches == list(PKSampler(labels, 4, 4, views, True, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(InputError, match="usable identities"):
        PKSampler(np.arange(3), p=4, k=2)


def test_random_pairs_balanced_cross_view():
    labels = np.repeat(np.arange(20), 4)
    views = np.tile(["dorsal", "dorsal", "palmar", "palmar"], 20)
    pairs = random_pairs(labels, 2000, seed=0, views=views, view_pair=("dorsal", "palmar"))
    assert 0.45 < pairs[:, 2].mean() < 0.55
    assert (views[pairs[:, 0]] == "dorsal").all() and (views[pairs[:, 1]] == "palmar").all()
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == pairs[:, 2].astype(bool)).all()
    np.testing.assert_array_equal(pairs, random_pairs(labels, 2000, 0, views, ("dorsal", "palmar")))
    trip = random_triplets(labels, 500, seed=1)
    assert (labels[trip[:, 0]] == labels[trip[:, 1]]).all() and (labels[trip[:, 0]] != labels[trip[:, 2]]).all()
    assert (trip[:, 0] != trip[:, 1]).all()
    batch = next(iter(PairBatchSampler(labels, 8, 3, seed=0, views=list(views), view_pair=("dorsal", "palmar"))))
    assert len(batch) == 16


@pytest.mark.parametrize("preset", ["none", "flip", "light", "strong"])
def test_augmentation_presets_keep_shape_and_normalization(preset, hands_samples):
    import torch

    from biomatch.data.transforms import AugmentConfig, eval_transform, train_transform

    img = load_image(hands_samples[0].path)
    torch.manual_seed(0)
    x = train_transform(96, AugmentConfig.named(preset))(img)
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32
    if preset == "none":
        assert torch.equal(x, eval_transform(96)(img))
    with pytest.raises(InputError, match="unknown augmentation"):
        AugmentConfig.named("wild")
