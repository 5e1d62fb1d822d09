"""The resolution protocol (issue #14 §3): split, hires loader, low-res processing, re-scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomatch.data.datasets import Sample
from biomatch.errors import InputError, NotFoundError
from biomatch.hands.protocol import (
    HandsSplit,
    load_hires_hands,
    make_split,
    resolution_split,
)
from biomatch.hands.resolution import VARIANTS, Variant, lowres_copy, make_variant
from biomatch.paths import shared_dataset_dir


def _s(ident: str, view: str, n: int) -> Sample:
    return Sample(Path(f"/x/{ident}_{view}_{n}.jpg"), ident, view=view)


def _hires_root() -> Path:
    try:
        return shared_dataset_dir("hands11k_hires")
    except NotFoundError:
        pytest.skip("the hands11k_hires data set is not here")


def test_resolution_split_is_subject_disjoint_synthetic():
    low = [_s(i, v, n) for i in "abcdef" for v in ("dorsal", "palmar") for n in range(2)]
    low += [_s("g", "dorsal", 0)]  # one view only: never a training or test subject
    hi = [_s(i, v, 0) for i in "abg" for v in ("dorsal", "palmar")] + [_s("c", "dorsal", 9)]
    sp = resolution_split(low, hi)
    assert sp.test_subjects == ["a", "b", "g"]  # hires subjects with both views (c has one)
    assert {s.identity for s in sp.train} == set("cdef")
    assert {s.identity for s in sp.lowres_test} == {"a", "b"}  # g lacks a palmar image in the low-res set
    assert {s.identity for s in sp.hires_test} == {"a", "b", "g"}
    with pytest.raises(InputError, match="both dorsal and palmar"):
        resolution_split(low, [_s("a", "dorsal", 0)])
    with pytest.raises(InputError, match="nothing left to train"):
        resolution_split([s for s in low if s.identity in "ab"], hi)


def test_resolution_split_on_the_real_sets():
    hires = load_hires_hands(str(_hires_root()))
    from biomatch.hands.protocol import load_hands

    sp = resolution_split(load_hands(), hires)
    train_ids = {s.identity for s in sp.train}
    assert train_ids.isdisjoint(sp.test_subjects)
    assert len(sp.test_subjects) == 59  # SOURCE.md: 59 subjects with both views
    assert len(sp.hires_test) == sum(s.identity in set(sp.test_subjects) for s in hires)
    assert {s.view for s in sp.hires_test} == {"dorsal", "palmar"}


def test_load_hires_hands_bad_path_is_one_clear_error(tmp_path):
    with pytest.raises(NotFoundError, match="metadata not found"):
        load_hires_hands(str(tmp_path / "nope"))


def test_lowres_copy_rebuilds_the_lowres_set():
    """The 180° rotation + square squash matches the low-res set's own files of shared photos;
    a vertical flip (the other way to get fingers up) does not."""
    root = _hires_root()
    from biomatch.hands.protocol import load_hands

    low = {s.path.name: s.path for s in load_hands()}
    names = sorted(p.name for p in (root / "images").iterdir() if p.name in low)[:8]
    assert names, "SOURCE.md says 127 photos are in both sets"
    for name in names:
        ref = np.asarray(Image.open(low[name]).convert("RGB"), np.float64)
        with Image.open(root / "images" / name) as im:
            ours = np.asarray(lowres_copy(im, (ref.shape[1], ref.shape[0])), np.float64)
            flipped = np.asarray(im.convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM)
                                 .resize((ref.shape[1], ref.shape[0]), Image.Resampling.BOX), np.float64)
        assert np.sqrt(((ours - ref) ** 2).mean()) < 12
        assert np.sqrt(((flipped - ref) ** 2).mean()) > 2 * np.sqrt(((ours - ref) ** 2).mean())


def test_make_variant_sizes_exact_files_and_reuse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for n in range(3):
        p = src / f"Hand_{n}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(p)
        samples.append(Sample(p, f"id{n}", view="dorsal", side="left"))
    exact = tmp_path / "exact.jpg"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(exact)
    wrong = tmp_path / "wrong.jpg"
    Image.new("RGB", (30, 30)).save(wrong)
    v = Variant("20x20", (20, 20), 75, exact=True)
    out, n_exact = make_variant(samples, v, tmp_path / "out", {"Hand_0.jpg": exact, "Hand_1.jpg": wrong})
    assert n_exact == 1 and out[0].path == exact  # the right size: the low-res set's own file
    assert out[1].path != wrong and Image.open(out[1].path).size == (20, 20)  # wrong size: rebuilt
    assert [(s.identity, s.view, s.side) for s in out] == [(s.identity, s.view, s.side) for s in samples]
    mtime = out[2].path.stat().st_mtime_ns
    again, _ = make_variant(samples, v, tmp_path / "out", {})
    assert again[2].path.stat().st_mtime_ns == mtime  # reused, so caches keyed on mtime stay valid
    full, _ = make_variant(samples, VARIANTS["640x480"], tmp_path / "out")
    assert Image.open(full[0].path).size == (64, 48)  # aspect kept
    with pytest.raises(NotFoundError, match="image not found"):
        make_variant([Sample(tmp_path / "missing.jpg", "x", view="dorsal")], v, tmp_path / "out")


def test_score_variant_reproduces_run_method(hands_samples, tmp_path):
    """Scoring run_method's own test set through score_variant gives run_method's ranks
    (geometry included), so other resolutions are scored exactly as the method scores."""
    from biomatch.config import MethodConfig
    from biomatch.hands.methods import FeatureBank, run_method
    from biomatch.hands.resolution import score_variant

    ids = sorted({s.identity for s in hands_samples})[:14]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=3)
    cfg = MethodConfig(name="t", backbones=["tiny_cnn"], objective="cross_view", sampler="pk_view", p=4, k=4,
                       epochs=2, batches_per_epoch=3, head_dims=[16, 8], train_on_val=True, n_heads=2,
                       geometry_weight=0.3)
    res = run_method(cfg, split, cache=tmp_path, progress=False)
    train = split.train + split.val
    bank = FeatureBank(cfg, train + split.test, cache=tmp_path, progress=False)
    got = score_variant(cfg, res.model, bank, train, split.test, cache=tmp_path)
    assert np.array_equal(got.ranks.first_rank, res.ranks.first_rank)
    assert np.allclose(got.scores, res.score_matrix(), atol=1e-6)
    assert got.metrics["recall@1"] == res.metrics["recall@1"]
    assert 0 <= got.metrics["fta_rate_dorsal"] <= 1
    with pytest.raises(InputError, match="both"):
        score_variant(cfg, res.model, bank, train, HandsSplit.queries(split.test), cache=tmp_path)


def test_paired_subject_bootstrap_against_a_plain_loop():
    from biomatch.hands.resolution import paired_subject_bootstrap

    rng = np.random.default_rng(1)
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects × 3 queries
    a = rng.integers(1, 6, (2, 30))
    b = rng.integers(1, 6, (2, 30))
    got = paired_subject_bootstrap(a, b, subjects, n_boot=500, seed=7)
    # the same resampling, written as a loop over drawn subjects
    names = sorted(set(subjects))
    d_r1 = (a == 1).mean(0) - (b == 1).mean(0)
    d_mr = a.mean(0) - b.mean(0)
    draws = np.random.default_rng(7).multinomial(10, np.full(10, 0.1), size=500)
    boot_r1, boot_mr = [], []
    for w in draws:
        idx = [q for k, n in zip(names, w) for _ in range(n) for q in range(30) if subjects[q] == k]
        boot_r1.append(d_r1[idx].mean())
        boot_mr.append(d_mr[idx].mean())
    assert np.allclose(got["recall@1"], [d_r1.mean(), *np.quantile(boot_r1, [0.025, 0.975])])
    assert np.allclose(got["mean_rank"], [d_mr.mean(), *np.quantile(boot_mr, [0.025, 0.975])])
    same = paired_subject_bootstrap(a, a, subjects, n_boot=50)
    assert same["recall@1"] == [0.0, 0.0, 0.0] and same["mean_rank"] == [0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="do not match"):
        paired_subject_bootstrap(a, b[:, :10], subjects)


@pytest.mark.parametrize("change", [{"rerank": "k_reciprocal"}, {"side_bonus": 0.1}, {"query_neighbours": 5}])
def test_score_variant_refuses_test_set_rescoring(change):
    """Re-scoring that reads the other test images or labels cannot score other images alone."""
    from biomatch.config import MethodConfig
    from biomatch.hands.resolution import score_variant

    cfg = MethodConfig(name="t", backbones=["tiny_cnn"], **change)
    with pytest.raises(InputError, match="supports neither"):
        score_variant(cfg, None, None, [], [])
