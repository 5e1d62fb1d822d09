"""Per-epoch curves of several runs on one axis (loss, validation accuracy), so that the
evolution of methods can be compared at a glance. Agg backend; each call writes one PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from biomatch.errors import InputError  # noqa: E402
from biomatch.viz.figures import save_figure


def plot_curves(series: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "",
                ylabel: str = "", xlabel: str = "epoch", logy: bool = False,
                relative: bool = False, mark_best: str | None = None) -> Path:
    """One line per named series (x = 1-based epoch).

    `relative` divides each series by its first value: losses of different families
    (ArcFace ≈ 10, triplet ≈ 0.1) then share a scale. `mark_best="max"|"min"` dots each
    series' best epoch.
    """
    if not series:
        raise InputError("nothing to plot: no series given")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (name, values) in enumerate(series.items()):
        y = np.asarray(values, dtype=float)
        if y.ndim != 1 or y.size == 0:
            raise InputError(f"series {name!r} must be a non-empty 1-D sequence")
        if relative:
            y = y / (y[0] if y[0] != 0 else 1.0)
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, label=name, color=cmap(i % 10), lw=1.6, marker="o" if len(y) < 15 else None, ms=3)
        if mark_best in ("max", "min"):
            j = int(np.argmax(y) if mark_best == "max" else np.argmin(y))
            ax.plot(x[j], y[j], "o", color=cmap(i % 10), ms=7, mfc="none")
    if logy:
        ax.set_yscale("log")
        # plain numbers ("0.4", "1") instead of mixed "4x10^-1" / "10^0"; in-between (minor) ticks
        # are labelled only when the axis spans less than a decade, else they would overlap
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (÷ epoch 1)" if relative else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_per_class_accuracy(per_class: Mapping[str, float], path: str | Path, *, title: str = "") -> Path:
    """Horizontal bars, worst classes first: which identities the classifier confuses."""
    if not per_class:
        raise InputError("no per-class accuracies to plot")
    items = sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.17 * len(items) + 1)))
    ax.barh(range(len(items)), [v for _, v in items], color="tab:blue")
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=6)
    ax.invert_yaxis()  # worst class on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalized confusion matrix (rows = true class)."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        raise InputError(f"confusion matrix must be square with one row per class, got {m.shape}")
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.18 * n), min(13, 1.5 + 0.18 * n)))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fs = 6 if n > 30 else 8
    ax.set_xticks(range(n), classes, rotation=90, fontsize=fs)
    ax.set_yticks(range(n), classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)
