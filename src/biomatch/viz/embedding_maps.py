"""Embedding maps: train and test points side by side, coloured by class. 2-D embeddings are
drawn as they are; higher dimensions through PCA or t-SNE (scikit-learn, seeded). The
projection is fitted on train and test together so both panels share one coordinate frame.
Optional TensorBoard projector export (tensors.tsv + metadata.tsv + projector_config.pbtxt).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from biomatch.errors import InputError  # noqa: E402
from biomatch.viz.figures import save_figure

METHODS = ("direct", "pca", "tsne")


def project_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates: the embedding itself (2-D only), PCA, or t-SNE."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise InputError(f"need a 2-D array of at least 3 embeddings, got shape {x.shape}")
    if method == "direct":
        if x.shape[1] != 2:
            raise InputError(f"'direct' maps need 2-D embeddings, got dimension {x.shape[1]}; use pca or tsne")
        return x
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x) if x.shape[1] > 2 else x
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
    raise InputError(f"unknown projection {method!r}; choose from {', '.join(METHODS)}")


def _class_colors(n: int) -> np.ndarray:
    base = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    if n <= 20:
        return base[:n]
    return plt.get_cmap("nipy_spectral")(np.linspace(0.02, 0.98, n))


def plot_embedding_map(train: np.ndarray, train_labels: Sequence[int], test: np.ndarray,
                       test_labels: Sequence[int], path: str | Path, *, method: str = "pca",
                       seed: int = 0, title: str = "", class_names: Sequence[str] | None = None) -> Path:
    """Two panels (train | test) of one projection; markers cycle so neighbouring colours
    of many classes stay distinguishable."""
    train, test = np.asarray(train), np.asarray(test)
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise InputError(f"train and test embeddings must be 2-D with equal dimension, got {train.shape}, {test.shape}")
    if len(ytr) != len(train) or len(yte) != len(test):
        raise InputError("one label per embedding is needed")
    xy = project_2d(np.concatenate([train, test]), method, seed)
    xy_tr, xy_te = xy[: len(train)], xy[len(train) :]
    classes = np.unique(np.concatenate([ytr, yte]))
    colors = _class_colors(len(classes))
    markers = "os^Dv<>p"
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), sharex=True, sharey=True)
    for ax, pts, lab, name in ((axes[0], xy_tr, ytr, "train"), (axes[1], xy_te, yte, "test")):
        for ci, c in enumerate(classes):
            sel = lab == c
            if sel.any():
                ax.scatter(pts[sel, 0], pts[sel, 1], s=9, color=colors[ci], marker=markers[ci % len(markers)],
                           alpha=0.8, lw=0, label=str(class_names[c]) if class_names is not None and ci < 12 else None)
        ax.set_title(f"{name} ({len(pts)} points, {len(np.unique(lab))} classes)")
        if method == "direct":
            ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.2)
    if class_names is not None and len(classes) <= 12:
        axes[1].legend(fontsize=7, markerscale=2, loc="best")
    label = {"direct": "2-D embedding", "pca": "PCA", "tsne": "t-SNE"}[method]
    fig.suptitle(f"{title} — {label}" if title else label)
    return save_figure(fig, path)


def export_projector(emb: np.ndarray, labels: Sequence[str], out_dir: str | Path,
                     extra_columns: dict[str, Sequence[str]] | None = None, name: str = "embedding") -> Path:
    """Write what TensorBoard's projector reads (no tensorboard dependency): tensors.tsv,
    metadata.tsv (one row per point; a header only with several columns) and projector_config.pbtxt. Returns the folder."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise InputError(f"need (N, D) embeddings and N labels, got {emb.shape} and {len(labels)}")
    cols = {"label": [str(v) for v in labels]}
    for key, values in (extra_columns or {}).items():
        if len(values) != len(emb):
            raise InputError(f"column {key!r} has {len(values)} values for {len(emb)} points")
        cols[key] = [str(v) for v in values]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "tensors.tsv", emb, delimiter="\t", fmt="%.6f")
    clean = {k: [v.replace("\t", " ").replace("\n", " ") for v in vs] for k, vs in cols.items()}
    rows = ["\t".join(row) for row in zip(*clean.values())]
    lines = rows if len(clean) == 1 else ["\t".join(clean)] + rows  # one column: no header (TensorBoard rule)
    (out / "metadata.tsv").write_text("\n".join(lines) + "\n")
    (out / "projector_config.pbtxt").write_text(
        f'embeddings {{\n  tensor_name: "{name}"\n  tensor_path: "tensors.tsv"\n  metadata_path: "metadata.tsv"\n}}\n')
    return out
