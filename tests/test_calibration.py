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
        load_threshold(path, model_sha256=HASH_B)
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


def test_vendored_thresholds_are_bound_to_their_models():
    from biomatch.faces.embedder import FaceEmbedder

    float_model, int8_model = FaceEmbedder.default(), FaceEmbedder.default(int8=True)
    if not float_model.threshold_path.is_file():
        pytest.skip("no calibrated threshold shipped")
    th = float_model.load_threshold()
    assert isinstance(th, Threshold) and 0.0 < th.threshold < 1.0 and th.far <= th.target_far
    with pytest.raises(StateError, match="sha256"):
        int8_model.load_threshold(float_model.threshold_path)
