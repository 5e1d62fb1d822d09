"""The hand-net branch (biomatch.hands.handnet): MediaPipe's hand-landmark CNN read from the inside."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from biomatch.config import MethodConfig
from biomatch.hands import handnet


def _crop(sample, cache) -> np.ndarray:
    from biomatch.hands.landmarks import AlignedLoader, cached_landmarks

    points, _ = cached_landmarks([sample], cache, progress=False)
    return np.asarray(AlignedLoader([sample], points)(0).convert("RGB"))


def _slow_taps(maps: dict[str, np.ndarray], spec: handnet.NetSpec = handnet.HAND_LANDMARK
               ) -> tuple[np.ndarray, np.ndarray]:
    """The same taps by explicit loops over positions and channel pairs (a brute-force reference)."""
    def unit(v):
        return v / np.linalg.norm(v)

    head = []
    for m in spec.head_maps:
        x = maps[m].reshape(-1, maps[m].shape[-1]).astype(np.float64)
        head += [unit(np.array([x[:, c].mean() for c in range(x.shape[1])])),
                 unit(np.array([np.sqrt(((x[:, c] - x[:, c].mean()) ** 2).mean()) for c in range(x.shape[1])]))]
    extra = []
    for m in spec.cov_maps:
        x = maps[m].reshape(-1, maps[m].shape[-1]).astype(np.float64)
        x = x - x.mean(0)
        n = x.shape[1]
        cov = [float((x[:, i] * x[:, j]).mean()) for i in range(n) for j in range(i, n)]
        extra.append(unit(np.sign(cov) * np.sqrt(np.abs(cov))))
    return np.concatenate(head), np.concatenate(extra)


def _reference_maps(spec: handnet.NetSpec, crop: np.ndarray):
    """(interpreter, {map: array}) of the plain TFLite kernels (no XNNPACK delegate) on `crop`."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ref = Interpreter(model_path=str(handnet.model_path(spec)), experimental_preserve_all_tensors=True,
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ref.allocate_tensors()
    names = {t["name"]: t["index"] for t in ref.get_tensor_details()}
    ref.set_tensor(ref.get_input_details()[0]["index"], (crop.astype(np.float32) / 255.0)[None])
    ref.invoke()
    maps = {m: ref.get_tensor(next(i for n, i in names.items() if n.startswith(handnet.TENSOR_PREFIX.format(m))))[0]
            for m in {*spec.head_maps, *spec.cov_maps}}
    return ref, maps


def test_hand_net_taps_match_a_brute_force_pooling_of_an_undelegated_interpreter(hands_samples, tmp_path):
    """The taps equal slow loops over the maps of the plain TFLite kernels (no XNNPACK delegate),
    so neither the delegate nor the vectorized pooling changes what the branch reads."""
    crop = _crop(sorted(hands_samples, key=lambda s: str(s.path))[0], tmp_path)
    head, extra = handnet.HandNet().taps(crop)
    assert head.shape == (handnet.head_width(),) and head.shape == (608,)
    assert extra.shape == (40 * 41 // 2 + 112 * 113 // 2,)
    ref, maps = _reference_maps(handnet.HAND_LANDMARK, crop)
    want_head, want_extra = _slow_taps(maps)
    np.testing.assert_allclose(head, want_head, atol=2e-4)
    np.testing.assert_allclose(extra, want_extra, atol=2e-4)
    # the network found a hand in the aligned crop: its presence score is high
    assert ref.get_tensor(ref.get_output_details()[1]["index"]).item() > 0.5


def test_the_palm_detector_spec_reads_its_maps_as_brute_force_pooling_does(hands_samples, tmp_path):
    """The same reader on the wheel's palm detector (`PALM_DETECTOR`, screened by
    benchmarks/hands_fusion_screen.py): 192×192 input, its four mean/std maps and two covariances."""
    from PIL import Image

    spec = handnet.PALM_DETECTOR
    crop = np.asarray(Image.fromarray(_crop(sorted(hands_samples, key=lambda s: str(s.path))[0], tmp_path))
                      .resize((192, 192), Image.BILINEAR))
    head, extra = handnet.HandNet(spec=spec).taps(crop)
    assert head.shape == (2 * (64 + 128 + 256 + 256),) and extra.shape == (64 * 65 // 2 + 128 * 129 // 2,)
    ref, maps = _reference_maps(spec, crop)
    want_head, want_extra = _slow_taps(maps, spec)
    np.testing.assert_allclose(head, want_head, atol=2e-4)
    np.testing.assert_allclose(extra, want_extra, atol=2e-4)
    # the detector sees a palm in the aligned crop at the [0, 1] input range the spec uses
    logits = next(ref.get_tensor(o["index"]) for o in ref.get_output_details() if o["shape"][-1] == 1)
    assert 1 / (1 + np.exp(-logits.max())) > 0.5
    with pytest.raises(ValueError, match="192×192"):
        handnet.HandNet(spec=spec).maps(np.zeros((224, 224, 3), np.uint8))


def test_hand_net_rejects_a_crop_of_the_wrong_size():
    with pytest.raises(ValueError, match="224×224"):
        handnet.HandNet().maps(np.zeros((100, 100, 3), np.uint8))


def test_hand_net_features_are_cached_and_not_recomputed(hands_samples, tmp_path, monkeypatch):
    from biomatch.hands.landmarks import cached_landmarks

    few = sorted(hands_samples, key=lambda s: str(s.path))[:3]
    points, _ = cached_landmarks(few, tmp_path, progress=False)
    first = handnet.cached_handnet_features(few, points, tmp_path, progress=False)
    assert first.shape == (3, 608 + 820 + 6328) and np.isfinite(first).all()

    def fail(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(handnet, "HandNet", fail)
    np.testing.assert_array_equal(handnet.cached_handnet_features(few, points, tmp_path, progress=False), first)
    # another sample set is another file (computed, here: refused by the patched net)
    with pytest.raises(AssertionError, match="recomputed"):
        handnet.cached_handnet_features(few[:2], points[:2], tmp_path, progress=False)


def test_hand_net_features_of_a_background_control_read_the_painted_crop(hands_samples, tmp_path):
    """With a `paint` (the background controls' BackgroundFill) the branch reads the painted aligned
    crop, as the other aligned branches do, and caches it under a key of its own."""
    from biomatch.hands.landmarks import AlignedLoader, cached_landmarks
    from biomatch.hands.masking import BackgroundFill

    few = sorted(hands_samples, key=lambda s: str(s.path))[:2]
    points, _ = cached_landmarks(few, tmp_path, progress=False)
    plain = handnet.cached_handnet_features(few, points, tmp_path, progress=False)
    paint = BackgroundFill("fill")
    filled = handnet.cached_handnet_features(few, points, tmp_path, progress=False, paint=paint)
    crop = AlignedLoader(few, points)(1).convert("RGB")
    head, extra = handnet.HandNet().taps(np.asarray(paint(crop)))
    np.testing.assert_allclose(filled[1], np.concatenate([head, extra]), atol=1e-6)
    assert np.abs(filled - plain).max() > 0.01  # the painted background changes what the net sees
    only = handnet.cached_handnet_features(few, points, tmp_path, progress=False, paint=BackgroundFill("only"))
    assert np.abs(only - filled).max() > 0.01
    assert len(list((tmp_path / "landmarks").glob("handnet-*.npy"))) == 3


def test_hand_net_features_do_not_depend_on_the_number_of_workers(hands_samples, tmp_path, capsys):
    """The pass shares the images out to two one-thread interpreters when torch has two threads;
    the rows are those of a single worker, in the samples' order."""
    import torch

    from biomatch.hands.landmarks import cached_landmarks

    few = sorted(hands_samples, key=lambda s: str(s.path))[:5]
    points, _ = cached_landmarks(few, tmp_path, progress=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = handnet.cached_handnet_features(few, points, tmp_path / "one", progress=False)
        torch.set_num_threads(2)
        two = handnet.cached_handnet_features(few, points, tmp_path / "two", progress=True)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    assert "hand-net features 5/5" in capsys.readouterr().err  # a log (not a terminal) gets a progress line
    net = handnet.HandNet()
    from biomatch.hands.landmarks import AlignedLoader

    np.testing.assert_array_equal(two[4], np.concatenate(net.taps(np.asarray(AlignedLoader(few, points)(4).convert("RGB")))))


def _cfg(**kw) -> MethodConfig:
    base = dict(name="x", backbones=["efficientnet_lite0", "mediapipe_hand@aligned"], taps=["2:avg", "5:std"],
                xqda_weight=0.3, xqda_taps=["2:cov"], fusion="score")
    return MethodConfig(**{**base, **kw})


def test_hand_net_config_errors():
    assert _cfg(xqda_score_skip=["mediapipe_hand@aligned"]).xqda_score_skip == ["mediapipe_hand@aligned"]
    with pytest.raises(ValidationError, match="aligned crop only"):
        _cfg(backbones=["efficientnet_lite0", "mediapipe_hand"])
    with pytest.raises(ValidationError, match="does not have"):
        _cfg(xqda_score_skip=["efficientnet_lite2"])
    with pytest.raises(ValidationError, match="leaves no backbone"):
        _cfg(xqda_score_skip=["efficientnet_lite0", "mediapipe_hand@aligned"])
    with pytest.raises(ValidationError, match="no mirrored features"):  # refused before any feature is computed
        _cfg(xqda_taps=[], xqda_weight=0.0, mirror_gallery=True)


def test_feature_bank_adds_the_hand_net_block_and_the_score_skip_drops_its_xqda_block(hands_samples, tmp_path):
    """The branch is one more head block (its 608 taps) and one more XQDA block (taps + covariances);
    `xqda_score_skip` keeps that XQDA block out of the score sums, columns and whitening alike."""
    from biomatch.hands.methods import FeatureBank, _scored_blocks

    subjects = sorted({s.identity for s in hands_samples})[:3]
    few = [s for s in hands_samples if s.identity in subjects]
    cfg = _cfg(xqda_score_skip=["mediapipe_hand@aligned"])
    bank = FeatureBank(cfg, few, cache=tmp_path, progress=False)
    lite = FeatureBank(_cfg(backbones=["efficientnet_lite0"]), few, cache=tmp_path, progress=False)
    assert bank.dims == [*lite.dims, 608]
    assert bank.xqda_dims == [*lite.xqda_dims, 608 + 820 + 6328]
    assert bank.xqda_entry == ["efficientnet_lite0", "mediapipe_hand@aligned"]
    np.testing.assert_allclose(bank.canonical(few)[0][:, :lite.dims[0]], lite.canonical(few)[0], atol=1e-6)
    hand = bank.canonical(few)[0][:, lite.dims[0]:]
    np.testing.assert_allclose(np.linalg.norm(hand, axis=1), 1.0, atol=1e-5)
    feats = (bank.xqda_features(few),) * 3
    kept, whites = _scored_blocks(cfg, bank, feats, ["w_lite", "w_hand"])
    assert whites == ["w_lite"] and kept[0][1] == lite.xqda_dims
    np.testing.assert_array_equal(kept[0][0], bank.xqda_features(few)[0][:, :lite.xqda_dims[0]])
    same, all_whites = _scored_blocks(_cfg(), bank, feats, ["w_lite", "w_hand"])
    assert same is feats and all_whites == ["w_lite", "w_hand"]
    with pytest.raises(Exception, match="mirrored"):
        FeatureBank(_cfg(xqda_taps=[], xqda_weight=0.0, tta=True), few, cache=tmp_path, progress=False)


def test_run_method_with_the_hand_net_branch_scores_xqda_on_the_other_branches_only(hands_samples, tmp_path):
    """A whole run with the branch: its heads read its taps + its whitened XQDA block, while the XQDA
    score (recorded as an ablation) is exactly the one of the method without the branch."""
    import torch

    from biomatch.hands.methods import run_method
    from biomatch.hands.protocol import make_split

    subjects = sorted({s.identity for s in hands_samples})[:12]
    split = make_split([s for s in hands_samples if s.identity in subjects], seed=0)
    small = dict(heads_read_xqda=True, xqda_pca=16, objective="cross_view", sampler="pk_view", p=4, k=4, epochs=1,
                 batches_per_epoch=2, head_dims=[32, 8], train_on_val=True)
    res = run_method(_cfg(xqda_score_skip=["mediapipe_hand@aligned"], **small), split, cache=tmp_path, progress=False)
    firsts = [m.in_features for m in res.model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 32]
    assert firsts == [136 + 16, 608 + 16]
    alone = run_method(_cfg(backbones=["efficientnet_lite0"], **small), split, cache=tmp_path, progress=False)
    assert res.metrics["xqda:mean_rank"] == alone.metrics["xqda:mean_rank"]
    assert len(res.ranks.first_rank) == len(res.queries)
