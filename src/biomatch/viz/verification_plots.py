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



def _det_candidates() -> tuple[float, ...]:
    """DET tick candidates, most important first (50 %, decades, then 5s, then 2s, each mirrored
    about 50 %), so a crowded axis keeps the decades."""
    low = [[10.0**k for k in range(-1, -7, -1)], [5 * 10.0**k for k in range(-2, -7, -1)],
           [2 * 10.0**k for k in range(-1, -7, -1)], [0.3]]
    out = [0.5]
    for group in low:
        out += [v for t in group for v in (float(f"{t:.1e}"), round(1 - t, 8))]
    return tuple(out)


_DET_TICKS = _det_candidates()
# several curves on one axis stay visible when they coincide (e.g. plain and RSM both perfect)
_LINESTYLES = ("-", "--", ":", "-.")


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
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc(curves: Curves, path: Path, title: str = "") -> Path:
    """TAR against FAR (log FAR axis) for each named score set."""
    fig, ax = plt.subplots(figsize=(5, 4))
    floor = 1.0
    for i, (name, (scores, labels)) in enumerate(curves.items()):
        roc = roc_curve(scores, labels)
        floor = min(floor, 1.0 / roc.n_impostor)
        ax.step(np.maximum(roc.far, 1.0 / roc.n_impostor / 2), roc.tar, where="post",
                ls=_LINESTYLES[i % len(_LINESTYLES)], lw=1.5,
                label=f"{name} (EER {eer(scores, labels):.2%})")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_xlabel("FAR (0 drawn at 1/(2 n_impostor))")
    ax.set_ylabel("TAR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "ROC")
    return save_figure(fig, path)


def _rate_label(rate: float) -> str:
    """A DET tick as a percentage without trailing zeros: 0.001 -> '0.1%', 0.5 -> '50%'."""
    return f"{rate * 100:.6g}%"


def det_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) operating points with both rates strictly inside (0, 1): the only ones a
    normal-deviate axis can show (a rate of 0 or 1 lies at -/+ infinity)."""
    roc = roc_curve(scores, labels)
    far, frr = np.asarray(roc.far, float), np.asarray(roc.frr, float)
    keep = (far > 0) & (far < 1) & (frr > 0) & (frr < 1)
    return far[keep], frr[keep]


def det_ticks(lo: float, hi: float, span_in: float, label_in: float = 0.55) -> list[float]:
    """Rates to label on a probit axis running from rate ``lo`` to ``hi`` over ``span_in`` inches:
    candidates in priority order, each kept only if at least ``label_in`` inches from the others,
    so labels never overlap."""
    a, b = norm.ppf(lo), norm.ppf(hi)
    min_gap = (b - a) * label_in / span_in
    chosen: list[float] = []
    for t in _DET_TICKS:
        z = norm.ppf(t)
        if a - 1e-9 <= z <= b + 1e-9 and all(abs(z - norm.ppf(c)) >= min_gap for c in chosen):
            chosen.append(t)
    return sorted(chosen)


def _det_limits(rates: np.ndarray) -> tuple[float, float]:
    """Axis range (as rates) covering the finite data, padded by 0.15 sigma, widened to include
    at least two tick candidates so the axis is always readable."""
    z = norm.ppf(rates)
    a, b = float(z.min()) - 0.15, float(z.max()) + 0.15
    cands = np.sort(norm.ppf(np.array(_DET_TICKS)))
    while ((cands >= a) & (cands <= b)).sum() < 2:
        below, above = cands[cands < a], cands[cands > b]
        # widen towards the nearer missing candidate (ties: downwards, where low error rates live)
        if len(below) and (not len(above) or a - below[-1] <= above[0] - b):
            a = float(below[-1])
        elif len(above):
            b = float(above[0])
        else:
            break
    return float(norm.cdf(a)), float(norm.cdf(b))


def plot_det(curves: Curves, path: Path, title: str = "") -> Path:
    """DET: FRR against FAR on normal-deviate (probit) axes.

    Only operating points with both rates in (0, 1) are drawn (0 and 1 lie at infinity); the axes
    span that finite range. A score set with none (e.g. perfect separation) is named in the legend,
    and if no set has any the figure is a message panel instead of empty axes.
    """
    fig, ax = plt.subplots(figsize=(5, 4.2))
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    empty: list[str] = []
    for name, (scores, labels) in curves.items():
        far, frr = det_points(scores, labels)
        if far.size:
            drawn[name] = (far, frr)
        else:
            empty.append(name)
    if not drawn:
        ax.axis("off")
        ax.text(0.5, 0.5, "No DET curve to draw: every threshold has FAR = 0 or FRR = 0\n"
                "(the genuine and impostor scores do not overlap,\nor one side is empty). See the ROC.",
                ha="center", va="center", fontsize=9, wrap=True, transform=ax.transAxes)
        ax.set_title(title or "DET")
        return save_figure(fig, path)
    far_all = np.concatenate([f for f, _ in drawn.values()])
    frr_all = np.concatenate([r for _, r in drawn.values()])
    x_lo, x_hi = _det_limits(far_all)
    y_lo, y_hi = _det_limits(frr_all)
    for i, (name, (far, frr)) in enumerate(drawn.items()):
        ax.plot(norm.ppf(far), norm.ppf(frr), ls=_LINESTYLES[i % len(_LINESTYLES)], lw=1.5,
                label=f"{name} (EER {eer(*curves[name]):.2%})")
    for name in empty:
        ax.plot([], [], ls="none", label=f"{name}: no point with FAR > 0 and FRR > 0")
    lo, hi = max(x_lo, y_lo), min(x_hi, y_hi)
    if lo < hi:  # FAR = FRR diagonal, where it crosses the axes: the EER is read on it
        ax.plot(norm.ppf([lo, hi]), norm.ppf([lo, hi]), color="gray", lw=0.6, ls="--", label="FAR = FRR")
    ax.set_xlim(norm.ppf(x_lo), norm.ppf(x_hi))
    ax.set_ylim(norm.ppf(y_lo), norm.ppf(y_hi))
    fig.tight_layout()
    box = ax.get_window_extent().transformed(fig.dpi_scale_trans.inverted())
    xt = det_ticks(x_lo, x_hi, box.width)
    yt = det_ticks(y_lo, y_hi, box.height, label_in=0.3)
    ax.set_xticks(norm.ppf(xt), [_rate_label(t) for t in xt])
    ax.set_yticks(norm.ppf(yt), [_rate_label(t) for t in yt])
    ax.minorticks_off()
    ax.set_xlabel("FAR (false accept rate, normal-deviate scale)")
    ax.set_ylabel("FRR (false reject rate)")
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
    """Image pairs wrongly decided by the plain score, annotated with plain and RSM scores; with
    no such pair, a message panel (no empty axes)."""
    if not pairs:
        fig, ax = plt.subplots(figsize=(5.0, 1.8))
        ax.axis("off")
        ax.text(0.5, 0.5, "No pair is wrongly decided at the plain score's EER threshold:\n"
                "nothing for RSM to fix.", ha="center", va="center", fontsize=9, transform=ax.transAxes)
        if title:
            ax.set_title(title, fontsize=9)
        return save_figure(fig, path)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(4.2, 2.2 * len(pairs)), squeeze=False)
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
