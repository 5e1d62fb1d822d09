"""Figures for one matcher on one TongjiFull protocol: score histograms, DET (plain vs RSM), trouble pairs.

At 36 M pairs the histogram and DET use every genuine pair and a seeded random subset of
impostors (the title says how many); the trouble pairs are found on all pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from biomatch.metrics.verification import eer_threshold
from biomatch.palmprint.data import PalmSample, load_rois
from biomatch.palmprint.full import ScoreMatrices, pair_arrays


def _subsample(genuine: np.ndarray, max_impostors: int, seed: int) -> np.ndarray:
    imp = np.flatnonzero(~genuine)
    if imp.size > max_impostors:
        imp = np.sort(np.random.default_rng(seed).choice(imp, max_impostors, replace=False))
    return np.sort(np.r_[np.flatnonzero(genuine), imp])


def write_figures(sm: ScoreMatrices, rescored: Tensor, rsm_name: str, out_dir: Path, prefix: str,
                  max_impostors: int = 1_000_000, n_pairs: int = 6) -> list[Path]:
    """Histogram, DET and trouble-pair PNGs for ``sm`` (plain) and ``rescored`` (RSM); returns their paths."""
    from biomatch.viz.verification_plots import TroublePair, plot_det, plot_histograms, plot_trouble_pairs, trouble_indices

    plain, gen = pair_arrays(sm.direct, sm.probe_palms, sm.gallery_palms)
    rsm, _ = pair_arrays(rescored, sm.probe_palms, sm.gallery_palms)
    keep = _subsample(gen, max_impostors, 0)
    y = gen[keep].astype(np.int8)
    n_imp = int((~gen).sum())
    sub = f"\n({int((y == 0).sum()):,} of {n_imp:,} impostors drawn)" if keep.size < gen.size else ""
    curves = {"plain": (plain[keep], y), rsm_name: (rsm[keep], y)}
    title = f"{sm.matcher.split(' (')[0]}, TongjiFull {sm.protocol} set{sub}"
    out = Path(out_dir)
    paths = [plot_histograms(curves, out / f"{prefix}_hist.png", title), plot_det(curves, out / f"{prefix}_det.png", title)]
    t_plain, t_rsm = eer_threshold(plain, gen.astype(np.int8)), eer_threshold(rsm, gen.astype(np.int8))
    wrong = trouble_indices(plain, gen.astype(np.int8), t_plain)
    fixed = (rsm[wrong] >= t_rsm) == gen[wrong]
    shown = np.r_[wrong[fixed][: n_pairs // 2], wrong[~fixed]][:n_pairs]
    shown = np.r_[shown, wrong[fixed][n_pairs // 2 :]][:n_pairs]
    n_gal = len(sm.gallery_palms)
    pairs = []
    for k in shown:
        i, j = divmod(int(k), n_gal)
        if not sm.probe_paths:
            break
        a = PalmSample(Path(sm.probe_paths[i]), int(sm.probe_palms[i]), 2)
        b = PalmSample(Path(sm.gallery_paths[j]), int(sm.gallery_palms[j]), 1)
        img_a, img_b = load_rois([a, b])
        pairs.append(TroublePair(img_a, img_b, bool(gen[k]), float(plain[k]), float(rsm[k]),
                                 rsm_correct=bool((rsm[k] >= t_rsm) == gen[k]),
                                 caption=f"palm {a.palm}/{b.palm}"))
    paths.append(plot_trouble_pairs(
        pairs, out / f"{prefix}_trouble.png",
        f"{sm.matcher.split(' (')[0]}, {sm.protocol} set: {len(wrong):,} pairs\nwrong at the plain EER threshold,"
        f"\n{int(fixed.sum()):,} fixed by RSM; {len(pairs)} shown",
    ))
    return paths
