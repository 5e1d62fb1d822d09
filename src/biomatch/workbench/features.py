"""Frozen features of identity images, computed once per (backbone, weights, preprocessing,
file list) and cached on disk: every loss/miner run then trains only a head in seconds.

Sources: registered torch backbones (EfficientNet-Lite0/2, …) through
`biomatch.embeddings.cached_features`, and the shipped MobileFaceNet face embedder (ONNX).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biomatch.data.datasets import Sample
from biomatch.errors import InputError
from biomatch.models.embedder import l2_normalize

FACE_SOURCE = "mobilefacenet"


def _face_features(samples: Sequence[Sample], cache: Path | None, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    from biomatch.data.images import load_image
    from biomatch.embeddings import cache_key, disk_cached, feature_cache_path
    from biomatch.faces.embedder import FaceEmbedder

    emb = FaceEmbedder.default(threads=1)
    # embedder_id covers the model hash and the whole preprocessing (detector order, template, crop)
    key = cache_key(FACE_SOURCE, emb.embedder_id, repr(emb.preprocess.to_dict()), samples)

    def compute() -> np.ndarray:
        chunks = [emb.embed([load_image(s.path) for s in samples[lo : lo + 64]])
                  for lo in tqdm(range(0, len(samples), 64), desc="mobilefacenet features",
                                 disable=None if progress else True, leave=False)]
        return np.concatenate(chunks).astype(np.float32)

    return disk_cached(feature_cache_path(FACE_SOURCE, key, cache), len(samples), compute)


def frozen_features(source: str, samples: Sequence[Sample], cache: Path | None = None,
                    progress: bool = True) -> np.ndarray:
    """(N, D) float32 L2-normalized features of `samples` from a frozen pretrained `source`."""
    if not samples:
        raise InputError("no samples to compute features for")
    if source == FACE_SOURCE:
        return l2_normalize(_face_features(list(samples), cache, progress))
    from biomatch.data.transforms import eval_transform
    from biomatch.embeddings import cached_features
    from biomatch.models.backbones import create_backbone

    bb = create_backbone(source, pretrained=True)
    if bb.random_init:
        raise InputError(f"{source} has no pretrained weights here; frozen features would be noise")
    tf = eval_transform(bb.input_size, bb.mean, bb.std)
    return l2_normalize(cached_features(bb, source, list(samples), tf, cache=cache, progress=progress))


class FeatureTable:
    """Features of a fixed sample list (cache hits need the same list), looked up by path."""

    def __init__(self, source: str, samples: Sequence[Sample], cache: Path | None = None,
                 progress: bool = True) -> None:
        self.source = source
        self.samples = sorted(samples, key=lambda s: str(s.path))
        self.values = frozen_features(source, self.samples, cache, progress)
        self._index = {s.path: i for i, s in enumerate(self.samples)}

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def __call__(self, samples: Sequence[Sample]) -> np.ndarray:
        try:
            return self.values[[self._index[s.path] for s in samples]]
        except KeyError as exc:
            raise InputError(f"no cached feature for {exc.args[0]}") from exc
