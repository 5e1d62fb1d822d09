"""Pictures of retrieval results: CMC curves, training curves and query → top-k strips."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageOps

from biomatch.data.datasets import Sample
from biomatch.data.images import load_image
from biomatch.metrics.retrieval import cmc_curve
from biomatch.viz.figures import save_figure


def plot_cmc(first_ranks: Mapping[str, np.ndarray], path: Path, max_rank: int = 20,
             chance_gallery: int | None = None) -> Path:
    """One CMC curve per method (rank 1..max_rank), with the chance line if a gallery size is given."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ranks = np.arange(1, max_rank + 1)
    for name, fr in first_ranks.items():
        ax.plot(ranks, cmc_curve(fr, max_rank), marker="o", ms=3, label=name)
    if chance_gallery:
        ax.plot(ranks, np.minimum(ranks / chance_gallery, 1), "k--", lw=1, label="random (1 image/subject)")
    ax.set(xlabel="rank k", ylabel="Recall@k (CMC)", ylim=(0, 1.01), title="Dorsal query → palmar gallery",
           xlim=(0.5, max_rank + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # ranks are whole numbers
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_training_curves(histories: Mapping[str, object], path: Path, monitor: str = "recall@1") -> Path:
    """Training loss (left) and validation `monitor` (right) per epoch for each method; only the
    loss panel when no method validated (e.g. heads trained on train + val for a fixed budget)."""
    any_val = any(getattr(h, "val", []) for h in histories.values())
    if any_val:
        fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(10, 4))
    else:
        fig, ax_l = plt.subplots(1, 1, figsize=(5.5, 4))
        ax_v = None
    for name, h in histories.items():
        loss = getattr(h, "loss", [])
        val = [v.get(monitor, np.nan) for v in getattr(h, "val", [])]
        marker = "o" if max(len(loss), len(val)) < 15 else None  # a few epochs: show the points
        if loss:
            ax_l.plot(np.arange(1, len(loss) + 1), np.asarray(loss) / max(loss[0], 1e-12), label=name,
                      marker=marker, ms=3)
        if val and ax_v is not None:
            ax_v.plot(np.arange(1, len(val) + 1), val, label=name, marker=marker, ms=3)
    ax_l.set(xlabel="epoch", ylabel="training loss (÷ first epoch)",
             title="Loss" if any_val else "Loss (no validation: trained on train + val)")
    if ax_v is not None:
        ax_v.set(xlabel="epoch", ylabel=f"validation {monitor}", title="Validation", ylim=(0, 1))
    for ax in (a for a in (ax_l, ax_v) if a is not None):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def retrieval_strip(
    queries: Sequence[Sample], gallery: Sequence[Sample], query_emb: np.ndarray, gallery_emb: np.ndarray,
    path: Path, n_queries: int = 6, k: int = 5, tile: int = 112, seed: int = 0,
    score_matrix: np.ndarray | None = None, score_name: str = "cosine similarity",
) -> Path:
    """Rows of [query | top-k gallery images]; green frame = same subject, red = wrong; each tile
    is labelled with its score s. Scores are ``score_matrix`` (queries x gallery) when the method
    has its own scorer, else the embeddings' dot products (cosine for unit vectors)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False)
    scores = (np.asarray(score_matrix)[picks] if score_matrix is not None else query_emb[picks] @ gallery_emb.T)
    pad, label_h, head = 6, 16, 18
    canvas = Image.new("RGB", ((k + 1) * (tile + pad) + pad * 3, head + len(picks) * (tile + label_h + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 3), f"query | top-{k} gallery images by score s ({score_name}, higher = more alike); "
                        "green = same subject", fill="black")
    for row, (qi, s) in enumerate(zip(picks, scores)):
        y = head + pad + row * (tile + label_h + pad)
        q = queries[qi]
        canvas.paste(load_image(q.path).resize((tile, tile)), (pad, y))
        draw.text((pad, y + tile + 2), f"query {q.identity} ({q.side})", fill="black")
        order = np.argsort(-s, kind="stable")[:k]
        for col, gi in enumerate(order, start=1):
            x = pad * 3 + col * (tile + pad)
            g = gallery[gi]
            ok = g.identity == q.identity
            framed = ImageOps.expand(load_image(g.path).resize((tile - 8, tile - 8)), border=4,
                                     fill=(0, 160, 0) if ok else (200, 0, 0))
            canvas.paste(framed, (x, y))
            draw.text((x, y + tile + 2), f"#{col} s={s[gi]:.2f}{' same' if ok else ''}", fill="black")
    canvas.save(path)
    return path
