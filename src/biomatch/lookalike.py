""""Find my doppelgänger": the k identities of a gallery ("one folder per identity") most alike
to a query image, excluding the query's own identity when it is known, plus an image grid.

Embedders: "face" (the shipped MobileFaceNet; every gallery photo and the query go through the
same landmark detection + five-point alignment as unlock, ``FaceEmbedder``) or any registered
pretrained backbone such as "efficientnet_lite0" (center crop). "auto" picks "face" when faces
are found in most of a few gallery images. Gallery photos in which no face is found are left
out (and counted); a query without a face is an error unless ``detect=False`` (then the query
is taken to be an already framed face crop).

Scores are cosine similarities of L2-normalized embeddings (higher = more alike), the one score
vocabulary of biomatch. An identity's score aggregates its images' similarities
(``AGGREGATES``): "nearest" (its single most similar image) and "top3" (mean of its 3 most similar) favour
identities with many photos (on LFW62 the 5 people with most photos took 17 % of top-1
look-alikes, 8 % expected); "centroid" (cosine to the identity's mean embedding) does not (7 %)
at the same identification top-1 (0.998); so it is ``DEFAULT_AGGREGATE``
(``benchmarks/lookalike_aggregate.py``).
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
AGGREGATES = ("nearest", "top3", "centroid")
DEFAULT_AGGREGATE = "centroid"


@dataclass(frozen=True)
class Lookalike:
    identity: str
    similarity: float  # cosine similarity of the identity's aggregate, higher = more alike
    path: Path  # the identity's gallery image most similar to the query


def center_crop(image: Image.Image, size: int | None = None) -> Image.Image:
    """Largest central square, optionally resized to size×size."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    out = image.crop((left, top, left + side, top + side))
    return out.resize((size, size), Image.BICUBIC) if size else out


def _has_face(image: Image.Image) -> bool:
    from biomatch.faces.landmarks import detect_landmarks

    return detect_landmarks(image) is not None


def aggregate_scores(sims: np.ndarray, labels: np.ndarray, n_ids: int, how: str,
                     emb: np.ndarray | None = None, query: np.ndarray | None = None) -> np.ndarray:
    """(n_ids,) identity scores from per-image similarities ``sims`` (NaN/-inf rows ignored).

    "nearest": max; "top3": mean of the (up to) 3 largest; "centroid": cosine of the query to
    the L2-normalized mean of the identity's usable embeddings (needs ``emb`` and ``query``).
    Identities without a usable image get -inf.
    """
    if how not in AGGREGATES:
        raise InputError(f"unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}")
    out = np.full(n_ids, -np.inf)
    ok = np.isfinite(sims)
    for c in range(n_ids):
        idx = np.flatnonzero((labels == c) & ok)
        if not len(idx):
            continue
        s = sims[idx]
        if how == "nearest":
            out[c] = s.max()
        elif how == "top3":
            out[c] = np.sort(s)[-3:].mean()
        else:
            if emb is None or query is None:
                raise InputError("the centroid aggregate needs the embeddings and the query")
            m = emb[idx].mean(0)
            out[c] = float(m @ query) / max(float(np.linalg.norm(m)), 1e-12)
    return out


class LookalikeFinder:
    """A gallery embedded once; `search` answers queries."""

    def __init__(self, gallery_dir: str | Path, embedder: str = "auto", cache: Path | None = None,
                 progress: bool = True, aggregate: str = DEFAULT_AGGREGATE) -> None:
        self.gallery_dir = Path(gallery_dir)
        if not self.gallery_dir.is_dir():
            raise NotFoundError(f"gallery folder not found: {self.gallery_dir}")
        if aggregate not in AGGREGATES:
            raise InputError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
        self.aggregate = aggregate
        self.samples = load_identity_folders(self.gallery_dir)  # InputError when it holds no images
        self.identities = identities(self.samples)
        if embedder == "auto":
            probe = self.samples[:: max(1, len(self.samples) // 3)][:3]
            embedder = FACE if sum(_has_face(load_image(s.path)) for s in probe) * 2 > len(probe) else \
                "efficientnet_lite0"
        self.embedder = embedder
        self._model = None
        if embedder == FACE:
            self.gallery_emb = self._face_gallery(cache, progress)
        else:
            from biomatch.workbench.features import frozen_features

            self.gallery_emb = frozen_features(embedder, self.samples, cache, progress)
        self.usable = np.isfinite(self.gallery_emb).all(1)
        self.n_without_face = int((~self.usable).sum())
        if not self.usable.any():
            raise InputError(f"no face found in any image of {self.gallery_dir}")
        self.labels = np.array([self.identities.index(s.identity) for s in self.samples])

    def _face_model(self):
        from biomatch.faces.embedder import FaceEmbedder

        if self._model is None:
            self._model = FaceEmbedder.default(threads=1)
        return self._model

    def _face_gallery(self, cache: Path | None, progress: bool) -> np.ndarray:
        """Aligned-face embeddings of the gallery (NaN rows: no face found), cached on disk by the
        embedder id (model + preprocessing) and the file list."""
        from tqdm.auto import tqdm

        from biomatch.embeddings import cache_key, disk_cached, feature_cache_path
        from biomatch.faces.align import align
        from biomatch.faces.landmarks import detect_landmarks

        model = self._face_model()
        key = cache_key("lookalike-face", model.embedder_id, "", self.samples)

        def compute() -> np.ndarray:
            out = np.full((len(self.samples), model.dim), np.nan, np.float32)
            for lo in tqdm(range(0, len(self.samples), 64), desc="face gallery", disable=None if progress else True,
                           leave=False):
                crops, rows = [], []
                for i in range(lo, min(lo + 64, len(self.samples))):
                    im = load_image(self.samples[i].path)
                    det = detect_landmarks(im, model.detectors)
                    if det is not None:
                        crops.append(align(im, det.points, det.names))
                        rows.append(i)
                if crops:
                    out[rows] = model.embed_arrays(model.preprocess.batch(crops))
            return out

        return disk_cached(feature_cache_path("lookalike-face", key, cache), len(self.samples), compute)

    def prepare(self, image: Image.Image, name: str = "query", detect: bool = True) -> tuple[Image.Image, str]:
        """(the crop that is embedded, how it was made). InputError when a face query has no face."""
        if self.embedder == FACE:
            from biomatch.faces.align import align
            from biomatch.faces.embedder import frame_landmarks
            from biomatch.faces.landmarks import detect_landmarks

            if not detect:
                det = frame_landmarks(image)
                return align(image, det.points, det.names), "no detection (taken as a face crop)"
            det = detect_landmarks(image, self._face_model().detectors)
            if det is None:
                raise InputError(f"no face found in {name}; pass --no-detect to use it as a face crop anyway")
            return align(image, det.points, det.names), f"face found by {det.detector}, aligned"
        return center_crop(image), "center crop"

    def embed(self, crop: Image.Image) -> np.ndarray:
        """(D,) L2-normalized embedding of a prepared crop, same pipeline as the gallery."""
        if self.embedder == FACE:
            model = self._face_model()
            z = model.embed_arrays(model.preprocess.batch([crop]))[0]
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
               auto_exclude: bool = True, detect: bool = True) -> tuple[list[Lookalike], Image.Image, str]:
        """(the k most alike identities, the embedded crop, how it was made).

        The query's identity is excluded when given, or (auto_exclude) when the query file
        sits in the gallery; the query file itself is never used.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        query_path = None if isinstance(query, Image.Image) else Path(query)
        image = query if isinstance(query, Image.Image) else load_image(query_path)
        if exclude_identity is not None and exclude_identity not in self.identities:
            raise InputError(f"unknown identity {exclude_identity!r}: not a folder of {self.gallery_dir}")
        excluded = exclude_identity or (self.own_identity(query_path) if auto_exclude else None)
        crop, how = self.prepare(image, str(query_path or "query"), detect=detect)
        q = self.embed(crop)
        sims = np.where(self.usable, np.nan_to_num(self.gallery_emb) @ q, -np.inf).astype(np.float64)
        if query_path is not None:
            sims[[s.path.resolve() == query_path.resolve() for s in self.samples]] = -np.inf
        scores = aggregate_scores(sims, self.labels, len(self.identities), self.aggregate,
                                  np.nan_to_num(self.gallery_emb), q)
        if excluded is not None:
            scores[self.identities.index(excluded)] = -np.inf
        order = [c for c in np.argsort(-scores, kind="stable") if np.isfinite(scores[c])]
        if len(order) < k:
            raise InputError(f"k={k} but the gallery has only {len(order)} candidate identities"
                             f"{' after excluding ' + excluded if excluded else ''}")
        out = []
        for c in order[:k]:
            idx = np.flatnonzero(self.labels == c)
            best = idx[np.argmax(sims[idx])]
            out.append(Lookalike(self.identities[c], float(scores[c]), self.samples[best].path))
        return out, crop, how


def lookalike_grid(query: Image.Image, matches: list[Lookalike], path: str | Path, title: str = "") -> Path:
    """One row: the query crop, then each look-alike's most similar image with identity and similarity."""
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
        ax.set_title(f"{m.identity.replace('_', ' ')}\ncosine {m.similarity:.3f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
