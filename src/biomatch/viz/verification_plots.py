"""Verification plots: score histograms, ROC, DET (probit axes) and "trouble comparisons".

All functions take similarity ``scores`` and 0/1 ``labels`` (1 = genuine), write one PNG with
the Agg backend and return its path, so they work headless in the CLI and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from biomatch.metrics.verification import eer, roc_curve, validate_pairs  # noqa: E402
from biomatch.viz.figures import save_figure

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Named (scores, labels) sets, e.g. {"plain": (s, y), "RSM": (s_rsm, y)}."""




def plot_histograms(curves: Curves, path: Path, title: str = "") -> Path:
    """Genuine vs impostor score histograms, one panel per named score set (before / after RSM)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, (scores, labels)) in zip(axes[0], curves.items()):
        s, gen = validate_pairs(scores, labels)
        bins = np.linspace(s.min(), s.max(), 50)
        ax.hist(s[~gen], bins=bins, density=True, alpha=0.6, color="tab:red", label=f"impostor (n={int((~gen).sum())})")
        ax.hist(s[gen], bins=bins, density=True, alpha=0.6, color="tab:green", label=f"genuine (n={int(gen.sum())})")
        ax.set_title(f"{name}: EER {eer(s, gen.astype(np.int8)):.2%}")
        ax.set_xlabel("score (higher = same)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc(curves: Curves, path: Path, title: str = "") -> Path:
    """TAR against FAR (log FAR axis) for each named score set."""
    fig, ax = plt.subplots(figsize=(5, 4))
    floor = 1.0
    for name, (scores, labels) in curves.items():
        roc = roc_curve(scores, labels)
        floor = min(floor, 1.0 / roc.n_impostor)
        ax.step(np.maximum(roc.far, 1.0 / roc.n_impostor / 2), roc.tar, where="post",
                label=f"{name} (EER {eer(scores, labels):.2%})")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_xlabel("FAR (0 drawn at 1/(2 n_impostor))")
    ax.set_ylabel("TAR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "ROC")
    return save_figure(fig, path)


def plot_det(curves: Curves, path: Path, title: str = "") -> Path:
    """DET: FRR against FAR on normal-deviate axes; rates of 0 are clipped to 1/(2n)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])
    for name, (scores, labels) in curves.items():
        roc = roc_curve(scores, labels)
        far = np.clip(roc.far, 0.5 / roc.n_impostor, 1 - 1e-9)
        frr = np.clip(roc.frr, 0.5 / roc.n_genuine, 1 - 1e-9)
        ax.plot(norm.ppf(far), norm.ppf(frr), label=name)
    ax.plot(norm.ppf(ticks), norm.ppf(ticks), color="gray", lw=0.5, ls="--")
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlabel("FAR")
    ax.set_ylabel("FRR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "DET")
    return save_figure(fig, path)


@dataclass(frozen=True)
class TroublePair:
    """A pair the plain score gets wrong at its EER threshold, and how RSM treats it."""

    image_a: np.ndarray
    image_b: np.ndarray
    genuine: bool
    plain_score: float
    rsm_score: float
    rsm_correct: bool
    caption: str = ""


def trouble_indices(plain: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of pairs misclassified at ``threshold`` (accept ``score >= threshold``), worst first."""
    s, gen = validate_pairs(plain, labels, need_both=False)
    wrong = np.flatnonzero((s >= threshold) != gen)
    margin = np.abs(s[wrong] - threshold)
    return wrong[np.argsort(-margin, kind="stable")]


def plot_trouble_pairs(pairs: Sequence[TroublePair], path: Path, title: str = "") -> Path:
    """Image pairs wrongly decided by the plain score, annotated with plain and RSM scores."""
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(4.2, 2.2 * n), squeeze=False)
    if not pairs:
        axes[0, 0].text(0.5, 0.5, "no errors at the EER threshold", ha="center")
    for row, p in zip(axes, pairs):
        for ax, img in zip(row, (p.image_a, p.image_b)):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        verdict = "fixed by RSM" if p.rsm_correct else "still wrong"
        row[0].set_title(f"{'genuine' if p.genuine else 'impostor'} {p.caption}", fontsize=7, loc="left")
        row[1].set_title(f"plain {p.plain_score:.3f} | RSM {p.rsm_score:.3f}: {verdict}", fontsize=7, loc="right")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
