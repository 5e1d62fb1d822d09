"""Verification metrics over scored pairs: ROC, EER, TAR@FAR, DET, d', bootstrap CI, k-fold accuracy.

Conventions (DESIGN.md): a *score* is a similarity, higher = more likely the same identity;
a pair is accepted when ``score >= threshold``. Labels are 1 = genuine (same identity) and
0 = impostor. Every function takes ``scores`` (float array, shape (n,)) and ``labels``
(array of 0/1, shape (n,)); pass ``-distance`` if you hold dissimilarities.

The ROC is built by sorting the genuine and impostor scores once each and counting with
``searchsorted`` (no per-threshold loop). The EER does not even need the ROC: after the two
sorts, the sign change of FRR - FAR is found by binary search, which makes the EER over
10^7 scores several times faster than ``sklearn.metrics.roc_curve`` with the same value.

>>> import numpy as np
>>> scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
>>> labels = np.array([1, 1, 0, 1, 0, 0])
>>> round(eer(scores, labels), 4)
0.3333
>>> roc = roc_curve(scores, labels)
>>> roc.far.tolist(), roc.tar.tolist()
([0.0, 0.0, 0.0, 0.3333333333333333, 0.3333333333333333, 0.6666666666666666, 1.0], [0.0, 0.3333333333333333, 0.6666666666666666, 0.6666666666666666, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from biomatch.errors import InputError

__all__ = [
    "RocCurve",
    "EerInterval",
    "KFoldResult",
    "validate_pairs",
    "roc_curve",
    "det_curve",
    "eer",
    "eer_threshold",
    "tar_at_far",
    "frr_at_far",
    "threshold_at_far",
    "min_impostors_for_far",
    "decidability",
    "bootstrap_eer_ci",
    "best_accuracy_threshold",
    "kfold_accuracy",
    "verification_report",
]


@dataclass(frozen=True)
class RocCurve:
    """Operating points at every distinct score, thresholds descending.

    ``thresholds[0]`` is +inf (accept nothing: FAR = TAR = 0); point k accepts every pair
    with ``score >= thresholds[k]``. ``far`` and ``tar`` are non-decreasing.
    """

    thresholds: NDArray[np.float64]
    far: NDArray[np.float64]
    tar: NDArray[np.float64]
    n_genuine: int
    n_impostor: int

    @property
    def frr(self) -> NDArray[np.float64]:
        """False rejection rate = 1 - TAR at each threshold."""
        return 1.0 - self.tar


@dataclass(frozen=True)
class EerInterval:
    """EER point estimate and a percentile bootstrap confidence interval."""

    eer: float
    low: float
    high: float
    confidence: float
    n_boot: int
    seed: int


@dataclass(frozen=True)
class KFoldResult:
    """Per-fold accuracy at the threshold chosen on the other folds (LFW protocol)."""

    accuracies: NDArray[np.float64]
    thresholds: NDArray[np.float64]

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Sample std over folds (ddof=1), 0 for a single fold."""
        return float(self.accuracies.std(ddof=1)) if self.accuracies.size > 1 else 0.0


# ----------------------------------------------------------------------------- validation


def validate_pairs(
    scores: ArrayLike, labels: ArrayLike, *, need_both: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Check and convert (scores, labels) to float64 scores and a boolean genuine mask.

    Raises InputError for empty or mismatched arrays, non-finite scores, labels outside
    {0, 1}, and (when ``need_both``) a set with no genuine or no impostor pair, for which
    FAR or FRR is undefined.
    """
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise InputError(f"scores and labels must be 1-D arrays, got shapes {s.shape} and {y.shape}")
    if s.size == 0:
        raise InputError("scores is empty: need at least one scored pair")
    if s.shape != y.shape:
        raise InputError(f"scores and labels differ in length: {s.size} scores vs {y.size} labels")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise InputError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    if y.dtype == np.bool_:
        genuine = y
    else:
        if not np.issubdtype(y.dtype, np.number):
            raise InputError(f"labels must be 0/1 numbers, got dtype {y.dtype}")
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise InputError(
                f"labels must be 0 (impostor) or 1 (genuine); found {np.unique(y[bad])[:5].tolist()}"
            )
        genuine = y == 1
    if need_both:
        n_gen = int(genuine.sum())
        if n_gen == 0 or n_gen == genuine.size:
            kind = "impostor" if n_gen == genuine.size else "genuine"
            raise InputError(
                f"need both genuine and impostor pairs; there is no {kind} pair among {genuine.size}"
            )
    return s, genuine


# ----------------------------------------------------------------------------- ROC core


def _roc_from_sorted(
    gen_sorted: NDArray[np.float64], imp_sorted: NDArray[np.float64]
) -> RocCurve:
    """ROC from ascending-sorted genuine and impostor scores (both non-empty)."""
    n_g, n_i = gen_sorted.size, imp_sorted.size
    merged = np.concatenate([gen_sorted, imp_sorted])
    merged.sort()
    keep = np.empty(merged.size, dtype=bool)
    keep[-1] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[:-1])
    thr = merged[keep][::-1]  # distinct, descending
    tp = n_g - np.searchsorted(gen_sorted, thr, side="left")
    fp = n_i - np.searchsorted(imp_sorted, thr, side="left")
    thresholds = np.concatenate([[np.inf], thr])
    tar = np.concatenate([[0.0], tp / n_g])
    far = np.concatenate([[0.0], fp / n_i])
    return RocCurve(thresholds, far, tar, n_g, n_i)


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
    """ROC (FAR, TAR, thresholds) at every distinct score of ``scores`` (similarities).

    Same operating points as ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=False)`` (thresholds descending, first +inf).
    """
    s, gen = validate_pairs(scores, labels)
    return _roc_from_sorted(np.sort(s[gen]), np.sort(s[~gen]))


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """DET points (far, frr, thresholds) from ``scores`` (similarities) and ``labels`` (1 = genuine).

    Plot them on normal-deviate (probit) axes; see biomatch.viz.verification_plots.
    """
    roc = roc_curve(scores, labels)
    return roc.far, roc.frr, roc.thresholds


def eer_on_curve(far: NDArray[np.float64], frr: NDArray[np.float64]) -> tuple[float, int, float]:
    """EER read off ROC points ordered by descending threshold (FRR - FAR non-increasing).

    Returns the EER, the index k of the first point with FRR <= FAR and the interpolation weight
    between points k-1 and k; NaN EER if FRR stays above FAR (a truncated curve). Shared by the
    plain and the weighted (palm-bootstrap) EER so both interpolate the same way.

    >>> eer_on_curve(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.25, 0.0]))
    (0.4, 1, 0.8)
    """
    d = frr - far  # +1 at the +inf threshold, -1 or 0 at the lowest
    k = int(np.argmax(d <= 0))  # first sign change (d is non-increasing)
    if d[k] > 0:
        return math.nan, k, 1.0
    if d[k] == 0 or k == 0:
        return float(far[k]), k, 1.0
    w = d[k - 1] / (d[k - 1] - d[k])  # fraction of the way from k-1 to k where d = 0
    return float(far[k - 1] + w * (far[k] - far[k - 1])), k, float(w)


def _eer_index(roc: RocCurve) -> tuple[float, int, float]:
    """EER, the index k of the first point with FRR <= FAR, and the interpolation weight."""
    return eer_on_curve(roc.far, roc.frr)


def _rates_at(g: NDArray[np.float64], i: NDArray[np.float64], t: float) -> tuple[float, float]:
    """(FAR, FRR) when accepting ``score >= t``, from ascending-sorted genuine / impostor scores."""
    far = (i.size - np.searchsorted(i, t, side="left")) / i.size
    frr = 1.0 - (g.size - np.searchsorted(g, t, side="left")) / g.size
    return float(far), float(frr)


def _last_nonpositive(arr: NDArray[np.float64], g: NDArray[np.float64], i: NDArray[np.float64]) -> float:
    """Largest value t of sorted ``arr`` with FRR(t) - FAR(t) <= 0 (-inf if none): binary search."""
    lo, hi = 0, arr.size
    while lo < hi:
        mid = (lo + hi) // 2
        far, frr = _rates_at(g, i, arr[mid])
        if frr - far <= 0:
            lo = mid + 1
        else:
            hi = mid
    return float(arr[lo - 1]) if lo > 0 else -math.inf


def _eer_from_sorted(g: NDArray[np.float64], i: NDArray[np.float64]) -> float:
    """EER from sorted genuine / impostor scores without building the ROC.

    FRR - FAR is monotone in the threshold, so the two ROC points around the sign change
    are found by binary search over the scores (O(log^2 n) after the sorts); the result is
    the same interpolation as ``_eer_index`` on the full ROC.
    """
    t_k = max(_last_nonpositive(g, g, i), _last_nonpositive(i, g, i))  # the min score always qualifies
    far_k, frr_k = _rates_at(g, i, t_k)
    d_k = frr_k - far_k
    if d_k == 0:
        return far_k
    above = [a[j] for a in (g, i) if (j := int(np.searchsorted(a, t_k, side="right"))) < a.size]
    far_p, frr_p = _rates_at(g, i, float(min(above))) if above else (0.0, 1.0)
    d_p = frr_p - far_p
    w = d_p / (d_p - d_k)
    return float(far_p + w * (far_k - far_p))


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate from ``scores`` (similarities) and ``labels`` (1 = genuine).

    Linear interpolation between the two ROC points where FRR - FAR changes sign, so the
    value lies on the segment joining them; perfect separation gives 0.

    >>> eer([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    0.0
    >>> eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    1.0
    """
    s, gen = validate_pairs(scores, labels)
    return _eer_from_sorted(np.sort(s[gen]), np.sort(s[~gen]))


def eer_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """A score threshold at the EER (accept ``score >= t``), interpolated like the EER.

    Used to list the pairs the plain score gets wrong at its EER operating point.
    """
    roc = roc_curve(scores, labels)
    _, k, w = _eer_index(roc)
    if k == 0 or w == 1.0:
        return float(roc.thresholds[k])
    hi = roc.thresholds[k - 1]
    if not np.isfinite(hi):
        return float(roc.thresholds[k])
    return float(hi + w * (roc.thresholds[k] - hi))


# ----------------------------------------------------------------------------- FAR operating points


def min_impostors_for_far(far: float) -> int:
    """Fewest impostor pairs for which TAR@``far`` is defined (one false accept = ``far``)."""
    if not 0.0 < far < 1.0:
        raise InputError(f"target FAR must be in (0, 1), got {far}")
    return int(math.ceil(1.0 / far - 1e-9))


def _far_index(roc: RocCurve, far: float) -> int | None:
    """Index of the lowest threshold with FAR <= ``far``; None if too few impostors."""
    if roc.n_impostor < min_impostors_for_far(far):
        return None
    # far is non-decreasing: the last index with far <= target has the highest TAR
    return int(np.searchsorted(roc.far, far + 1e-12, side="right") - 1)


def tar_at_far(scores: ArrayLike, labels: ArrayLike, far: float) -> float:
    """Highest TAR among thresholds with FAR <= ``far`` from ``scores`` (similarities), ``labels``.

    Returns NaN (undefined, never 0) when there are fewer than ``ceil(1/far)`` impostor
    pairs, since then even one false accept exceeds the target.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[np.ones(100), np.zeros(1000)]
    >>> s = rng.normal(size=1100) + 3 * y
    >>> 0.0 < tar_at_far(s, y, 1e-2) <= 1.0
    True
    >>> tar_at_far(s, y, 1e-4)
    nan
    """
    roc = roc_curve(scores, labels)
    k = _far_index(roc, far)
    return math.nan if k is None else float(roc.tar[k])


def frr_at_far(scores: ArrayLike, labels: ArrayLike, far: float) -> float:
    """1 - TAR@FAR for ``scores`` (similarities) and ``labels``; NaN when undefined."""
    return 1.0 - tar_at_far(scores, labels, far)


def threshold_at_far(scores: ArrayLike, labels: ArrayLike, far: float) -> float:
    """Lowest threshold (accept ``score >= t``) whose FAR on these pairs is <= ``far``.

    ``scores`` are similarities, ``labels`` 1 = genuine. Raises InputError when there are
    too few impostor pairs to calibrate that FAR. When only "accept nothing" meets the
    target, returns the next float above the highest score.

    >>> threshold_at_far([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0], 0.34)
    0.7
    """
    roc = roc_curve(scores, labels)
    k = _far_index(roc, far)
    if k is None:
        raise InputError(
            f"FAR {far:g} needs at least {min_impostors_for_far(far)} impostor pairs, "
            f"got {roc.n_impostor}"
        )
    t = float(roc.thresholds[k])
    return t if np.isfinite(t) else float(np.nextafter(roc.thresholds[1], np.inf))


# ----------------------------------------------------------------------------- separation


def decidability(scores: ArrayLike, labels: ArrayLike) -> float:
    """Daugman's decidability d' = |mu_g - mu_i| / sqrt((var_g + var_i) / 2).

    Takes ``scores`` (either direction; d' is symmetric) and ``labels`` (1 = genuine).
    Returns inf when both classes have zero variance and different means.

    >>> round(decidability([1.0, 3.0, 0.0, 2.0], [1, 1, 0, 0]), 6)
    0.707107
    """
    s, gen = validate_pairs(scores, labels)
    g, i = s[gen], s[~gen]
    spread = math.sqrt((g.var(ddof=1 if g.size > 1 else 0) + i.var(ddof=1 if i.size > 1 else 0)) / 2)
    gap = abs(float(g.mean() - i.mean()))
    if spread == 0.0:
        return math.inf if gap > 0 else 0.0
    return gap / spread


def bootstrap_eer_ci(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EerInterval:
    """Percentile bootstrap CI of the EER of ``scores`` (similarities) and ``labels``.

    Genuine and impostor pairs are resampled separately (stratified), so every resample
    has both classes. Pairs are treated as independent, which all-vs-all pairs are not
    (they share images): the interval is optimistic, say so when you report it.
    """
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    s, gen = validate_pairs(scores, labels)
    g, i = np.sort(s[gen]), np.sort(s[~gen])
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        # sorted indices into sorted arrays give sorted resamples without a float sort
        gb = g[np.sort(rng.integers(0, g.size, g.size))]
        ib = i[np.sort(rng.integers(0, i.size, i.size))]
        values[b] = _eer_from_sorted(gb, ib)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    point = _eer_index(_roc_from_sorted(g, i))[0]
    return EerInterval(point, float(low), float(high), confidence, n_boot, seed)


# ----------------------------------------------------------------------------- accuracy (LFW)


def best_accuracy_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Threshold maximizing accuracy on ``scores`` (similarities) / ``labels``, and that accuracy.

    The threshold is the midpoint between the lowest accepted score and the next lower
    distinct score (so it generalizes instead of sitting on a training score). Works with
    a single class too (then it accepts or rejects everything).

    >>> best_accuracy_threshold([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    (0.55, 1.0)
    """
    s, gen = validate_pairs(scores, labels, need_both=False)
    n_g, n_i = int(gen.sum()), int((~gen).sum())
    g, i = np.sort(s[gen]), np.sort(s[~gen])
    thr = np.unique(s)[::-1]  # distinct, descending
    tp = n_g - np.searchsorted(g, thr, side="left")
    fp = n_i - np.searchsorted(i, thr, side="left")
    # candidate k accepts scores >= thr[k]; candidate -1 (index 0 here) accepts nothing
    correct = np.concatenate([[n_i], tp + (n_i - fp)])
    k = int(np.argmax(correct))
    acc = float(correct[k] / s.size)
    if k == 0:
        return float(np.nextafter(thr[0], np.inf)), acc
    accepted = thr[k - 1]
    if k == thr.size:  # accept everything
        return -math.inf, acc
    below = thr[k]
    mid = (accepted + below) / 2
    if not below < mid <= accepted:  # adjacent floats: midpoint rounds onto one end
        mid = float(np.nextafter(below, np.inf))
    return float(mid), acc


def kfold_accuracy(
    scores: ArrayLike, labels: ArrayLike, folds: int | ArrayLike = 10
) -> KFoldResult:
    """LFW-style verification accuracy: threshold chosen on k-1 folds, accuracy on the held-out one.

    Takes ``scores`` (similarities), ``labels`` (1 = same person) and ``folds``: either the
    number of contiguous folds (LFW View 2 pairs are stored fold by fold: 10 x 600) or an
    array of fold ids, one per pair.

    >>> import numpy as np
    >>> s = np.tile([0.9, 0.8, 0.3, 0.1], 5); y = np.tile([1, 1, 0, 0], 5)
    >>> kfold_accuracy(s, y, folds=5).mean
    1.0
    """
    s, gen = validate_pairs(scores, labels, need_both=False)
    if isinstance(folds, (int, np.integer)):
        k = int(folds)
        if not 2 <= k <= s.size:
            raise InputError(f"folds must be between 2 and the number of pairs ({s.size}), got {k}")
        fold_id = np.repeat(np.arange(k), np.diff(np.linspace(0, s.size, k + 1).astype(int)))
    else:
        fold_id = np.asarray(folds)
        if fold_id.shape != s.shape:
            raise InputError(f"folds has {fold_id.size} ids for {s.size} pairs")
    ids = np.unique(fold_id)
    if ids.size < 2:
        raise InputError("need at least 2 folds")
    accs, thrs = [], []
    for f in ids:
        test = fold_id == f
        t, _ = best_accuracy_threshold(s[~test], gen[~test])
        accs.append(float(((s[test] >= t) == gen[test]).mean()))
        thrs.append(t)
    return KFoldResult(np.asarray(accs), np.asarray(thrs))


# ----------------------------------------------------------------------------- summary


def verification_report(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    fars: Sequence[float] = (1e-2, 1e-3, 1e-4),
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """EER, TAR@FAR (None = undefined), d' and counts in the DESIGN.md metric names.

    Takes ``scores`` (similarities) and ``labels`` (1 = genuine); with ``n_boot`` > 0 adds
    ``eer_ci_low`` / ``eer_ci_high`` (95 % percentile bootstrap).
    """
    s, gen = validate_pairs(scores, labels)
    roc = _roc_from_sorted(np.sort(s[gen]), np.sort(s[~gen]))
    out: dict[str, float | int | None] = {
        "eer": _eer_index(roc)[0],
        "n_genuine": roc.n_genuine,
        "n_impostor": roc.n_impostor,
        "d_prime": decidability(s, gen.astype(np.int8)),
    }
    for far in fars:
        k = _far_index(roc, far)
        out[f"tar@far={far:.0e}".replace("e-0", "e-")] = None if k is None else float(roc.tar[k])
    if n_boot > 0:
        ci = bootstrap_eer_ci(s, gen.astype(np.int8), n_boot=n_boot, seed=seed)
        out["eer_ci_low"], out["eer_ci_high"] = ci.low, ci.high
    return out
