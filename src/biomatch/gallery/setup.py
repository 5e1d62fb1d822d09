"""Build a GalleryService from names (CLI and `biomatch serve`): store location, embedder, threshold.

Embedders by name: `face` (MobileFaceNet, finds the face in a photo first), `face-crop`
(images already framed like LFW), `face-int8`, `pixels` (toy, tests/demos), or any
registered embedder as `package.module:factory` (a callable returning an Embedder).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from biomatch.errors import InputError, NotFoundError
from biomatch.gallery.service import GalleryService, Policy, check_threshold
from biomatch.gallery.store import open_store
from biomatch.models.embedder import Embedder

EMBEDDER_NAMES = ("face", "face-crop", "face-int8", "pixels")


def default_store_path() -> Path:
    """$BIOMATCH_HOME/gallery.db, else ~/.biomatch/gallery.db."""
    home = os.environ.get("BIOMATCH_HOME")
    return (Path(home) if home else Path.home() / ".biomatch") / "gallery.db"


def load_embedder(name: str, threads: int = 1) -> Embedder:
    """An embedder by name; ``threads``: onnxruntime intra-op threads of the face models."""
    if name in ("face", "face-crop", "face-int8"):
        from biomatch.faces.embedder import FaceEmbedder

        return FaceEmbedder.default(int8=name == "face-int8", detect=name != "face-crop", threads=threads)
    if name == "pixels":
        from biomatch.gallery.toy import PixelEmbedder

        return PixelEmbedder()
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise NotFoundError(f"embedder {name!r} not found: {exc}") from exc
        embedder = factory()
        if not isinstance(embedder, Embedder):
            raise InputError(f"{name} did not return an Embedder (name, dim, model_hash, embed)")
        return embedder
    raise NotFoundError(f"unknown embedder {name!r}; choose {', '.join(EMBEDDER_NAMES)} or module:factory")


def load_threshold(embedder: Embedder, threshold: float | None, threshold_file: Path | None) -> float:
    """An explicit value wins; else the calibrated artifact (refused if made for another model)."""
    if threshold is not None:
        return threshold
    if hasattr(embedder, "load_threshold"):  # face embedders also check the preprocessing
        return float(embedder.load_threshold(threshold_file).threshold)
    if threshold_file is not None:
        from biomatch.calibration import load_threshold as load_artifact

        return float(load_artifact(threshold_file, model_sha256=embedder.model_hash).threshold)
    raise InputError(
        f"embedder {embedder.name!r} has no calibrated threshold: pass --threshold or --threshold-file"
    )


def build_service(
    store: str | Path | None = None,
    embedder: str = "face",
    threshold: float | None = None,
    threshold_file: Path | None = None,
    policy: Policy = "mean",
    search: str = "exact",
    rescore: str = "none",
    rescore_options: dict[str, object] | None = None,
    *,
    create: bool = False,
    micro_batch: bool = False,
    threads: int = 1,
    batch_max: int = 8,
    batch_workers: int = 2,
) -> GalleryService:
    """``create=False`` (verify, identify): a store that does not exist is an error, not a new file."""
    emb = load_embedder(embedder, threads=threads)
    value = check_threshold(load_threshold(emb, threshold, threshold_file))
    return GalleryService(
        emb, open_store(store or default_store_path(), create=create), value, policy=policy, search=search,
        rescore=rescore, rescore_options=rescore_options, micro_batch=micro_batch,
        batch_max=batch_max, batch_workers=batch_workers,
    )
