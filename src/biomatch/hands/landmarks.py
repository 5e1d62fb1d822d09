"""Hand landmarks (MediaPipe Hands, models from the installed wheel) → canonical alignment and
view-invariant geometry.

Why: a dorsal and a palmar photo of one hand differ in rotation, scale and handedness layout
(one is the mirror image of the other). The 21 MediaPipe landmarks fix all three:

- `align_hand` rotates the image so that wrist → middle-finger MCP points up, scales it so the
  palm length (wrist → middle MCP) is a fixed fraction of the crop, crops a fixed box, and
  mirrors it when needed so that the thumb is always on the image's left (`canonical_mirror`).
  That last step is the explicit dorsal/palmar mirror handling: after it, both views of one hand
  share one layout.
- `geometry_features` measures finger bone lengths and palm width relative to palm length,
  finger-gap angles and finger widths (from the hand mask) relative to palm length. All are
  unchanged by rotation, scale and mirroring, because they are indexed by the landmark's
  anatomical identity (thumb … little finger), not by image position.

No hand found (a failure to acquire, FTA) is never dropped: `cached_landmarks` returns NaN
landmarks and `ok=False` for it; alignment falls back to the plain centre-resized image and the
geometry score falls back to the other cues (`biomatch.hands.methods`).

Landmarks are cached in `<cache>/landmarks/<model version>.npz`, one entry per image keyed by
file name, size and mtime, so a changed file or another MediaPipe version is recomputed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.data.datasets import Sample
from biomatch.data.images import file_fingerprint
from biomatch.paths import cache_dir
from biomatch.progress import CountProgress

WRIST, THUMB_TIP, INDEX_MCP, MIDDLE_MCP, RING_MCP, PINKY_MCP = 0, 4, 5, 9, 13, 17
FINGERS = {"thumb": (1, 2, 3, 4), "index": (5, 6, 7, 8), "middle": (9, 10, 11, 12),
           "ring": (13, 14, 15, 16), "little": (17, 18, 19, 20)}
PALM_POINTS = (WRIST, INDEX_MCP, MIDDLE_MCP, RING_MCP, PINKY_MCP)
CROP = 224  # canonical crop side, pixels
PALM_FRACTION = 0.33  # palm length (wrist → middle MCP) as a fraction of the crop side
CENTER_ALONG = 1.25  # crop centre: wrist + this × (middle MCP − wrist) — the hand, fingers included


def model_version() -> str:
    """MediaPipe version + settings: part of every landmark cache key."""
    import mediapipe

    return f"mediapipe-{mediapipe.__version__}-hands-c1-conf0.3-retry256pad64conf0.1"


@dataclass
class Landmarks:
    """Landmarks of one image: (21, 2) pixel coordinates (x right, y down), NaN when no hand."""

    points: np.ndarray
    score: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.points).all())


class LandmarkDetector:
    """MediaPipe Hands in static-image mode, one hand per image, models from the wheel. Where the
    photo itself gives no hand (mostly the 100 px dorsal images, where the hand fills the frame),
    a second try runs on the image upscaled to 256 px with a 64 px replicated border and a lower
    detection threshold (0.1): measured on 40 such failures, it found 25."""

    RETRY_SIZE, RETRY_PAD = 256, 64

    def __init__(self, min_confidence: float = 0.3, retry_confidence: float = 0.1) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        make = mp.solutions.hands.Hands
        self._hands = make(static_image_mode=True, max_num_hands=1, model_complexity=1,
                           min_detection_confidence=min_confidence)
        self._retry = make(static_image_mode=True, max_num_hands=1, model_complexity=1,
                           min_detection_confidence=retry_confidence)

    @staticmethod
    def _points(res, w: float, h: float) -> tuple[np.ndarray, float] | None:
        if not res.multi_hand_landmarks:
            return None
        lm = res.multi_hand_landmarks[0].landmark
        score = float(res.multi_handedness[0].classification[0].score) if res.multi_handedness else 0.0
        return np.array([[p.x * w, p.y * h] for p in lm], np.float32), score

    def __call__(self, rgb: np.ndarray) -> Landmarks:
        import cv2

        rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        h, w = rgb.shape[:2]
        found = self._points(self._hands.process(rgb), w, h)
        if found is None:
            n, pad = self.RETRY_SIZE, self.RETRY_PAD
            big = cv2.copyMakeBorder(cv2.resize(rgb, (n, n), interpolation=cv2.INTER_CUBIC), pad, pad, pad, pad,
                                     cv2.BORDER_REPLICATE)
            found = self._points(self._retry.process(big), n + 2 * pad, n + 2 * pad)
            if found is not None:
                pts = (found[0] - pad) * np.array([w / n, h / n], np.float32)
                found = (pts.astype(np.float32), found[1])
        if found is None:
            return Landmarks(np.full((21, 2), np.nan, np.float32))
        return Landmarks(*found)

    def close(self) -> None:
        self._hands.close()
        self._retry.close()


def _file_key(path: Path) -> str:
    return file_fingerprint(path)


def landmark_cache_path(cache: Path | None = None) -> Path:
    folder = (cache or cache_dir()) / "landmarks"
    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(model_version().encode()).hexdigest()[:10]
    return folder / f"{model_version()}-{tag}.npz"


def cached_landmarks(samples: Sequence[Sample], cache: Path | None = None,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 21, 2) landmarks in pixels (NaN where no hand was found) and (N,) ok flags, in sample
    order; only images missing from the cache run through MediaPipe. Progress lines go to stderr
    every 250 images when stderr is not a terminal (a tqdm bar otherwise)."""
    path = landmark_cache_path(cache)
    store: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            store = dict(zip(z["keys"].tolist(), z["points"]))
    keys = [_file_key(s.path) for s in samples]
    todo = [i for i, k in enumerate(keys) if k not in store]
    if todo:
        with CountProgress(len(todo), "hand landmarks", 250, progress) as bar:
            for i, pts in zip(todo, _detect_all([str(samples[i].path) for i in todo])):
                store[keys[i]] = pts
                bar.update(1)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=np.array(list(store)), points=np.stack(list(store.values())))
        os.replace(tmp, path)
    points = np.stack([store[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 21, 2), np.float32)
    return points, np.isfinite(points).all(axis=(1, 2))


PARALLEL_MIN_IMAGES = 400  # below this, starting a second process costs more than it saves
CHILD_SHARE = 0.45  # the child first spends ~4 s starting Python and MediaPipe: give it a little less


def _detect_serial(paths: Sequence[str]) -> Iterator[np.ndarray]:
    detector = LandmarkDetector()
    try:
        for path in paths:
            yield detector(np.asarray(Image.open(path).convert("RGB"))).points
    finally:
        detector.close()


def _detect_all(paths: list[str]) -> Iterator[np.ndarray]:
    """Landmarks of each image, in order, as a lazy iterator. MediaPipe's CPU graph runs on one
    core, so on a multi-core machine a large batch is split: the last CHILD_SHARE goes to a child
    process (``python -m biomatch.hands.landmarks``, independent of the caller's ``__main__``)
    while this process does the first. Each image is processed on its own, so the points are the
    same either way; if the child fails, its share is done here."""
    if (os.cpu_count() or 1) < 2 or len(paths) < PARALLEL_MIN_IMAGES:
        yield from _detect_serial(paths)
        return
    import subprocess
    import tempfile

    half = int(len(paths) * (1 - CHILD_SHARE))
    with tempfile.TemporaryDirectory(prefix="biomatch-landmarks-") as tmp:
        listing, out = Path(tmp) / "paths.txt", Path(tmp) / "points.npy"
        listing.write_text("\n".join(paths[half:]))
        child = subprocess.Popen([sys.executable, "-m", "biomatch.hands.landmarks", str(listing), str(out)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield from _detect_serial(paths[:half])
        finally:
            ok = child.wait() == 0 and out.is_file()
        yield from (np.load(out) if ok else _detect_serial(paths[half:]))


def _worker_main(listing: str, out: str) -> None:
    """Child side of ``_detect_all``: landmarks of the listed images -> one .npy."""
    paths = Path(listing).read_text().splitlines()
    np.save(out, np.stack(list(_detect_serial(paths))) if paths else np.zeros((0, 21, 2), np.float32))


# ---------------------------------------------------------------- alignment


def canonical_mirror(points: np.ndarray) -> bool:
    """Whether the hand must be mirrored so that, with the middle finger up, the thumb lies on the
    image's left. (Dorsal right and palmar right photos differ exactly in this.)"""
    up = points[MIDDLE_MCP] - points[WRIST]
    side = points[INDEX_MCP] - points[PINKY_MCP]  # towards the thumb (index MCP is steadier than the tip)
    # 2-D cross product: > 0 means `side` points to the right of `up` in image coordinates (y down);
    # rotation keeps that, so the thumb would end up on the right: mirror
    cross = up[0] * side[1] - up[1] * side[0]
    return bool(cross > 0)


def alignment_matrix(points: np.ndarray, size: int = CROP) -> tuple[np.ndarray, bool]:
    """(2×3 affine from image to canonical crop, mirrored?) for landmarks `points`."""
    wrist, mcp = points[WRIST].astype(np.float64), points[MIDDLE_MCP].astype(np.float64)
    up = mcp - wrist
    palm = float(np.hypot(*up))
    if not np.isfinite(palm) or palm < 1e-6:
        raise ValueError("degenerate landmarks")
    scale = PALM_FRACTION * size / palm
    # rotate so that `up` maps to (0, -1) (image up)
    angle = np.arctan2(up[0], -up[1])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]]) * scale
    mirror = canonical_mirror(points)
    if mirror:
        rot = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rot
    center = wrist + CENTER_ALONG * up
    t = np.array([size / 2, size / 2]) - rot @ center
    return np.hstack([rot, t[:, None]]).astype(np.float64), mirror


def border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the photo's outermost pixels: the fill for whatever a warp takes from
    outside the photo (the background, in these photos)."""
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))  # type: ignore[return-value]


def align_hand(image: Image.Image, points: np.ndarray | None, size: int = CROP) -> Image.Image:
    """The canonical crop (`size`², middle finger up, fixed palm scale, thumb left); with no
    landmarks (failure to acquire), the plain image resized — the un-aligned fallback."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    if points is None or not np.isfinite(points).all():
        return Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    m, _ = alignment_matrix(points, size)
    fill = border_colour(rgb)  # outside the photo: its border colour
    out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=fill)
    return Image.fromarray(out)


# ---------------------------------------------------------------- geometry

GAP_PAIRS = (("thumb", "index"), ("index", "middle"), ("middle", "ring"), ("ring", "little"))


def geometry_names() -> list[str]:
    names = [f"{f}_bone{j}" for f in FINGERS for j in range(3)]
    names += [f"{f}_length" for f in FINGERS]
    names += ["palm_width", "palm_diag"]
    names += [f"gap_{a}_{b}" for a, b in GAP_PAIRS]
    names += [f"{f}_width" for f in FINGERS if f != "thumb"]
    return names


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-9))
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def mask_run(mask: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> float:
    """Length (pixels, in half-pixel steps) of the run of foreground through `centre` (x, y),
    perpendicular to `direction`: the width of a finger or palm across its axis, short by up to a
    pixel (each side stops at its last whole half-step inside). NaN where the run touches the
    image border.

    >>> band = np.zeros((20, 20), bool); band[:, 5:12] = True  # a vertical band 7 px wide
    >>> mask_run(band, np.array([8.0, 10.0]), np.array([0.0, 1.0]))
    6.0
    """
    h, w = mask.shape
    n = np.array([-direction[1], direction[0]]) / max(float(np.linalg.norm(direction)), 1e-9)
    width = 0.0
    for sign in (1, -1):
        step = 0.0
        while True:
            x, y = centre + sign * (step + 0.5) * n
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h):
                return float("nan")
            if not mask[yi, xi]:
                break
            step += 0.5
        width += step
    return width


def finger_widths(mask: np.ndarray, points: np.ndarray) -> list[float]:
    """Width of index … little finger (pixels) across the middle of the proximal phalanx
    (MCP → PIP), measured on a boolean hand mask as the run of foreground pixels through that
    point, perpendicular to the bone. NaN where the run touches the image border."""
    out = []
    for f in ("index", "middle", "ring", "little"):
        mcp, pip = points[FINGERS[f][0]], points[FINGERS[f][1]]
        out.append(mask_run(mask, (mcp + pip) / 2, pip - mcp))
    return out


def geometry_features(points: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """View-invariant hand shape (see the module docstring): finger bone lengths (MCP→PIP,
    PIP→DIP, DIP→TIP; thumb CMC→MCP, MCP→IP, IP→TIP), finger lengths, palm width (index MCP →
    little MCP) and palm diagonal (wrist → index MCP), all divided by the palm length (wrist →
    middle MCP); the four finger-gap angles (radians, unsigned); the widths of index … little
    finger over the palm length (NaN without a mask). NaN everywhere without landmarks."""
    n = len(geometry_names())
    if points is None or not np.isfinite(points).all():
        return np.full(n, np.nan, np.float32)
    p = points.astype(np.float64)
    palm = float(np.linalg.norm(p[MIDDLE_MCP] - p[WRIST]))
    feats: list[float] = []
    lengths = []
    for idx in FINGERS.values():
        bones = [float(np.linalg.norm(p[idx[j + 1]] - p[idx[j]])) / palm for j in range(3)]
        feats += bones
        lengths.append(sum(bones))
    feats += lengths
    feats += [float(np.linalg.norm(p[PINKY_MCP] - p[INDEX_MCP])) / palm,
              float(np.linalg.norm(p[INDEX_MCP] - p[WRIST])) / palm]
    for a, b in GAP_PAIRS:
        ia, ib = FINGERS[a], FINGERS[b]
        feats.append(_angle(p[ia[3]] - p[ia[0]], p[ib[3]] - p[ib[0]]))
    widths = finger_widths(mask, p) if mask is not None else [np.nan] * 4
    feats += [wd / palm for wd in widths]
    return np.asarray(feats, np.float32)


def cached_geometry(samples: Sequence[Sample], points: np.ndarray, cache: Path | None = None) -> np.ndarray:
    """(N, D) geometry features (NaN rows for failures to acquire), cached beside the landmarks."""
    from biomatch.embeddings import disk_cached
    from biomatch.hands.masking import hand_mask

    h = hashlib.sha256(model_version().encode() + b"geometry-v1")
    for s in samples:
        h.update(_file_key(s.path).encode() + b"\0")
    path = landmark_cache_path(cache).parent / f"geometry-{h.hexdigest()[:24]}.npy"

    def one(s: Sample, pts: np.ndarray) -> np.ndarray:
        if not np.isfinite(pts).all():
            return geometry_features(None)
        return geometry_features(pts, hand_mask(np.asarray(Image.open(s.path).convert("RGB"))))

    def compute() -> np.ndarray:
        # two threads: decoding and the OpenCV mask release the GIL (a single thread left one of
        # two cores idle for ~10 s of a cold demo); rows keep the samples' order
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            rows = list(pool.map(one, samples, points))
        return np.stack(rows) if rows else np.zeros((0, len(geometry_names())), np.float32)

    return disk_cached(path, len(samples), compute)


class LandmarkViewLoader:
    """Sample index → an image rendered from the photo and its landmarks (`render`), for
    `biomatch.embeddings.extract`. Subclasses name everything their images depend on in `repr`,
    so it can join a feature-cache key."""

    @staticmethod
    def render(image: Image.Image, points: np.ndarray | None) -> Image.Image:
        raise NotImplementedError

    def __init__(self, samples: Sequence[Sample], points: np.ndarray | None) -> None:
        self.samples, self.points = list(samples), points

    def __call__(self, i: int) -> Image.Image:
        from biomatch.data.images import load_image

        pts = None if self.points is None else self.points[i]
        return self.render(load_image(self.samples[i].path), pts)


class AlignedLoader(LandmarkViewLoader):
    """Sample index → canonical hand crop (`align_hand`)."""

    render = staticmethod(align_hand)

    def __repr__(self) -> str:
        return (f"AlignedLoader({model_version()}, crop={CROP}, palm={PALM_FRACTION}, "
                f"center={CENTER_ALONG}, thumb-left, border-median, v1)")


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
