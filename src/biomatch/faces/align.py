"""Five-point face alignment: a similarity transform onto the 112x112 ArcFace template.

MobileFaceNet (foamliu) was trained on faces warped so that the eye centres, nose tip and
mouth corners land on the InsightFace/ArcFace reference points below (the 96x112 points of
Wen et al. shifted 8 px right to make a square 112x112 crop). The same template is used for
any subset of landmarks a detector gives (a detector without mouth corners uses their mean).

The transform is the least-squares similarity (rotation, uniform scale, translation; no
reflection) of Umeyama (1991), the one ``skimage.transform.SimilarityTransform`` estimates;
the warp is bilinear with black borders, as in InsightFace's ``norm_crop``.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from biomatch.errors import InputError

SIZE = 112
# (x, y) in pixels of the 112x112 crop: eye (image left), eye (image right), nose tip,
# mouth corner (image left), mouth corner (image right).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
POINTS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
TEMPLATE: dict[str, tuple[float, float]] = {n: (float(x), float(y)) for n, (x, y) in zip(POINTS, ARCFACE_TEMPLATE)}
TEMPLATE["mouth_center"] = tuple(float(v) for v in ARCFACE_TEMPLATE[3:5].mean(0))  # type: ignore[assignment]
# dlib's 5-point model marks the nose base, not the tip: its median position on mesh-aligned
# crops of 299 LFW images of folds 1-2 (tuning folds).
TEMPLATE["nose_base"] = (56.0, 79.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix M of the similarity that maps ``src`` (N, 2) onto ``dst`` (N, 2) in least squares."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise InputError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise InputError("landmarks coincide: no transform")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) mapped through a 2x3 affine matrix."""
    p = np.asarray(points, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def template_points(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Template coordinates for named landmarks (KeyError for a name the template lacks)."""
    return np.array([TEMPLATE[n] for n in names], dtype=np.float64)


def align(image: Image.Image | np.ndarray, points: np.ndarray, names: tuple[str, ...] | list[str],
          size: int = SIZE) -> Image.Image:
    """The face warped so that ``points`` (named ``names``) sit on the template; size x size RGB."""
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    dst = template_points(names) * (size / SIZE)
    m = similarity_transform(np.asarray(points, np.float64), dst)
    out = cv2.warpAffine(np.ascontiguousarray(rgb), m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return Image.fromarray(out)
