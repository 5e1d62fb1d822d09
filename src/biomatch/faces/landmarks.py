"""Face detectors that return landmarks, tried in a fixed order (first that finds a face wins).

- ``mesh`` (first by default): MediaPipe Face Mesh with iris refinement: eye = iris centre,
  nose tip, mouth corners, i.e. all five ArcFace points. 2-fold accuracy 0.9942 on LFW folds
  1-2 against 0.9917 for BlazeFace's four points, at 9.3 vs 4.3 CPU ms per image.
- ``blazeface``: MediaPipe BlazeFace short-range (``mediapipe.solutions.face_detection``,
  model 0), 6 keypoints; we use the eyes, nose tip and mouth centre. The model ships inside
  the mediapipe 0.10.14 wheel (pinned) and runs offline.
- ``blazeface-full``: the full-range BlazeFace (model 1), for small faces in large photos.
- ``dlib``: dlib HOG + ``shape_predictor_5_face_landmarks.dat`` from face-recognition-models
  (the ``peers`` extra): eye centres (mean of each eye's corners) and the nose base.
- ``haar``: OpenCV's Haar cascade box only; the landmarks are the box scaled by the median
  landmark positions inside Haar boxes (``HAAR_POINTS``), so it degrades to a box crop.

Both MediaPipe models ship inside the mediapipe 0.10.14 wheel (pinned) and run offline.
Photos are padded by a quarter of their longer side (black) before detection so that a face
filling the whole picture (an already-cropped face) is still found; BlazeFace found 200/200
LFW crops with that padding. ``DEFAULT_ORDER`` was picked by measurement
(``benchmarks/lfw_detector_pick.py``, folds 1-2 only; see BENCHMARKS.md).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from biomatch.errors import InputError

# mediapipe 0.10.14 calls a protobuf API that warns on every graph run; nothing we can act on
warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)

DETECTORS = ("blazeface", "blazeface-full", "mesh", "dlib", "haar")
DEFAULT_ORDER: tuple[str, ...] = ("mesh", "blazeface", "blazeface-full", "haar")
PAD_FRACTION = 0.25
MAX_SIDE = 640  # larger photos are shrunk for detection (landmarks are scaled back)
MIN_CONFIDENCE = 0.5

# Median landmark positions inside a Haar box, as fractions (x of width, y of height), measured
# with the mesh landmarks on 299 of 300 LFW images of folds 1-2 (tuning folds).
HAAR_POINTS = {
    "eye_left": (0.313, 0.392), "eye_right": (0.670, 0.384), "nose": (0.499, 0.631),
    "mouth_left": (0.350, 0.786), "mouth_right": (0.651, 0.780),
}


@dataclass(frozen=True)
class Detection:
    """One face: landmark points (K, 2) in image pixels, their names, and who found it."""

    points: np.ndarray
    names: tuple[str, ...]
    detector: str
    score: float = 1.0


class _Locked:
    """A lazily built detector object and a lock (MediaPipe graphs are not thread-safe)."""

    def __init__(self, build) -> None:
        self._build = build
        self._obj = None
        self.lock = threading.Lock()

    def get(self):
        if self._obj is None:
            self._obj = self._build()
        return self._obj


@lru_cache(maxsize=None)
def _backend(name: str) -> _Locked:
    if name in ("blazeface", "blazeface-full"):
        def build():
            from mediapipe.python.solutions import face_detection

            return face_detection.FaceDetection(model_selection=0 if name == "blazeface" else 1,
                                                min_detection_confidence=MIN_CONFIDENCE)
    elif name == "mesh":
        def build():
            from mediapipe.python.solutions import face_mesh

            return face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                      min_detection_confidence=MIN_CONFIDENCE)
    elif name == "dlib":
        def build():
            import dlib

            from biomatch.faces.peer import models_dir

            return dlib.get_frontal_face_detector(), dlib.shape_predictor(
                str(models_dir() / "shape_predictor_5_face_landmarks.dat"))
    else:
        raise InputError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}")
    return _Locked(build)


def _by_x(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (a, b) if a[0] <= b[0] else (b, a)


def _run(name: str, rgb: np.ndarray) -> Detection | None:
    """Landmarks of the largest face in an RGB uint8 array, or None."""
    h, w = rgb.shape[:2]
    if name == "haar":
        from biomatch.faces.detect import detect_faces

        boxes = detect_faces(Image.fromarray(rgb))
        if not len(boxes):
            return None
        x, y, bw, bh = (float(v) for v in boxes[0])
        names = tuple(HAAR_POINTS)
        pts = np.array([[x + fx * bw, y + fy * bh] for fx, fy in HAAR_POINTS.values()])
        return Detection(pts, names, "haar")
    backend = _backend(name)
    with backend.lock:
        model = backend.get()
        if name == "dlib":
            import dlib

            det, shape = model
            rects = list(det(rgb, 1))
            if not rects:
                return None
            rect = max(rects, key=lambda r: r.width() * r.height())
            s = shape(rgb, rect)
            p = np.array([[s.part(i).x, s.part(i).y] for i in range(5)], np.float64)
            e1, e2 = _by_x(p[0:2].mean(0), p[2:4].mean(0))
            return Detection(np.stack([e1, e2, p[4]]), ("eye_left", "eye_right", "nose_base"), "dlib")
        result = model.process(rgb)
    if name == "mesh":
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        xy = lambda i: np.array([lm[i].x * w, lm[i].y * h])  # noqa: E731
        e1, e2 = _by_x(xy(468), xy(473))
        m1, m2 = _by_x(xy(61), xy(291))
        return Detection(np.stack([e1, e2, xy(1), m1, m2]), ("eye_left", "eye_right", "nose", "mouth_left",
                                                             "mouth_right"), "mesh")
    if not result.detections:
        return None

    def area(d) -> float:
        b = d.location_data.relative_bounding_box
        return b.width * b.height

    best = max(result.detections, key=area)
    kp = best.location_data.relative_keypoints
    xy = lambda i: np.array([kp[i].x * w, kp[i].y * h])  # noqa: E731
    e1, e2 = _by_x(xy(0), xy(1))
    return Detection(np.stack([e1, e2, xy(2), xy(3)]), ("eye_left", "eye_right", "nose", "mouth_center"), name,
                     float(best.score[0]))


def detect_landmarks(image: Image.Image, order: Sequence[str] = DEFAULT_ORDER) -> Detection | None:
    """The largest face's landmarks from the first detector in ``order`` that finds one, or None.

    The photo is shrunk to ``MAX_SIDE`` and padded (black, ``PAD_FRACTION`` of its longer side)
    first; the points come back in the original image's pixels.
    """
    import cv2

    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    rgb = np.asarray(image.convert("RGB"))
    scale = max(rgb.shape[:2]) / MAX_SIDE
    if scale > 1.0:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] / scale), round(rgb.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    else:
        scale = 1.0
    pad = round(PAD_FRACTION * max(rgb.shape[:2]))
    padded = np.ascontiguousarray(cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)))
    for name in order:
        det = _run(name, padded)
        if det is not None:
            return Detection((det.points - pad) * scale, det.names, det.detector, det.score)
    return None
