"""Scoring a probe x gallery protocol at full scale (36 M pairs), RSM with a guarded reference set,
and the metrics of issue #9 (EER, TAR@FAR, rank-1, d', palm-level bootstrap).

Dissimilarity matrices stay float32 torch tensors (6,000 x 6,000 = 144 MB); labels are never
materialized per pair except as one boolean array when the EER needs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from biomatch.errors import InputError
from biomatch.matching.rsm import RSM
from biomatch.metrics.verification import eer as eer_of
from biomatch.metrics.verification import eer_on_curve
from biomatch.metrics.verification import verification_report
from biomatch.palmprint.data import PalmSample, palm_labels
from biomatch.palmprint.splits import Split, indices_of

FARS = (1e-3, 1e-4, 1e-5)


class ReferenceSetError(InputError):
    """RSM references that would leak training or test images into the re-scoring."""


class Matcher(Protocol):
    """Encodes ROIs; compares two encoded sets with a [0, 1] dissimilarity."""

    name: str

    def encode(self, rois: np.ndarray) -> Tensor: ...

    def dissimilarity(self, a: Tensor, b: Tensor) -> Tensor: ...


def check_references(
    refs: list[PalmSample], trained_on: list[PalmSample], probes: list[PalmSample], *, allow_training: bool = False
) -> None:
    """Refuse references that are training images of the matcher (unless ``allow_training``) or
    test probes (always): both make RSM measure something a deployment does not have."""
    if not refs:
        raise ReferenceSetError("the RSM reference set is empty")
    probe_paths = {s.path for s in probes}
    leaked = [s.path for s in refs if s.path in probe_paths]
    if leaked:
        raise ReferenceSetError(f"{len(leaked)} RSM references are test probes (e.g. {leaked[0]}); references must not be test images")
    train_paths = {s.path for s in trained_on}
    seen = [s.path for s in refs if s.path in train_paths]
    if seen and not allow_training:
        raise ReferenceSetError(
            f"{len(seen)} of {len(refs)} RSM references are training images of the matcher (e.g. {seen[0]}); "
            "pass allow_training_refs=True to use them anyway"
        )


@dataclass(frozen=True)
class ScoreMatrices:
    """Everything RSM and the metrics need for one matcher on one protocol (dissimilarities)."""

    matcher: str
    protocol: str
    probe_palms: np.ndarray
    gallery_palms: np.ndarray
    direct: Tensor  # probes x gallery
    probe_refs: Tensor  # probes x references
    gallery_refs: Tensor  # gallery x references
    ref_owner: Tensor  # per reference: its gallery index, -1 if not a gallery item
    refs_note: str
    probe_paths: tuple[str, ...] = ()
    gallery_paths: tuple[str, ...] = ()

    def rsm(self, m: int | None, alpha: float, seed: int) -> Tensor:
        """RSM-re-scored probes x gallery dissimilarities (a reference that is the pair's enrolled image is left out)."""
        owner = self.ref_owner if bool((self.ref_owner >= 0).any()) else None
        return RSM(m=m, alpha=alpha, seed=seed)(self.direct, self.probe_refs, self.gallery_refs, None, owner)

    def save(self, path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @classmethod
    def load(cls, path) -> "ScoreMatrices":
        return cls(**torch.load(path, weights_only=False))


def score_split(
    matcher: Matcher,
    split: Split,
    universe: list[PalmSample],
    rois: np.ndarray,
    *,
    trained_on: list[PalmSample],
    allow_training_refs: bool = False,
    codes: Tensor | None = None,
) -> ScoreMatrices:
    """Encode the split's images (or take precomputed ``codes`` of ``universe``) and compute all
    dissimilarities; the reference set is checked against ``trained_on`` and the probes first."""
    check_references(split.refs, trained_on, split.probes, allow_training=allow_training_refs)
    gi, pi, ri = (indices_of(s, universe) for s in (split.gallery, split.probes, split.refs))
    if codes is None:
        need = np.unique(np.concatenate([gi, pi, ri]))
        enc = matcher.encode(rois[need])
        where = {int(k): n for n, k in enumerate(need)}
        take = lambda idx: enc[torch.as_tensor([where[int(k)] for k in idx])]  # noqa: E731
    else:
        take = lambda idx: codes[torch.as_tensor(idx)]  # noqa: E731
    fg, fp, fr = take(gi), take(pi), take(ri)
    gallery_pos = {int(k): n for n, k in enumerate(gi)}
    owner = torch.tensor([gallery_pos.get(int(k), -1) for k in ri], dtype=torch.long)
    return ScoreMatrices(
        matcher=matcher.name, protocol=split.protocol,
        probe_palms=palm_labels(split.probes), gallery_palms=palm_labels(split.gallery),
        direct=matcher.dissimilarity(fp, fg).to(torch.float32),
        probe_refs=matcher.dissimilarity(fp, fr).to(torch.float32),
        gallery_refs=matcher.dissimilarity(fg, fr).to(torch.float32),
        ref_owner=owner, refs_note=split.refs_note,
        probe_paths=tuple(str(s.path) for s in split.probes), gallery_paths=tuple(str(s.path) for s in split.gallery),
    )


def pair_arrays(dissim: Tensor, probe_palms: np.ndarray, gallery_palms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(similarity scores = -dissimilarity, genuine mask) for every probe x gallery pair, flattened row-major."""
    if dissim.shape != (len(probe_palms), len(gallery_palms)):
        raise InputError(f"dissimilarity matrix {tuple(dissim.shape)} does not match {len(probe_palms)} probes x {len(gallery_palms)} gallery items")
    scores = -dissim.numpy().astype(np.float64).ravel()
    genuine = (probe_palms[:, None] == gallery_palms[None, :]).ravel()
    return scores, genuine


def rank1(dissim: Tensor, probe_palms: np.ndarray, gallery_palms: np.ndarray) -> float:
    """Fraction of probes whose nearest gallery image is of their palm (ties: lowest index)."""
    return float((gallery_palms[dissim.argmin(dim=1).numpy()] == probe_palms).mean())


def summary(dissim: Tensor, probe_palms: np.ndarray, gallery_palms: np.ndarray) -> dict[str, float | int | None]:
    """EER, TAR@FAR 1e-3/1e-4/1e-5, d', counts, rank-1 for a probes x gallery dissimilarity matrix."""
    s, g = pair_arrays(dissim, probe_palms, gallery_palms)
    out = verification_report(s, g, fars=FARS)
    out["rank1"] = rank1(dissim, probe_palms, gallery_palms)
    return out


# ----------------------------------------------------------------------------- palm-level bootstrap


def weighted_eer(scores: np.ndarray, genuine: np.ndarray, weights: np.ndarray,
                 total_genuine: float | None = None, total_impostor: float | None = None,
                 presorted: bool = False) -> tuple[float, float]:
    """EER of weighted pairs (score = similarity), linear interpolation as ``metrics.verification.eer``.

    ``total_*`` default to the weight sums; give larger totals when only the top-scoring
    impostors are passed (the rest lie below every threshold that matters). Returns
    (eer, lowest threshold examined before the crossing) so the caller can check the window.
    """
    if presorted:  # scores already descending (the bootstrap sorts once for all replicates)
        s, gen, w = scores, genuine, weights.astype(np.float64, copy=False)
    else:
        order = np.argsort(-scores, kind="stable")
        s, gen, w = scores[order], genuine[order], weights[order].astype(np.float64)
    tg = float(w[gen].sum()) if total_genuine is None else total_genuine
    ti = float(w[~gen].sum()) if total_impostor is None else total_impostor
    if tg <= 0 or ti <= 0:
        raise InputError("weighted EER needs genuine and impostor weight")
    cg, ci = np.cumsum(np.where(gen, w, 0.0)), np.cumsum(np.where(gen, 0.0, w))
    last = np.r_[s[1:] != s[:-1], True]  # end of each group of equal scores
    far = np.r_[0.0, ci[last] / ti]
    frr = np.r_[1.0, 1.0 - cg[last] / tg]
    thr = np.r_[np.inf, s[last]]
    value, k, _ = eer_on_curve(far, frr)
    if math.isnan(value):  # never crossed inside the given pairs
        return value, float(thr[-1])
    return value, float(thr[k])


def palm_bootstrap_eer(
    dissim: Tensor, probe_palms: np.ndarray, gallery_palms: np.ndarray, *,
    n_boot: int = 200, seed: int = 0, confidence: float = 0.95, window: int = 200_000,
    min_share: float = 5.0, point_eer: float | None = None,
) -> dict[str, float]:
    """Percentile CI of the EER when *palms* (not pairs) are resampled with replacement.

    A palm drawn c times contributes each of its probes and gallery images c times, so pair
    (i, j) gets weight c[palm_i] * c[palm_j] (genuine pairs c^2). Only genuine pairs and the
    ``window`` highest-scoring impostors are sorted; the other impostors enter through the
    closed-form total weight (sum_p c_p n_probe_p)(sum_q c_q n_gallery_q) - sum_p c_p^2 n_probe_p n_gallery_p.
    The window starts at max(``window``, 5 x EER x impostors) and is widened (x4) whenever a
    replicate's crossing falls below it, so every replicate is exact.
    """
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}")
    palms = np.unique(np.r_[probe_palms, gallery_palms])
    pp, gp = np.searchsorted(palms, probe_palms), np.searchsorted(palms, gallery_palms)
    n_probe = np.bincount(pp, minlength=palms.size).astype(np.float64)
    n_gal = np.bincount(gp, minlength=palms.size).astype(np.float64)
    s_all, gen_all = pair_arrays(dissim, probe_palms, gallery_palms)
    imp_all = np.flatnonzero(~gen_all)
    imp_neg = -s_all[imp_all]
    gen_idx = np.flatnonzero(gen_all)
    # the window must hold every impostor above any replicate's EER threshold: >= 5 x the point EER's share
    if min_share > 0:
        point = eer_of(s_all, gen_all) if point_eer is None else point_eer
        window = max(window, int(min_share * point * imp_all.size))

    def kept(win: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        imp = imp_all if win >= imp_all.size else imp_all[np.argpartition(imp_neg, win)[:win]]
        keep = np.r_[gen_idx, imp]
        keep = keep[np.argsort(-s_all[keep], kind="stable")]  # sort once; replicates only change weights
        floor = -math.inf if win >= imp_all.size else float(s_all[imp].min())
        return s_all[keep], gen_all[keep], pp[keep // len(gallery_palms)], gp[keep % len(gallery_palms)], floor

    s, gen, row_p, col_p, floor = kept(window)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    widened = 0
    for b in range(n_boot):
        c = np.bincount(rng.integers(0, palms.size, palms.size), minlength=palms.size).astype(np.float64)
        tg = float((c**2 * n_probe * n_gal).sum())
        ti = float((c * n_probe).sum() * (c * n_gal).sum() - (c**2 * n_probe * n_gal).sum())
        value, thr = weighted_eer(s, gen, c[row_p] * c[col_p], tg, ti, presorted=True)
        while math.isnan(value) or thr <= floor:  # crossing below the window: widen it (exact again)
            window *= 4
            widened += 1
            s, gen, row_p, col_p, floor = kept(window)
            value, thr = weighted_eer(s, gen, c[row_p] * c[col_p], tg, ti, presorted=True)
        values[b] = value
    a = (1.0 - confidence) / 2
    low, high = np.quantile(values, [a, 1.0 - a])
    return {"eer_ci_low": float(low), "eer_ci_high": float(high), "n_boot": n_boot, "confidence": confidence,
            "resampled": "palms", "window_widened": widened, "window": min(window, int(imp_all.size))}
