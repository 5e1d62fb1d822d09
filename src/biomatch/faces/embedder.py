"""The face embedder: the vendored MobileFaceNet (float or static int8) through onnxruntime.

Two input pipelines, one class:

- ``detect=True`` (the default; enrol/verify/identify, calibration, the LFW benchmark, the
  look-alikes and the web page all use it): each photo goes through the landmark detectors of
  ``biomatch.faces.landmarks`` (Face Mesh, then BlazeFace, full-range BlazeFace, Haar) and is warped
  onto the 112x112 ArcFace five-point template (``biomatch.faces.align``), which is how
  MobileFaceNet was trained. A photo where no detector finds a face raises
  ``InputError("no face found in ...")`` (or, with ``on_missing="frame"``, for benchmarks that
  must score every pair, is treated as an LFW-framed crop and counted as a failure to acquire).
- ``detect=False`` (``face-crop``): the input is taken to be an LFW-framed crop (central 150 of
  a 250 px deep-funneled image), tight-cropped by ``FACE_CROP``. A guard
  (``biomatch.faces.guard``) refuses inputs that are clearly not such crops.

Both run ONE onnxruntime forward per ``embed`` call (the images and their mirrors in one batch),
which the HTTP service relies on to micro-batch concurrent requests.

Two identities: ``model_hash`` is the SHA-256 of the ONNX file; ``embedder_id`` hashes the
model hash *and* ``preprocessing`` (pipeline, detectors, template, normalization): templates
are stored under it and calibrated thresholds are bound to both, so an artifact made for
another pipeline is refused. Each pipeline has its own threshold file beside the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from biomatch.errors import InputError
from biomatch.export import IMAGENET_MEAN, IMAGENET_STD, MIN_IMAGE_SIDE, OnnxEmbedder, Preprocess
from biomatch.faces.align import align
from biomatch.faces.landmarks import DEFAULT_ORDER, DETECTORS, Detection, detect_landmarks
from biomatch.models.embedder import l2_normalize

# Median positions of the five points in an LFW-framed crop, as fractions of its size
# (mesh landmarks on 300 LFW images of folds 1-2).
LFW_FRAME_POINTS = {
    "eye_left": (0.358, 0.416), "eye_right": (0.637, 0.410), "nose": (0.504, 0.599),
    "mouth_left": (0.390, 0.718), "mouth_right": (0.622, 0.714),
}

# face-crop pipeline: the central 100 px of the 112 px LFW frame shifted up by 6 px, chosen on
# LFW folds 1-2 (0.948 -> 0.975 before alignment existed).
FACE_CROP = (6 / 112, 0 / 112, 106 / 112, 100 / 112)
FACE_PREPROCESS = Preprocess(size=(112, 112), mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_tta=True, crop=FACE_CROP)
ALIGNED_PREPROCESS = Preprocess(size=(112, 112), mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_tta=True, crop=None)
PIPELINE_VERSION = 2  # bump when detection/alignment changes in a way the constants below miss

FLOAT_MODEL = "MobileFaceNet.onnx"
INT8_MODEL = "MobileFaceNet.int8.onnx"


def assets_dir() -> Path:
    """Folder of the vendored MobileFaceNet files inside the installed package."""
    return Path(str(resources.files("biomatch") / "assets" / "mobilefacenet"))


@dataclass
class FaceEmbedder(OnnxEmbedder):
    """MobileFaceNet face embeddings (128-d, L2-normalized, flip-averaged).

    ``detect=True``: ``embed`` finds the largest face in each photo and aligns it first.
    ``detectors``: the fallback order of ``biomatch.faces.landmarks`` (first that finds wins).
    ``on_missing``: "error" (InputError naming the image) or "frame" (treat as an LFW crop).
    ``guard``: for ``detect=False``, refuse inputs that are clearly not face crops.
    After each ``prepare``/``embed`` call ``last_detectors`` names who found each face
    ("none" = failure to acquire).
    """

    detect: bool = True
    detectors: tuple[str, ...] = DEFAULT_ORDER
    on_missing: str = "error"
    guard: bool = True
    last_detectors: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def default(
        cls,
        model_path: str | Path | None = None,
        *,
        int8: bool = False,
        detect: bool = True,
        threads: int = 1,
        guard: bool = True,
        on_missing: str = "error",
    ) -> FaceEmbedder:
        """The vendored model (float, or the static-int8 copy), or a local ONNX file."""
        path = Path(model_path) if model_path is not None else assets_dir() / (INT8_MODEL if int8 else FLOAT_MODEL)
        name = "mobilefacenet-int8" if (model_path is None and int8) else "mobilefacenet"
        prep = ALIGNED_PREPROCESS if detect else FACE_PREPROCESS
        return cls(path, name=name, preprocess=prep, threads=threads, batch_size=64, detect=detect,
                   guard=guard, on_missing=on_missing)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.on_missing not in ("error", "frame"):
            raise InputError(f"on_missing must be 'error' or 'frame', got {self.on_missing!r}")
        for d in self.detectors:
            if d not in DETECTORS:
                raise InputError(f"unknown face detector {d!r}; choose from {', '.join(DETECTORS)}")

    def prepare(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> list[Image.Image]:
        """What the model sees: aligned 112x112 faces (detect) or the guarded crops (face-crop)."""
        labels = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if len(labels) != len(images):
            raise InputError(f"{len(images)} images but {len(labels)} names")
        for im, label in zip(images, labels, strict=True):
            if not isinstance(im, Image.Image):
                raise InputError(f"{label}: expected a PIL image, got {type(im).__name__}")
            if min(im.size) < MIN_IMAGE_SIDE:
                raise InputError(f"{label}: image is {im.size[0]}x{im.size[1]} px, smaller than {MIN_IMAGE_SIDE} px")
        if not self.detect:
            if self.guard:
                from biomatch.faces.guard import check_face_crop

                self.last_detectors = [check_face_crop(im, label) for im, label in zip(images, labels, strict=True)]
            else:
                self.last_detectors = ["crop"] * len(images)
            return list(images)
        out, found = [], []
        for im, label in zip(images, labels, strict=True):
            det = detect_landmarks(im, self.detectors)
            if det is None:
                if self.on_missing == "error":
                    raise InputError(f"no face found in {label}")
                det = frame_landmarks(im)
            out.append(align(im, det.points, det.names))
            found.append(det.detector)
        self.last_detectors = found
        return out

    def embed(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> np.ndarray:
        """(N, 128) float32 L2-normalized embeddings; ``names`` label images in errors."""
        return self.embed_arrays(self.preprocess.batch(self.prepare(images, names)))

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """One forward for the whole batch (the images and, with flip TTA, their mirrors)."""
        x = np.asarray(x, np.float32)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        both = np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]) if self.preprocess.flip_tta else x
        h, w = self.preprocess.size
        if both.ndim != 4 or both.shape[1:] != (3, h, w):
            raise InputError(f"expected inputs of shape (N, 3, {h}, {w}), got {x.shape}")
        raw = self._session.run(None, {self._input_name: both})[0].reshape(len(both), -1)
        emb = l2_normalize(raw)
        if self.preprocess.flip_tta:
            emb = l2_normalize(emb[: len(x)] + emb[len(x):])
        return emb.astype(np.float32)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Everything between a photo and the model input that changes the embedding."""
        return _preprocessing(self.detect, self.preprocess.to_dict(), self.detectors)

    @property
    def embedder_id(self) -> str:
        """SHA-256 of the model hash + ``preprocessing``: the key templates are stored under."""
        return embedder_id(self.model_hash, self.preprocessing)

    def sibling_ids(self) -> dict[str, str]:
        """Keys of templates made by this same model file with other inputs, for error messages.

        The other pipeline, the pre-alignment pipelines (Haar framing; crop without a guard),
        and the bare model hash (templates stored before the preprocessing was recorded).
        """
        other = not self.detect
        other_prep = (ALIGNED_PREPROCESS if other else FACE_PREPROCESS).to_dict()
        return {
            embedder_id(self.model_hash, _preprocessing(other, other_prep, self.detectors)):
                f"the same model on {_input_kind(other)}",
            embedder_id(self.model_hash, _legacy_preprocessing(True)):
                "the same model on Haar-framed photos without alignment (before landmark alignment)",
            embedder_id(self.model_hash, _legacy_preprocessing(False)):
                "the same model on pre-cropped faces (before landmark alignment)",
            self.model_hash: "the same model before the preprocessing was recorded (detected or pre-cropped: unknown)",
        }

    @property
    def threshold_path(self) -> Path:
        """Where this model's calibrated unlock threshold for this pipeline lives (beside the model)."""
        from biomatch.calibration import threshold_path

        return threshold_path(self.model_path, variant=None if self.detect else "crop")

    def load_threshold(self, path: str | Path | None = None):  # -> biomatch.calibration.Threshold
        """The calibrated threshold for this exact model file and preprocessing.

        Raises StateError when it was calibrated for another model (hash) or preprocessing.
        """
        from biomatch.calibration import load_threshold

        return load_threshold(
            path if path is not None else self.threshold_path,
            model_sha256=self.model_hash,
            preprocess=self.preprocessing,
        )


def frame_landmarks(image: Image.Image) -> Detection:
    """Where the five points sit in an LFW-framed crop (median positions, ``LFW_FRAME_POINTS``),
    scaled to the image: the fallback for a crop no detector can read ("none")."""
    w, h = image.size
    pts = np.array([[fx * w, fy * h] for fx, fy in LFW_FRAME_POINTS.values()])
    return Detection(pts, tuple(LFW_FRAME_POINTS), "none")


def _input_kind(detect: bool) -> str:
    return "photos (landmark detection + 5-point alignment)" if detect else "pre-cropped LFW-framed faces"


def _preprocessing(detect: bool, preprocess: dict[str, Any], detectors: Sequence[str]) -> dict[str, Any]:
    """The pipeline description thresholds and templates are bound to."""
    from biomatch.faces import align as a
    from biomatch.faces import landmarks as lm

    out: dict[str, Any] = {"input": "align" if detect else "crop", "version": PIPELINE_VERSION,
                           "preprocess": preprocess}
    if detect:
        out["detectors"] = list(detectors)
        out["template"] = {k: list(v) for k, v in sorted(a.TEMPLATE.items())}
        out["pad_fraction"] = lm.PAD_FRACTION
        out["max_side"] = lm.MAX_SIDE
        out["haar_points"] = {k: list(v) for k, v in lm.HAAR_POINTS.items()}
    else:
        from biomatch.faces import guard as g

        out["guard"] = g.GUARD_SPEC
    return out


def _legacy_preprocessing(detect: bool) -> dict[str, Any]:
    """The pre-alignment (Haar framing / bare crop) pipeline description, for error messages."""
    out: dict[str, Any] = {"input": "detect" if detect else "crop", "preprocess": FACE_PREPROCESS.to_dict()}
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
