"""Extra training photos (biomatch.hands.extra_train): what is added, and that only a split's
training subjects get them while the test queries and gallery stay the low-res set's own."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from biomatch.config import MethodConfig
from biomatch.data.datasets import Sample
from biomatch.errors import InputError, NotFoundError
from biomatch.hands.extra_train import extra_photos, for_subjects
from biomatch.paths import shared_dataset_dir


def _shared(name: str) -> Path:
    try:
        return shared_dataset_dir(name)
    except NotFoundError:
        pytest.skip(f"the {name} data set is not here")


def test_none_adds_nothing_and_an_unknown_source_is_named():
    assert extra_photos("none", []) == []
    with pytest.raises(InputError, match="hires_999"):
        extra_photos("hires_999", [])


def test_for_subjects_keeps_only_those_subjects():
    photos = [Sample(Path(f"/x/{i}_{n}.jpg"), i, view="dorsal") for i in "abc" for n in range(2)]
    assert [s.identity for s in for_subjects(photos, ["a", "c"])] == ["a", "a", "c", "c"]
    assert for_subjects(photos, []) == []


def test_extra_photos_on_the_real_sets(tmp_path):
    lowres_root, hires_root = _shared("hands11k"), _shared("hands11k_hires")
    from biomatch.hands.protocol import load_hands, make_split

    split = make_split(load_hands(), seed=0)
    protocol = split.train + split.val + split.test  # every subject with both views
    extras = extra_photos("hires_180", protocol, tmp_path)
    # brute force from the files and HandInfo.csv
    rows = {r["imageName"]: r for r in csv.DictReader(open(lowres_root / "HandInfo.csv"))}
    subjects = {s.identity for s in protocol}
    have = set(os.listdir(lowres_root / "images"))
    expected = sorted(n for n in os.listdir(hires_root / "images")
                      if n in rows and n not in have and rows[n]["id"] in subjects)
    assert len(expected) == 615  # ../shared/data/hands11k_hires/SOURCE.md counts, two-view subjects only
    assert [s.path.name for s in extras] == expected
    for s in extras[:25]:
        assert s.identity == rows[s.path.name]["id"] and rows[s.path.name]["aspectOfHand"].startswith(s.view)
        with Image.open(s.path) as im:
            assert im.size == (180, 180)
    mtime = extras[0].path.stat().st_mtime_ns
    again = extra_photos("hires_180", protocol, tmp_path)  # made once, then reused
    assert again == extras and again[0].path.stat().st_mtime_ns == mtime


def test_run_method_adds_extras_of_training_subjects_only(hands_samples, tmp_path, monkeypatch):
    import biomatch.hands.extra_train as extra_train
    import biomatch.hands.methods as methods
    from biomatch.hands.protocol import make_split

    ids = sorted({s.identity for s in hands_samples})[:40]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=0)
    train_ids = {s.identity for s in split.train + split.val}
    test_ids = {s.identity for s in split.test}
    # stand-in extras: copies of one photo per view of every subject, in another folder
    folder = tmp_path / "extra" / "images"
    folder.mkdir(parents=True)
    extras = []
    for s in split.train + split.val + split.test:
        if any(e.identity == s.identity and e.view == s.view for e in extras):
            continue
        target = folder / f"x_{s.path.name}"
        shutil.copy(s.path, target)
        extras.append(replace(s, path=target))
    monkeypatch.setattr(extra_train, "extra_photos", lambda kind, lowres, out_root=None: extras)
    seen: list[list[Sample]] = []
    label_index = methods._label_index
    monkeypatch.setattr(methods, "_label_index", lambda samples: seen.append(list(samples)) or label_index(samples))
    cfg = MethodConfig(name="t", backbones=["tiny_cnn"], objective="cross_view", sampler="pk_view", p=4, k=4,
                       epochs=1, batches_per_epoch=2, head_dims=[16, 8], train_on_val=True,
                       extra_train="hires_180")
    res = methods.run_method(cfg, split, cache=tmp_path / "cache", progress=False)
    trained = {s.path for s in seen[0]}
    assert {e.path for e in extras if e.identity in train_ids} <= trained
    assert not any(e.path in trained for e in extras if e.identity in test_ids)
    assert {s.path for s in seen[0]} - {e.path for e in extras} == {s.path for s in split.train + split.val}
    assert res.queries == split.queries(split.test) and res.gallery == split.gallery(split.test)
