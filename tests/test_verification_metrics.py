"""Verification metrics against sklearn and brute-force threshold sweeps (ties and degenerate cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from biomatch.errors import InputError
from biomatch.metrics import verification as V


def _random_pairs(rng: np.random.Generator, n: int, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = np.round(rng.normal(size=n) + 1.5 * y * rng.random(), decimals)  # rounding makes ties
    return s, y


def _brute_rates(s: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    """FAR, FRR at threshold t by counting pair by pair."""
    fa = sum(1 for si, yi in zip(s, y) if yi == 0 and si >= t)
    fr = sum(1 for si, yi in zip(s, y) if yi == 1 and si < t)
    return fa / int((y == 0).sum()), fr / int((y == 1).sum())


def _brute_eer(s: np.ndarray, y: np.ndarray) -> float:
    """Sweep thresholds from high to low; interpolate linearly where FRR - FAR changes sign."""
    ts = [math.inf] + sorted(set(s.tolist()), reverse=True)
    prev = None
    for t in ts:
        far, frr = _brute_rates(s, y, t)
        if frr - far <= 0:
            if frr == far or prev is None:
                return far
            pfar, pfrr = prev
            w = (pfrr - pfar) / ((pfrr - pfar) - (frr - far))
            return pfar + w * (far - pfar)
        prev = (far, frr)
    raise AssertionError("FRR - FAR never reached 0")


def test_roc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        s, y = _random_pairs(rng, int(rng.integers(2, 80)))
        far, tar, thr = sk_roc_curve(y, s, drop_intermediate=False)
        roc = V.roc_curve(s, y)
        np.testing.assert_allclose(roc.far, far)
        np.testing.assert_allclose(roc.tar, tar)
        np.testing.assert_array_equal(roc.thresholds, thr)
        np.testing.assert_allclose(roc.frr, 1 - tar)


def test_eer_matches_brute_force_sweep() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        s, y = _random_pairs(rng, int(rng.integers(2, 60)))
        assert V.eer(s, y) == pytest.approx(_brute_eer(s, y), abs=1e-12)


def test_eer_hand_computed_interpolation() -> None:
    # thresholds 0.9..0.3: (FAR, FRR) = (0,2/3) (0,1/3) (1/3,1/3) (1/3,0): FRR-FAR hits 0 at 0.7
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    y = np.array([1, 1, 0, 1, 0, 0])
    assert V.eer(s, y) == pytest.approx(1 / 3)
    # FRR - FAR reaches 0 exactly at a point: (FAR, FRR) = (0.5, 0.5) at 0.8
    assert V.eer([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5)
    # a tie jumps from (0, 0.5) to (0.5, 0): the crossing is halfway along the segment
    assert V.eer([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)


def test_degenerate_cases() -> None:
    assert V.eer([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 0.0  # perfect separation
    assert V.eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0  # perfectly inverted
    assert V.eer([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == pytest.approx(0.5)  # all tied
    with pytest.raises(InputError, match="no impostor"):
        V.eer([0.1, 0.2], [1, 1])
    with pytest.raises(InputError, match="no genuine"):
        V.roc_curve([0.1, 0.2], [0, 0])


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([], [], "empty"),
        ([0.1, 0.2], [1], "differ in length"),
        ([0.1, 0.2], [1, 2], "labels must be 0"),
        ([0.1, float("nan")], [1, 0], "NaN"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
        (["a", "b"], [1, 0], "real numbers"),
    ],
)
def test_bad_inputs_raise_input_error(scores, labels, message) -> None:
    with pytest.raises(InputError, match=message):
        V.eer(np.asarray(scores), np.asarray(labels))


def _brute_tar_at_far(s: np.ndarray, y: np.ndarray, target: float) -> float:
    best = 0.0
    for t in [math.inf] + sorted(set(s.tolist())):
        far, frr = _brute_rates(s, y, t)
        if far <= target:
            best = max(best, 1 - frr)
    return best


def test_tar_at_far_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        y = np.r_[np.ones(30, int), np.zeros(250, int)]
        s = np.round(rng.normal(size=y.size) + 2 * y, 1)
        for target in (1e-2, 0.05, 0.2):
            assert V.tar_at_far(s, y, target) == pytest.approx(_brute_tar_at_far(s, y, target))
            assert V.frr_at_far(s, y, target) == pytest.approx(1 - _brute_tar_at_far(s, y, target))
            t = V.threshold_at_far(s, y, target)
            far, frr = _brute_rates(s, y, t)
            assert far <= target
            assert 1 - frr == pytest.approx(V.tar_at_far(s, y, target))


def test_tar_at_far_undefined_with_too_few_impostors() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(10, int), np.zeros(99, int)]
    s = rng.normal(size=y.size) + y
    assert math.isnan(V.tar_at_far(s, y, 1e-2))  # 99 impostors: one false accept is > 1 %
    with pytest.raises(InputError, match="at least 100 impostor"):
        V.threshold_at_far(s, y, 1e-2)
    y2 = np.r_[y, 0]
    s2 = np.r_[s, -10.0]
    assert not math.isnan(V.tar_at_far(s2, y2, 1e-2))
    report = V.verification_report(s, y)
    assert report["tar@far=1e-2"] is None and report["tar@far=1e-4"] is None


def test_threshold_at_far_accept_nothing_case() -> None:
    # the top impostor ties with the top genuine: only "accept nothing" has FAR 0
    s = np.r_[[1.0, 1.0, 1.0, 1.0], np.zeros(200)]
    y = np.r_[[1, 0, 0, 0], np.zeros(200, int)]  # FAR 3/203 > 1 % at the top score
    t = V.threshold_at_far(s, y, 1e-2)
    assert t > 1.0 and not (s >= t).any()


def test_det_curve_and_decidability() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    y = np.array([1, 1, 0, 1, 0, 0])
    far, frr, thr = V.det_curve(s, y)
    np.testing.assert_allclose(frr, 1 - V.roc_curve(s, y).tar)
    assert thr[0] == math.inf and np.all(np.diff(far) >= 0) and np.all(np.diff(frr) <= 0)
    g, i = s[y == 1], s[y == 0]
    expected = abs(g.mean() - i.mean()) / math.sqrt((g.var(ddof=1) + i.var(ddof=1)) / 2)
    assert V.decidability(s, y) == pytest.approx(expected)
    assert V.decidability([1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0]) == math.inf


def test_bootstrap_ci_is_seeded_and_brackets_the_eer() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(200, int), np.zeros(2000, int)]
    s = rng.normal(size=y.size) + 1.5 * y
    a = V.bootstrap_eer_ci(s, y, n_boot=200, seed=7)
    b = V.bootstrap_eer_ci(s, y, n_boot=200, seed=7)
    c = V.bootstrap_eer_ci(s, y, n_boot=200, seed=8)
    assert a == b and (a.low, a.high) != (c.low, c.high)
    assert a.low < a.eer < a.high and a.eer == pytest.approx(V.eer(s, y))
    assert 0.01 < a.high - a.low < 0.15  # ~ +/- 2 sd of a binomial rate at n=200
    # a 10x larger set gives a clearly narrower interval
    y10 = np.r_[np.ones(2000, int), np.zeros(20000, int)]
    s10 = rng.normal(size=y10.size) + 1.5 * y10
    big = V.bootstrap_eer_ci(s10, y10, n_boot=100, seed=7)
    assert big.high - big.low < (a.high - a.low) / 2


def _brute_best_accuracy(s: np.ndarray, y: np.ndarray) -> float:
    return max(float(((s >= t) == (y == 1)).mean()) for t in [math.inf] + s.tolist())


def test_best_threshold_and_kfold_accuracy_against_brute_force() -> None:
    rng = np.random.default_rng(5)
    s, y = _random_pairs(rng, 300, decimals=2)
    t, acc = V.best_accuracy_threshold(s, y)
    assert acc == pytest.approx(_brute_best_accuracy(s, y))
    assert float(((s >= t) == (y == 1)).mean()) == pytest.approx(acc)
    folds = np.repeat(np.arange(10), 30)
    res = V.kfold_accuracy(s, y, folds=10)
    res_ids = V.kfold_accuracy(s, y, folds=folds)
    np.testing.assert_allclose(res.accuracies, res_ids.accuracies)
    for f in range(10):
        test = folds == f
        # the chosen threshold is optimal on the 9 training folds ...
        train_acc = float(((s[~test] >= res.thresholds[f]) == (y[~test] == 1)).mean())
        assert train_acc == pytest.approx(_brute_best_accuracy(s[~test], y[~test]))
        # ... and the reported accuracy is measured on the held-out fold only
        assert res.accuracies[f] == pytest.approx(((s[test] >= res.thresholds[f]) == (y[test] == 1)).mean())
    assert res.mean == pytest.approx(res.accuracies.mean())
    with pytest.raises(InputError, match="folds"):
        V.kfold_accuracy(s, y, folds=1)


def test_fast_eer_equals_the_full_roc_interpolation() -> None:
    rng = np.random.default_rng(6)
    for decimals in (1, 3, 12):
        for _ in range(40):
            s, y = _random_pairs(rng, int(rng.integers(2, 300)), decimals=decimals)
            roc = V.roc_curve(s, y)
            assert V.eer(s, y) == V._eer_index(roc)[0]


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_eer_identical_to_sklearn_roc_interpolation(decimals) -> None:
    """The anchor of benchmarks/engine_speed.py (sklearn roc_curve + linear interpolation at the
    sign change of FRR - FAR) gives exactly our EER, with and without ties, on float32 scores."""
    rng = np.random.default_rng(13)
    y = (rng.random(20_000) < 0.1).astype(np.int8)
    s = (rng.standard_normal(20_000) + 1.5 * y).astype(np.float32)
    if decimals is not None:
        s = np.round(s, decimals)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    d = (1.0 - tpr) - fpr
    k = int(np.argmax(d <= 0))
    want = fpr[k] if d[k] == 0 or k == 0 else fpr[k - 1] + d[k - 1] / (d[k - 1] - d[k]) * (fpr[k] - fpr[k - 1])
    assert V.eer(s, y) == float(want)
