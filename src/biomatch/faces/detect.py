"""Face detection for uncropped photos: OpenCV's frontal-face Haar cascade, evaluated in numpy.

opencv-python 5.x dropped ``cv2.CascadeClassifier`` (and the cascade files), so the classic
``haarcascade_frontalface_default.xml`` from OpenCV 4.x is vendored under
``biomatch/assets/haarcascades`` (Intel licence in its header) and run here with the same
rules as OpenCV: image pyramid (scale 1.1), 24x24 window, stride 2 (1 above scale 2),
variance-normalized stump features, windows with grey-level std <= 10 rejected,
``groupRectangles``-style merging with ``min_neighbors``.

``crop_face`` turns the largest detection into the framing of the lfw_pairs crops (central
150 of the 250 px deep-funneled images), which is what ``FaceEmbedder`` expects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from biomatch.errors import InputError, NotFoundError

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Haar box -> LFW-style frame, measured by ``measure_frame`` on 300 random lfw_pairs images
# (297 detected): median box side 0.768 of the frame, box centre at (0.504, 0.504).
FRAME_PER_BOX = 1.0 / 0.768
BOX_CENTER_IN_FRAME = (0.504, 0.504)


def default_cascade_path() -> Path:
    """The vendored cascade XML inside the installed package."""
    return Path(str(resources.files("biomatch") / "assets" / "haarcascades" / CASCADE_FILE))


@dataclass(frozen=True)
class _Stage:
    threshold: float
    rects: np.ndarray  # (T, 3, 4) x, y, w, h in window coordinates
    weights: np.ndarray  # (T, 3)
    node_thr: np.ndarray  # (T,)
    left: np.ndarray  # (T,)
    right: np.ndarray  # (T,)


@dataclass(frozen=True)
class HaarCascade:
    """A stump-based Haar cascade (OpenCV's new XML format, non-tilted features)."""

    window: tuple[int, int]  # (width, height)
    stages: tuple[_Stage, ...]

    @classmethod
    def load(cls, path: str | Path | None = None) -> HaarCascade:
        """Parse a cascade XML; a clear error for a missing or unsupported file."""
        path = Path(path) if path is not None else default_cascade_path()
        return _load_cascade(str(path))

    def detect(
        self,
        gray: np.ndarray,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size: int = 24,
    ) -> np.ndarray:
        """Face boxes (x, y, w, h) in a 2-D uint8/float grey image, biggest first."""
        if gray.ndim != 2:
            raise InputError(f"expected a 2-D grey image, got shape {gray.shape}")
        win_w, win_h = self.window
        height, width = gray.shape
        found: list[np.ndarray] = []
        factor = 1.0
        while True:
            sw, sh = int(round(width / factor)), int(round(height / factor))
            if sw < win_w or sh < win_h:
                break
            if win_w * factor >= min_size:
                img = gray if factor == 1.0 else cv2.resize(gray, (sw, sh), interpolation=cv2.INTER_LINEAR)
                step = 1 if factor > 2.0 else 2
                hits = self._detect_scale(np.ascontiguousarray(img, dtype=np.uint8), step)
                if len(hits):
                    boxes = np.column_stack(
                        [hits[:, 0] * factor, hits[:, 1] * factor,
                         np.full(len(hits), win_w * factor), np.full(len(hits), win_h * factor)]
                    )
                    found.append(np.round(boxes).astype(np.int64))
            factor *= scale_factor
        if not found:
            return np.zeros((0, 4), np.int64)
        return group_rectangles(np.concatenate(found), min_neighbors)

    def _detect_scale(self, img: np.ndarray, step: int) -> np.ndarray:
        """Window top-left corners (x, y) accepted by every stage at one pyramid level."""
        win_w, win_h = self.window
        ii, sq = cv2.integral2(img, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        stride = ii.shape[1]
        ii_flat, sq_flat = ii.ravel(), sq.ravel()
        ys, xs = np.mgrid[0 : img.shape[0] - win_h + 1 : step, 0 : img.shape[1] - win_w + 1 : step]
        base = (ys * stride + xs).ravel()
        # variance normalization over the window shrunk by one pixel (OpenCV's normrect)
        nx, ny, nw, nh = 1, 1, win_w - 2, win_h - 2
        corners = np.array([ny * stride + nx, ny * stride + nx + nw, (ny + nh) * stride + nx, (ny + nh) * stride + nx + nw])
        s = _rect_sums(ii_flat, base, corners)
        q = _rect_sums(sq_flat, base, corners)
        area = float(nw * nh)
        nf = np.sqrt(np.maximum(area * q - s * s, 0.0))
        keep = nf > 10.0 * area  # std <= 10 grey levels: flat, never a face
        base, nf = base[keep], nf[keep]
        for stage in self.stages:
            if not len(base):
                break
            r = stage.rects
            off = np.stack(
                [r[..., 1] * stride + r[..., 0], r[..., 1] * stride + r[..., 0] + r[..., 2],
                 (r[..., 1] + r[..., 3]) * stride + r[..., 0], (r[..., 1] + r[..., 3]) * stride + r[..., 0] + r[..., 2]],
                axis=-1,
            )  # (T, 3, 4)
            total = np.zeros(len(base))
            for lo in range(0, len(base), 4096):  # bound memory: windows x stumps x rects
                b = base[lo : lo + 4096, None, None, None] + off[None]
                v = ii_flat[b[..., 0]] - ii_flat[b[..., 1]] - ii_flat[b[..., 2]] + ii_flat[b[..., 3]]
                value = (v * stage.weights[None]).sum(-1)  # (n, T)
                vote = np.where(value < stage.node_thr[None] * nf[lo : lo + 4096, None], stage.left, stage.right)
                total[lo : lo + 4096] = vote.sum(-1)
            passed = total >= stage.threshold
            base, nf = base[passed], nf[passed]
        return np.column_stack([base % stride, base // stride])


def _rect_sums(flat: np.ndarray, base: np.ndarray, corners: np.ndarray) -> np.ndarray:
    tl, tr, bl, br = corners
    return flat[base + tl] - flat[base + tr] - flat[base + bl] + flat[base + br]


@lru_cache(maxsize=4)
def _load_cascade(path: str) -> HaarCascade:
    if not Path(path).is_file():
        raise NotFoundError(f"Haar cascade not found: {path}")
    try:
        root = ET.parse(path).getroot().find("cascade")
    except ET.ParseError as exc:
        raise InputError(f"cannot parse Haar cascade {path}: {exc}") from exc
    if root is None or root.findtext("featureType", "").strip() != "HAAR":
        raise InputError(f"{path} is not a HAAR cascade in OpenCV's XML format")
    window = (int(root.findtext("width")), int(root.findtext("height")))
    features = []
    for feat in root.find("features"):
        if feat.findtext("tilted", "0").strip() == "1":
            raise InputError(f"{path}: tilted Haar features are not supported")
        rects = [[float(v) for v in r.text.split()] for r in feat.find("rects")]
        features.append(rects)
    stages = []
    for st in root.find("stages"):
        nodes, leaves = [], []
        for weak in st.find("weakClassifiers"):
            internal = weak.findtext("internalNodes").split()
            if len(internal) != 4:
                raise InputError(f"{path}: only stump cascades (one split per tree) are supported")
            nodes.append((int(internal[2]), float(internal[3])))
            leaves.append([float(v) for v in weak.findtext("leafValues").split()])
        t = len(nodes)
        rects = np.zeros((t, 3, 4), np.int64)
        weights = np.zeros((t, 3))
        for i, (fidx, _) in enumerate(nodes):
            for j, (x, y, w, h, wt) in enumerate(features[fidx]):
                rects[i, j] = (x, y, w, h)
                weights[i, j] = wt
        stages.append(
            _Stage(
                threshold=float(st.findtext("stageThreshold")),
                rects=rects,
                weights=weights,
                node_thr=np.array([thr for _, thr in nodes]),
                left=np.array([lv[0] for lv in leaves]),
                right=np.array([lv[1] for lv in leaves]),
            )
        )
    return HaarCascade(window, tuple(stages))


def group_rectangles(boxes: np.ndarray, min_neighbors: int, eps: float = 0.2) -> np.ndarray:
    """OpenCV's groupRectangles: cluster similar boxes, average each cluster of > min_neighbors.

    Boxes nested inside a stronger cluster are dropped. Returns (x, y, w, h), biggest first.
    """
    n = len(boxes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x, y, w, h = boxes.T.astype(np.float64)
    for i in range(n):
        delta = eps * (np.minimum(w[i], w) + np.minimum(h[i], h)) * 0.5
        similar = (
            (np.abs(x[i] - x) <= delta) & (np.abs(y[i] - y) <= delta)
            & (np.abs(x[i] + w[i] - x - w) <= delta) & (np.abs(y[i] + h[i] - y - h) <= delta)
        )
        for j in np.flatnonzero(similar[i + 1 :]) + i + 1:
            ri, rj = find(i), find(int(j))
            if ri != rj:
                parent[rj] = ri
    labels = np.array([find(i) for i in range(n)])
    groups = []
    for lab in np.unique(labels):
        members = boxes[labels == lab]
        if len(members) > min_neighbors:
            groups.append((np.round(members.mean(0)).astype(np.int64), len(members)))
    kept = []
    for i, (box, count) in enumerate(groups):
        inside = False
        for j, (other, other_count) in enumerate(groups):
            if i == j or other_count < max(3, count):
                continue
            dx, dy = round(other[2] * eps), round(other[3] * eps)
            if (box[0] >= other[0] - dx and box[1] >= other[1] - dy
                    and box[0] + box[2] <= other[0] + other[2] + dx
                    and box[1] + box[3] <= other[1] + other[3] + dy):
                inside = True
                break
        if not inside:
            kept.append(box)
    if not kept:
        return np.zeros((0, 4), np.int64)
    out = np.array(kept)
    return out[np.argsort(-(out[:, 2] * out[:, 3]), kind="stable")]


MAX_DETECT_SIDE = 480  # photos are shrunk to this before detection: faces for unlock are large


def detect_faces(image: Image.Image, *, min_neighbors: int = 3, cascade: HaarCascade | None = None) -> np.ndarray:
    """Face boxes (x, y, w, h) in image pixels, biggest first (possibly none)."""
    gray = np.asarray(image.convert("L"))
    scale = max(gray.shape) / MAX_DETECT_SIDE
    if scale > 1.0:
        gray = cv2.resize(gray, (round(gray.shape[1] / scale), round(gray.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    else:
        scale = 1.0
    boxes = (cascade or HaarCascade.load()).detect(gray, min_neighbors=min_neighbors)
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
