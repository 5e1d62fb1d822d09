"""The one interface every embedder offers to matching, galleries and the HTTP API.

An embedder turns images into float32, L2-normalized rows. Its `model_hash` is the
SHA-256 of the weights file(s) it runs, so stored templates and calibrated thresholds can
be bound to the exact model that made them. An embedder whose preprocessing can vary (a face
embedder with or without detection) may also expose `embedder_id`, a hash of model and
preprocessing: template stores key on it when present, so templates made with different
preprocessing never get compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps images to unit-length embedding vectors."""

    name: str
    dim: int

    @property
    def model_hash(self) -> str:
        """SHA-256 hex digest identifying the weights."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an (N, dim) float32 array of L2-normalized embeddings."""
        ...


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalization in float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
