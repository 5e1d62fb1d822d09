"""Threshold artifacts: the chosen threshold against a brute-force FAR count, hash binding, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomatch.calibration import Threshold, calibrate, load_threshold, save_threshold, threshold_path
from biomatch.errors import InputError, NotFoundError, StateError

HASH_A, HASH_B = "a" * 64, "b" * 64


def _scores(seed: int = 0, n_gen: int = 500, n_imp: int = 2000):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(0.6, 0.15, n_gen), rng.normal(0.1, 0.12, n_imp)].round(3)  # ties on purpose
    y = np.r_[np.ones(n_gen, int), np.zeros(n_imp, int)]
    return s, y


@pytest.mark.parametrize("target", [1e-2, 2e-3, 5e-3])
def test_threshold_is_lowest_meeting_target_far_by_brute_force(target):
    s, y = _scores()
    th = calibrate(s, y, target_far=target, model_sha256=HASH_A, dataset="synthetic")

    def far_at(t: float) -> float:
        return sum(1 for v, lab in zip(s, y) if lab == 0 and v >= t) / sum(1 for lab in y if lab == 0)

    def tar_at(t: float) -> float:
        return sum(1 for v, lab in zip(s, y) if lab == 1 and v >= t) / sum(1 for lab in y if lab == 1)

    assert far_at(th.threshold) <= target
    lower = [v for v in sorted(set(s.tolist())) if v < th.threshold]
    assert far_at(lower[-1]) > target  # any lower candidate threshold breaks the target
    assert th.far == pytest.approx(far_at(th.threshold))
    assert th.tar == pytest.approx(tar_at(th.threshold))
    assert (th.n_genuine, th.n_impostor) == (500, 2000)
    assert th.accepts(th.threshold) and not th.accepts(lower[-1])


def test_too_few_impostors_for_target():
    s, y = _scores(n_imp=500)
    with pytest.raises(InputError, match="impostor"):
        calibrate(s, y, target_far=1e-3, model_sha256=HASH_A, dataset="synthetic")


def test_roundtrip_and_hash_mismatch(tmp_path):
    s, y = _scores()
    prep = {"size": [112, 112], "crop": [0.1, 0.0, 0.9, 0.9]}
    th = calibrate(s, y, target_far=1e-2, model_sha256=HASH_A, dataset="synthetic", preprocess=prep)
    model = tmp_path / "Model.onnx"
    path = save_threshold(th, threshold_path(model))
    assert path == tmp_path / "Model.threshold.json"
    assert [p.name for p in tmp_path.iterdir()] == ["Model.threshold.json"]  # no tmp left behind
    raw = json.loads(path.read_text())
    assert raw["metric"] == "cosine similarity" and raw["model_sha256"] == HASH_A and raw["target_far"] == 1e-2
    assert load_threshold(path, model_sha256=HASH_A, preprocess=prep) == th
    with pytest.raises(StateError) as err:
        load_threshold(path, model_sha256=HASH_B, preprocess=prep)
    assert HASH_A in str(err.value) and HASH_B in str(err.value)
    with pytest.raises(StateError, match="preprocessing"):
        load_threshold(path, model_sha256=HASH_A, preprocess={**prep, "crop": None})


def test_load_errors(tmp_path):
    with pytest.raises(NotFoundError, match="biomatch calibrate"):
        load_threshold(tmp_path / "none.json", model_sha256=HASH_A)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a threshold artifact"):
        load_threshold(bad, model_sha256=HASH_A)
    bad.write_text(json.dumps({"threshold": 0.3}))
    with pytest.raises(InputError, match="not a threshold artifact"):
        load_threshold(bad, model_sha256=HASH_A)


def _artifact(tmp_path, **change):
    s, y = _scores()
    prep = {"input": "align", "size": [112, 112]}
    raw = json.loads(json.dumps(calibrate(s, y, target_far=1e-2, model_sha256=HASH_A, dataset="synthetic",
                                          preprocess=prep).__dict__))
    raw.update(change)
    path = tmp_path / "t.threshold.json"
    path.write_text(json.dumps(raw))
    return path, prep


@pytest.mark.parametrize("value", [-1, -1.0, -5, 1.0001, 2, float("nan"), "0.3", None, True])
def test_threshold_outside_cosine_range_is_refused(tmp_path, value):
    """-1 would accept every probe (issue #11 item 4), > 1 reject every probe; non-numbers are not thresholds."""
    path, prep = _artifact(tmp_path, threshold=value)
    with pytest.raises(InputError, match="threshold"):
        load_threshold(path, model_sha256=HASH_A, preprocess=prep)


@pytest.mark.parametrize("value", [-0.999, 0.0, 0.35, 1.0])
def test_thresholds_inside_the_range_load(tmp_path, value):
    path, prep = _artifact(tmp_path, threshold=value)
    assert load_threshold(path, model_sha256=HASH_A, preprocess=prep).threshold == value


@pytest.mark.parametrize("prep", [None, {}, "crop"])
def test_missing_preprocessing_is_refused_not_skipped(tmp_path, prep):
    path, real = _artifact(tmp_path, preprocess=prep)
    with pytest.raises(InputError, match="preprocess"):
        load_threshold(path, model_sha256=HASH_A, preprocess=real)
    with pytest.raises(InputError, match="preprocess"):  # even when the caller does not check it
        load_threshold(path, model_sha256=HASH_A)


def test_bad_model_hash_field_is_refused(tmp_path):
    path, prep = _artifact(tmp_path, model_sha256=None)
    with pytest.raises(InputError, match="model_sha256"):
        load_threshold(path, model_sha256=HASH_A, preprocess=prep)


def test_vendored_thresholds_are_bound_to_their_models_and_pipelines():
    from biomatch.faces.embedder import FaceEmbedder

    float_model, int8_model = FaceEmbedder.default(), FaceEmbedder.default(int8=True)
    crop_model = FaceEmbedder.default(detect=False)
    for m in (float_model, int8_model, crop_model):
        th = m.load_threshold()
        assert isinstance(th, Threshold) and 0.0 < th.threshold < 1.0 and th.far <= th.target_far
        assert th.preprocess == m.preprocessing
    assert crop_model.threshold_path != float_model.threshold_path  # face-crop has its own threshold
    with pytest.raises(StateError, match="sha256"):
        int8_model.load_threshold(float_model.threshold_path)
    # same model file, other pipeline: refused for its preprocessing
    with pytest.raises(StateError, match="preprocessing"):
        crop_model.load_threshold(float_model.threshold_path)
    with pytest.raises(StateError, match="preprocessing"):
        float_model.load_threshold(crop_model.threshold_path)
    other_detectors = FaceEmbedder.default()
    other_detectors.detectors = ("haar",)
    with pytest.raises(StateError, match="preprocessing"):
        other_detectors.load_threshold(float_model.threshold_path)


def test_pre_alignment_artifacts_are_refused(tmp_path):
    """The artifacts shipped before alignment (model hash right, preprocessing of the Haar-framed
    crop pipeline) are refused by the aligned and by the face-crop pipeline."""
    import subprocess

    from biomatch.faces.embedder import FaceEmbedder
    from biomatch.paths import REPO_ROOT

    old = subprocess.run(["git", "show", "c556f5e:src/biomatch/assets/mobilefacenet/MobileFaceNet.threshold.json"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("git history not available")
    path = tmp_path / "old.threshold.json"
    path.write_text(old.stdout)
    float_model = FaceEmbedder.default()
    assert json.loads(old.stdout)["model_sha256"] == float_model.model_hash
    for m in (float_model, FaceEmbedder.default(detect=False)):
        with pytest.raises(StateError, match="preprocessing"):
            m.load_threshold(path)
