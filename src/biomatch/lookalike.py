""""Find my doppelgänger": the k identities of a gallery ("one folder per identity") nearest
to a query image, excluding the query's own identity when it is known, plus an image grid.

Embedders: "face" (the shipped MobileFaceNet; the query face is found and framed by the
Haar face detector, with a center crop when no face is found) or any registered pretrained
backbone such as "efficientnet_lite0" (center crop). "auto" picks "face" when faces are
detected in the gallery. Gallery embeddings are cached on disk (see workbench.features).
An identity's distance is that of its nearest gallery image (Euclidean between L2-normalized
embeddings, in [0, 2]; lower = more alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.data.datasets import identities, load_identity_folders
from biomatch.data.images import load_image
from biomatch.errors import InputError, NotFoundError
from biomatch.viz.figures import save_figure

FACE = "face"


@dataclass(frozen=True)
class Lookalike:
    identity: str
    distance: float
    path: Path  # the identity's gallery image nearest to the query


def center_crop(image: Image.Image, size: int | None = None) -> Image.Image:
    """Largest central square, optionally resized to size×size."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    out = image.crop((left, top, left + side, top + side))
    return out.resize((size, size), Image.BICUBIC) if size else out


def _has_face(image: Image.Image) -> bool:
    from biomatch.faces.detect import crop_face

    try:
        crop_face(image)
        return True
    except InputError:
        return False


class LookalikeFinder:
    """A gallery embedded once; `search` answers queries."""

    def __init__(self, gallery_dir: str | Path, embedder: str = "auto", cache: Path | None = None,
                 progress: bool = True) -> None:
        from biomatch.workbench.features import FACE_SOURCE, frozen_features

        self.gallery_dir = Path(gallery_dir)
        if not self.gallery_dir.is_dir():
            raise NotFoundError(f"gallery folder not found: {self.gallery_dir}")
        self.samples = load_identity_folders(self.gallery_dir)  # InputError when it holds no images
        self.identities = identities(self.samples)
        if embedder == "auto":
            probe = self.samples[:: max(1, len(self.samples) // 3)][:3]
            embedder = FACE if sum(_has_face(load_image(s.path)) for s in probe) * 2 > len(probe) else \
                "efficientnet_lite0"
        self.embedder = embedder
        source = FACE_SOURCE if embedder == FACE else embedder
        self.gallery_emb = frozen_features(source, self.samples, cache, progress)
        self.labels = np.array([self.identities.index(s.identity) for s in self.samples])
        self._model = None

    def prepare(self, image: Image.Image, name: str = "query") -> tuple[Image.Image, str]:
        """(the crop that is embedded, how it was made)."""
        if self.embedder == FACE:
            from biomatch.faces.detect import crop_face

            try:
                return crop_face(image, name), "face detector"
            except InputError:
                return center_crop(image, 112), "center crop (no face found)"
        return center_crop(image), "center crop"

    def embed(self, crop: Image.Image) -> np.ndarray:
        """(D,) L2-normalized embedding of a prepared crop, same pipeline as the gallery."""
        if self.embedder == FACE:
            from biomatch.faces.embedder import FaceEmbedder

            self._model = self._model or FaceEmbedder.default(threads=1)
            z = self._model.embed([crop])[0]
        else:
            import torch

            from biomatch.data.transforms import eval_transform
            from biomatch.models.backbones import create_backbone

            if self._model is None:
                bb = create_backbone(self.embedder, pretrained=True).eval()
                self._model = (bb, eval_transform(bb.input_size, bb.mean, bb.std))
            bb, tf = self._model
            with torch.no_grad():
                z = bb(tf(crop)[None])[0].numpy()
        return (z / max(float(np.linalg.norm(z)), 1e-12)).astype(np.float32)

    def own_identity(self, query_path: Path | None) -> str | None:
        """The identity of a query that lives in the gallery (gallery/<identity>/<file>)."""
        if query_path is None:
            return None
        q = Path(query_path).resolve()
        if q.parent.parent == self.gallery_dir.resolve() and q.parent.name in self.identities:
            return q.parent.name
        return None

    def search(self, query: str | Path | Image.Image, k: int = 5, exclude_identity: str | None = None,
               auto_exclude: bool = True) -> tuple[list[Lookalike], Image.Image, str]:
        """(the k nearest identities, the embedded crop, how it was cropped).

        The query's identity is excluded when given, or (auto_exclude) when the query file
        sits in the gallery; the query file itself is never returned.
        """
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        query_path = None if isinstance(query, Image.Image) else Path(query)
        image = query if isinstance(query, Image.Image) else load_image(query_path)
        if exclude_identity is not None and exclude_identity not in self.identities:
            raise InputError(f"unknown identity {exclude_identity!r}: not a folder of {self.gallery_dir}")
        excluded = exclude_identity or (self.own_identity(query_path) if auto_exclude else None)
        crop, how = self.prepare(image, str(query_path or "query"))
        d = np.linalg.norm(self.gallery_emb - self.embed(crop)[None], axis=1)
        if query_path is not None:
            d[[s.path.resolve() == query_path.resolve() for s in self.samples]] = np.inf
        best: dict[str, tuple[float, Path]] = {}
        for i in np.argsort(d, kind="stable"):
            s = self.samples[i]
            if not np.isfinite(d[i]) or s.identity == excluded or s.identity in best:
                continue
            best[s.identity] = (float(d[i]), s.path)
            if len(best) == k:
                break
        if len(best) < k:
            raise InputError(f"k={k} but the gallery has only {len(best)} candidate identities"
                             f"{' after excluding ' + excluded if excluded else ''}")
        return [Lookalike(i, dist, p) for i, (dist, p) in best.items()], crop, how


def lookalike_grid(query: Image.Image, matches: list[Lookalike], path: str | Path, title: str = "") -> Path:
    """One row: the query crop, then each look-alike's nearest image with identity and distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not matches:
        raise InputError("no look-alikes to draw")
    fig, axes = plt.subplots(1, len(matches) + 1, figsize=(2.3 * (len(matches) + 1), 2.9))
    axes[0].imshow(query)
    axes[0].set_title("query", fontsize=9, fontweight="bold")
    for ax, m in zip(axes[1:], matches):
        ax.imshow(load_image(m.path))
        ax.set_title(f"{m.identity.replace('_', ' ')}\nd = {m.distance:.3f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
