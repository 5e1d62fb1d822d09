"""Plots for one matcher on one dataset: histograms / ROC / DET before and after RSM, trouble pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomatch.matching.rsm import RSM
from biomatch.metrics.verification import eer_threshold
from biomatch.palmprint.data import load_rois
from biomatch.palmprint.protocol import PairSet, SessionScores


def write_plots(ss: SessionScores, pair_set: PairSet, rsm: RSM, out_dir: Path, prefix: str, max_pairs: int = 6) -> list[Path]:
    """Write the four figures of issue #4 for ``ss`` and return their paths."""
    from biomatch.viz.verification_plots import (
        TroublePair,
        plot_det,
        plot_histograms,
        plot_roc,
        plot_trouble_pairs,
        trouble_indices,
    )

    plain, labels = ss.scores(pair_set)
    rescored, _ = ss.scores(pair_set, rsm)
    rsm_name = f"RSM (M={rsm.m or 'all'}, alpha={rsm.alpha:g})"
    curves = {"plain": (plain, labels), rsm_name: (rescored, labels)}
    title = f"{ss.matcher} on {ss.dataset}, {pair_set}"
    out = Path(out_dir)
    paths = [
        plot_histograms(curves, out / f"{prefix}_hist.png", title),
        plot_roc(curves, out / f"{prefix}_roc.png", title),
        plot_det(curves, out / f"{prefix}_det.png", title),
    ]
    t_plain, t_rsm = eer_threshold(plain, labels), eer_threshold(rescored, labels)
    all_wrong = trouble_indices(plain, labels, t_plain)
    fixed = (rescored[all_wrong] >= t_rsm) == labels[all_wrong].astype(bool)
    # show the pairs RSM fixes first (up to half), then the worst ones it leaves wrong
    shown = np.r_[all_wrong[fixed][: max_pairs // 2], all_wrong[~fixed]][:max_pairs]
    wrong = np.r_[shown, all_wrong[fixed][max_pairs // 2 :]][:max_pairs]
    rows, cols = ss.pairs(pair_set)
    col_samples = ss.test if pair_set == "all-vs-all" else ss.enrol
    pairs = []
    for k in wrong:
        a, b = ss.test[rows[k]], col_samples[cols[k]]
        img_a, img_b = load_rois([a, b])
        genuine = bool(labels[k])
        pairs.append(
            TroublePair(
                img_a, img_b, genuine, float(plain[k]), float(rescored[k]),
                rsm_correct=bool((rescored[k] >= t_rsm) == genuine),
                caption=f"palm {a.palm + 1}/{b.palm + 1}",
            )
        )
    n_fixed = sum(p.rsm_correct for p in pairs)
    caption = (
        f"{title}\n{len(all_wrong)} pairs wrong at the plain EER threshold, RSM (at its own EER\n"
        f"threshold) fixes {int(fixed.sum())} of them; {len(wrong)} shown ({n_fixed} fixed)"
        if len(all_wrong) else title  # the figure itself says that there is nothing to show
    )
    paths.append(plot_trouble_pairs(pairs, out / f"{prefix}_trouble.png", caption))
    return paths
