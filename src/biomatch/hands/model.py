"""A trained dorsal→palmar model on disk, loadable as an `Embedder` for any image.

The file stores the method config, the head weights (one head or an ensemble) and each
backbone's weights id; the backbones come from the registry, and a weights mismatch is
refused (features from other weights would silently give wrong matches). Features are made by
the same `feature_extractor` as in training, so taps, pooling and mirroring match exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from biomatch.config import MethodConfig
from biomatch.data.transforms import eval_transform
from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.hands.masking import background_transform
from biomatch.hands.methods import build_model, feature_extractor, model_input_dims
from biomatch.models.backbones import create_backbone
from biomatch.models.onnx_features import on_runtime

FORMAT = "biomatch-hand-model/2"
VIEWS = ("dorsal", "palmar")


def save_hand_model(path: Path, cfg: MethodConfig, head: nn.Module, weights_ids: Sequence[str]) -> Path:
    """Write the model atomically (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    in_dims = model_input_dims(head)
    blob = {"format": FORMAT, "config": cfg.model_dump(), "in_dim": sum(in_dims), "in_dims": in_dims,
            "head_state": head.state_dict(), "weights_ids": list(weights_ids)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


class HandEmbedder:
    """Embeds hand images as dorsal queries or palmar gallery items (palmar may be mirrored)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"hand model not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises many types for a non-model file
            raise InputError(f"{path} is not a biomatch hand model: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise InputError(f"{path} is not a biomatch hand model ({FORMAT})")
        self.cfg = cfg = MethodConfig(**blob["config"])
        if cfg.geometry_weight:
            raise InputError(f"{path}: geometry_weight is a score added per pair, not part of an embedding; "
                             "embed/export only models without it")
        names = [n.partition("@")[0] for n in cfg.backbones]
        self._variants = [n.partition("@")[2] for n in cfg.backbones]  # "", "aligned" or "parts"
        self._detector = None
        backbones = [create_backbone(n, pool=cfg.pool).to(device).eval() for n in names]
        found = [b.weights_id for b in backbones]
        if found != blob["weights_ids"]:
            raise StateError(f"{path} was trained on backbone weights {blob['weights_ids']}, "
                             f"but this installation provides {found}")
        # the runtime the evaluation features came from (ONNX Runtime on the CPU), so embeddings match them
        self.extractors = [on_runtime(feature_extractor(cfg, n, b)[0].eval(), device)
                           for n, b in zip(names, backbones)]
        # one block per backbone with `fusion: score`, else one block of all ("in_dims" is absent
        # from files written before score fusion existed)
        self.head: nn.Module = build_model(cfg, blob.get("in_dims", [blob["in_dim"]]))
        self.head.load_state_dict(blob["head_state"])
        self.head.eval()
        self.device, self.name = device, f"hands:{cfg.name}"
        self.dim = cfg.head_dims[-1] * cfg.n_heads * len(blob.get("in_dims", [0]))
        self._hash = hashlib.sha256(path.read_bytes()).hexdigest()
        self._transforms = [background_transform(cfg.background, tuple(cfg.background_color),
                                                 eval_transform(cfg.image_size or b.input_size, b.mean, b.std))
                            for b in backbones]

    @property
    def model_hash(self) -> str:
        return self._hash

    def _landmarks(self, images: Sequence[Image.Image]) -> list[np.ndarray | None]:
        """Hand landmarks per image (None where no hand is found: the un-aligned fallback)."""
        from biomatch.hands.landmarks import LandmarkDetector

        if self._detector is None:
            self._detector = LandmarkDetector()
        found = [self._detector(np.asarray(img.convert("RGB"))) for img in images]
        return [lm.points if lm.ok else None for lm in found]

    @torch.no_grad()
    def _features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Per backbone entry, the images it reads (the photo, its canonical crop or its parts
        mosaic), embedded and L2-normalized, concatenated."""
        from biomatch.hands.landmarks import align_hand
        from biomatch.hands.parts import parts_mosaic

        points = self._landmarks(images) if any(self._variants) else []
        render = {"aligned": align_hand, "parts": parts_mosaic}
        feats = []
        for extractor, tf, variant in zip(self.extractors, self._transforms, self._variants):
            batch = [render[variant](img, pts) for img, pts in zip(images, points)] if variant else images
            x = torch.stack([tf(img.convert("RGB")) for img in batch]).to(self.device)
            feats.append(F.normalize(extractor(x).float().cpu(), dim=1))
        return torch.cat(feats, 1)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image], view: str = "dorsal") -> np.ndarray:
        """(N, dim) float32 L2-normalized embeddings of images all of one `view`."""
        if view not in VIEWS:
            raise InputError(f"view must be one of {VIEWS}, got {view!r}")
        if not images:
            return np.zeros((0, self.dim), np.float32)
        mirror = self.cfg.mirror_gallery and view == "palmar"
        canon = [ImageOps.mirror(i) if mirror else i for i in images]
        z = self.head(self._features(canon))
        if self.cfg.tta:
            z = z + self.head(self._features([ImageOps.mirror(i) for i in canon]))
        return F.normalize(z, dim=1).numpy().astype(np.float32)
