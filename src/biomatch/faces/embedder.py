"""The face embedder: the vendored MobileFaceNet (float or static int8) through onnxruntime.

Inputs are face crops framed like the lfw_pairs images (central 150 px of a 250 px
deep-funneled LFW image, any size); with ``detect=True`` uncropped photos go through the
Haar detector first (``biomatch.faces.detect.crop_face``) and a photo without a face
raises ``InputError("no face found in ...")``.

The model was trained on tight 112x112 aligned faces; our crops are looser. Cropping the
central 100 px of the 112 px frame shifted up by 6 px (box ``FACE_CROP``) before resizing
raised LFW 10-fold accuracy from 0.948 to 0.975 on folds 1-2 (the grid was searched on those
two folds only; BENCHMARKS.md reports all ten).

Two identities: ``model_hash`` is the SHA-256 of the ONNX file (what a calibrated threshold
is bound to, together with its ``preprocess`` check); ``embedder_id`` hashes the model hash
*and* the input pipeline (detect-and-frame or pre-cropped, plus ``preprocess``), which is what
template stores key on, so templates of ``face`` and ``face-crop`` never mix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from biomatch.errors import InputError
from biomatch.export import IMAGENET_MEAN, IMAGENET_STD, OnnxEmbedder, Preprocess

FACE_CROP = (6 / 112, 0 / 112, 106 / 112, 100 / 112)
FACE_PREPROCESS = Preprocess(size=(112, 112), mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_tta=True, crop=FACE_CROP)

FLOAT_MODEL = "MobileFaceNet.onnx"
INT8_MODEL = "MobileFaceNet.int8.onnx"


def assets_dir() -> Path:
    """Folder of the vendored MobileFaceNet files inside the installed package."""
    return Path(str(resources.files("biomatch") / "assets" / "mobilefacenet"))


@dataclass
class FaceEmbedder(OnnxEmbedder):
    """MobileFaceNet face embeddings (128-d, L2-normalized, flip-averaged).

    ``detect=True``: ``embed`` first finds and frames the largest face in each photo.
    """

    detect: bool = False

    @classmethod
    def default(
        cls,
        model_path: str | Path | None = None,
        *,
        int8: bool = False,
        detect: bool = False,
        threads: int = 1,
    ) -> FaceEmbedder:
        """The vendored model (float, or the static-int8 copy), or a local ONNX file."""
        path = Path(model_path) if model_path is not None else assets_dir() / (INT8_MODEL if int8 else FLOAT_MODEL)
        name = "mobilefacenet-int8" if (model_path is None and int8) else "mobilefacenet"
        return cls(path, name=name, preprocess=FACE_PREPROCESS, threads=threads, batch_size=8, detect=detect)

    def embed(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> np.ndarray:
        """(N, 128) float32 L2-normalized embeddings; ``names`` label images in errors."""
        if self.detect:
            from biomatch.faces.detect import crop_face

            labels = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
            if len(labels) != len(images):
                raise InputError(f"{len(images)} images but {len(labels)} names")
            images = [crop_face(im, name) for im, name in zip(images, labels, strict=True)]
        return super().embed(images)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Everything between a photo and the model input that changes the embedding."""
        return _preprocessing(self.detect, self.preprocess.to_dict())

    @property
    def embedder_id(self) -> str:
        """SHA-256 of the model hash + ``preprocessing``: the key templates are stored under."""
        return embedder_id(self.model_hash, self.preprocessing)

    def sibling_ids(self) -> dict[str, str]:
        """Keys of templates made by this same model file with other inputs, for error messages.

        The other detect setting, and the bare model hash (templates stored before the
        preprocessing was part of the key: whether they came from detected or pre-cropped faces
        is unknown).
        """
        other = not self.detect
        return {
            embedder_id(self.model_hash, _preprocessing(other, self.preprocess.to_dict())):
                f"the same model on {_input_kind(other)}",
            self.model_hash: "the same model before the preprocessing was recorded (detected or pre-cropped: unknown)",
        }

    @property
    def threshold_path(self) -> Path:
        """Where this model's calibrated unlock threshold lives (beside the model)."""
        from biomatch.calibration import threshold_path

        return threshold_path(self.model_path)

    def load_threshold(self, path: str | Path | None = None):  # -> biomatch.calibration.Threshold
        """The calibrated threshold for this exact model file and preprocessing.

        Raises StateError when it was calibrated for another model (hash) or preprocessing.
        """
        from biomatch.calibration import load_threshold

        return load_threshold(
            path if path is not None else self.threshold_path,
            model_sha256=self.model_hash,
            preprocess=self.preprocess.to_dict(),
        )


def _input_kind(detect: bool) -> str:
    return "photos (Haar face detection + LFW framing)" if detect else "pre-cropped LFW-framed faces"


def _preprocessing(detect: bool, preprocess: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"input": "detect" if detect else "crop", "preprocess": preprocess}
    if detect:
        from biomatch.faces import detect as d

        out["detector"] = {
            "cascade": d.CASCADE_FILE, "scale_factor": d.SCALE_FACTOR, "min_face": d.MIN_FACE, "max_side": d.MAX_DETECT_SIDE,
            "frame_per_box": d.FRAME_PER_BOX, "box_center_in_frame": list(d.BOX_CENTER_IN_FRAME),
        }
    return out


def embedder_id(model_sha256: str, preprocessing: dict[str, Any]) -> str:
    """SHA-256 over the model file hash and a canonical JSON of the preprocessing."""
    blob = json.dumps({"model_sha256": model_sha256, "preprocessing": preprocessing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
