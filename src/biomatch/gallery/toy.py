"""A tiny deterministic embedder (downsampled grey pixels) for tests and demos without a model.

It is *not* a biometric: it matches near-identical images only. It exists so that the store,
search, service, CLI and HTTP API can be exercised end to end in milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from biomatch.models.embedder import l2_normalize


class PixelEmbedder:
    """Grey image → side×side pixels, mean-removed, L2-normalized."""

    def __init__(self, side: int = 16) -> None:
        self.side = side
        self.name = f"pixels{side}"
        self.dim = side * side

    @property
    def model_hash(self) -> str:
        return hashlib.sha256(f"biomatch-pixel-embedder-v1-{self.side}".encode()).hexdigest()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for img in images:
            grey = img.convert("L").resize((self.side, self.side), Image.BILINEAR)
            x = np.asarray(grey, dtype=np.float32).ravel()
            x = x - x.mean()
            if not np.any(x):  # a flat image has no pattern; keep it valid but distinct from noise
                x = np.ones_like(x)
            rows.append(x)
        return l2_normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)


def pattern_images(identity: int, n: int, seed: int = 0, noise: float = 12.0, size: int = 64) -> list[Image.Image]:
    """`n` noisy views of one synthetic "identity" (a fixed random blocky pattern).

    Views of one identity are close under PixelEmbedder, different identities are far, so
    tests know the right answer without a face model.
    """
    base_rng = np.random.default_rng([seed, identity, 0])
    base = base_rng.uniform(30, 225, size=(8, 8, 3))
    base = np.kron(base, np.ones((size // 8, size // 8, 1)))
    rng = np.random.default_rng([seed, identity, 1])
    images = []
    for _ in range(n):
        pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images
