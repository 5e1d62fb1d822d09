"""Face detection for uncropped photos: OpenCV's frontal-face Haar cascade (``cv2.CascadeClassifier``).

The cascade is the ``haarcascade_frontalface_default.xml`` that the opencv-python(-headless)
4.x wheels ship in ``cv2.data.haarcascades`` (opencv-python 5.x dropped both the class and the
files, hence the ``<5`` pin). Detection runs ``detectMultiScale`` with scale factor 1.1,
``min_neighbors`` 3 and a 24 px minimum face on a grey copy of the photo shrunk to at most
``MAX_DETECT_SIDE`` px.

``crop_face`` turns the largest detection into the framing of the lfw_pairs crops (central
150 of the 250 px deep-funneled images), which is what ``FaceEmbedder`` expects.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from biomatch.errors import InputError, NotFoundError, StateError

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Haar box -> LFW-style frame, measured by ``measure_frame`` on 300 random lfw_pairs images
# (297 detected): median box side 0.768 of the frame, box centre at (0.504, 0.504).
FRAME_PER_BOX = 1.0 / 0.768
BOX_CENTER_IN_FRAME = (0.504, 0.504)

MAX_DETECT_SIDE = 480  # photos are shrunk to this before detection: faces for unlock are large
SCALE_FACTOR = 1.1
MIN_FACE = 24


def default_cascade_path() -> Path:
    """The frontal-face cascade XML shipped with opencv-python 4.x (``cv2.data``)."""
    data = getattr(cv2, "data", None)
    if data is None or not hasattr(cv2, "CascadeClassifier"):
        raise StateError(
            f"OpenCV {cv2.__version__} has no CascadeClassifier / cascade files; "
            'install "opencv-python-headless>=4.9,<5"'
        )
    return Path(data.haarcascades) / CASCADE_FILE


class _Cascade:
    """A loaded ``cv2.CascadeClassifier``; one lock per instance (OpenCV's detectMultiScale is
    not documented as thread-safe on one object, and the HTTP server detects from threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.classifier = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError) as exc:  # a malformed XML raises inside the constructor
            raise InputError(f"OpenCV cannot load a cascade classifier from {path}: {exc}") from exc
        if self.classifier.empty():
            raise InputError(f"OpenCV cannot load a cascade classifier from {path}")
        self.lock = threading.Lock()


@lru_cache(maxsize=4)
def load_cascade(path: str | Path | None = None) -> _Cascade:
    """The cascade at ``path`` (default: OpenCV's frontal-face one), loaded once per path."""
    path = Path(path) if path is not None else default_cascade_path()
    if not path.is_file():
        raise NotFoundError(f"Haar cascade not found: {path}")
    return _Cascade(path)


def detect_faces(image: Image.Image, *, min_neighbors: int = 3, cascade: str | Path | None = None) -> np.ndarray:
    """Face boxes (x, y, w, h) in image pixels, biggest first (possibly none).

    ``cascade``: path of another OpenCV cascade XML (default: frontal face).
    """
    gray = np.asarray(image.convert("L"))
    scale = max(gray.shape) / MAX_DETECT_SIDE
    if scale > 1.0:
        gray = cv2.resize(gray, (round(gray.shape[1] / scale), round(gray.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    else:
        scale = 1.0
    casc = load_cascade(cascade)
    with casc.lock:
        found = casc.classifier.detectMultiScale(
            np.ascontiguousarray(gray), scaleFactor=SCALE_FACTOR, minNeighbors=min_neighbors, minSize=(MIN_FACE, MIN_FACE)
        )
    boxes = np.asarray(found, dtype=np.int64).reshape(-1, 4)
    boxes = boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]
    return np.round(boxes * scale).astype(np.int64)


def frame_from_box(box: np.ndarray | tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The LFW-style square frame (left, top, right, bottom) around a Haar face box."""
    x, y, w, h = (float(v) for v in box)
    side = FRAME_PER_BOX * (w + h) / 2
    cx, cy = x + w / 2, y + h / 2
    left = cx - BOX_CENTER_IN_FRAME[0] * side
    top = cy - BOX_CENTER_IN_FRAME[1] * side
    return round(left), round(top), round(left + side), round(top + side)


def crop_face(image: Image.Image, name: str = "image", size: int = 112) -> Image.Image:
    """The largest face, framed like the lfw_pairs crops, as a size x size RGB image.

    The photo is first padded by edge replication (a quarter of its longer side) so that a
    face filling the whole picture (an already-cropped face) is still found. Raises
    InputError("no face found in <name>") when the cascade finds nothing.
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"{name}: expected a PIL image, got {type(image).__name__}")
    rgb = np.asarray(image.convert("RGB"))
    margin = max(rgb.shape[:2]) // 4
    rgb = cv2.copyMakeBorder(rgb, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
    boxes = detect_faces(Image.fromarray(rgb))
    if not len(boxes):
        raise InputError(f"no face found in {name}")
    left, top, right, bottom = frame_from_box(boxes[0])
    pad = max(0, -left, -top, right - rgb.shape[1], bottom - rgb.shape[0])
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = rgb[top + pad : bottom + pad, left + pad : right + pad]
    return Image.fromarray(crop).resize((size, size), Image.BICUBIC)


def measure_frame(images: list[Image.Image], pad: int = 40) -> dict[str, float]:
    """Median Haar box geometry on already-framed faces (how the constants above were set).

    Each framed image is padded (edge replication) so the cascade sees some context.
    """
    sides, cxs, cys = [], [], []
    for im in images:
        rgb = cv2.copyMakeBorder(np.asarray(im.convert("RGB")), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        boxes = detect_faces(Image.fromarray(rgb))
        if not len(boxes):
            continue
        x, y, w, h = boxes[0]
        side = im.size[0]
        sides.append((w + h) / 2 / side)
        cxs.append((x - pad + w / 2) / side)
        cys.append((y - pad + h / 2) / side)
    return {
        "box_per_frame": float(np.median(sides)),
        "center_x": float(np.median(cxs)),
        "center_y": float(np.median(cys)),
        "detected": len(sides),
        "total": len(images),
    }
