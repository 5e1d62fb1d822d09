"""Pose-normalized hand parts: every finger straightened upright and the palm centre, laid out in
one fixed mosaic per image (a backbone entry ``"<backbone>@parts"`` reads these mosaics).

Why: the whole-hand crop (`align_hand`) fixes rotation and scale but not the finger spread. A
subject photographed with fingers apart in one session and together in another is then matched
on pose: the top palms of such queries share the query's spread, not its identity. Cutting each
finger along its own MCP→tip axis removes the spread while keeping each finger's shape, skin and
knuckle texture. All parts share one scale (the palm length, wrist → middle MCP), so relative
finger lengths stay visible. Fingers are placed by anatomy (thumb … little), the thumb side of
every strip to the left, so a dorsal and a palmar mosaic of one hand line up although the two
photos are mirror images.

Layout of the 224² mosaic (pixels): top, five 44×144 strips thumb, index, middle, ring, little
(MCP → tip upright; the thumb from its CMC); bottom, a 150×80 patch of the palm (or dorsum)
centre; the rest is the photo's border colour. No landmarks (failure to acquire): the plain
image resized, the same fallback as `align_hand`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from biomatch.hands.landmarks import (
    FINGERS,
    INDEX_MCP,
    MIDDLE_MCP,
    PINKY_MCP,
    WRIST,
    LandmarkViewLoader,
    border_colour,
    model_version,
)

MOSAIC = 224  # mosaic side, pixels
STRIP = (44, 144)  # finger strip (width, height), pixels
STRIP_SPAN = 2.0  # finger strip height in palm lengths (a middle finger is ~1.7 palm lengths, MCP → tip)
STRIP_WIDTH = 0.45  # finger strip width in palm lengths (about one finger and a half, stretched 1.4×)
STRIP_BASE = 0.15  # the strip starts this many palm lengths below the finger's base joint
PALM_PATCH = (150, 80)  # palm (or dorsum) centre patch, pixels; 100 px per palm length
FINGER_ORDER = ("thumb", "index", "middle", "ring", "little")  # left to right, 44 px apart from x = 2
PALM_SLOT = (37, 144)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    if not np.isfinite(n) or n < 1e-6:
        raise ValueError("degenerate landmarks")
    return v / n


def part_matrix(center: np.ndarray, up: np.ndarray, thumb_side: np.ndarray, size_in: tuple[float, float],
                size_out: tuple[int, int]) -> np.ndarray:
    """2×3 affine from image to a part patch: `center` → patch centre, `up` → patch up, and the
    perpendicular that points away from `thumb_side` → patch right; `size_in` (width, height in
    image pixels) fills `size_out` (pixels).

    >>> m = part_matrix(np.array([10.0, 10.0]), np.array([0.0, -1.0]), np.array([-1.0, 0.0]), (4, 8), (4, 8))
    >>> (m @ np.array([10.0, 6.0, 1.0])).tolist()  # 4 px above the centre → top edge, middle
    [2.0, 0.0]
    """
    u = _unit(np.asarray(up, np.float64))
    v = np.array([-u[1], u[0]])  # perpendicular
    if float(v @ thumb_side) > 0:
        v = -v  # the thumb side maps to the left of the patch
    sx, sy = size_out[0] / size_in[0], size_out[1] / size_in[1]
    rot = np.stack([v * sx, -u * sy])  # rows: patch x, patch y (y grows downwards)
    t = np.array(size_out, np.float64) / 2 - rot @ np.asarray(center, np.float64)
    return np.hstack([rot, t[:, None]])


def parts_mosaic(image: Image.Image, points: np.ndarray | None) -> Image.Image:
    """The 224² mosaic of upright fingers and palm centre (see the module docstring)."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    if points is None or not np.isfinite(points).all():
        return Image.fromarray(rgb).resize((MOSAIC, MOSAIC), Image.BILINEAR)
    p = points.astype(np.float64)
    palm = float(np.hypot(*(p[MIDDLE_MCP] - p[WRIST])))
    if palm < 1e-6:
        return Image.fromarray(rgb).resize((MOSAIC, MOSAIC), Image.BILINEAR)
    thumb_side = p[INDEX_MCP] - p[PINKY_MCP]
    fill = border_colour(rgb)
    out = np.empty((MOSAIC, MOSAIC, 3), np.uint8)
    out[:] = fill
    h_in = STRIP_SPAN * palm
    w_in = STRIP_WIDTH * palm

    def paste(m: np.ndarray, size: tuple[int, int], slot: tuple[int, int]) -> None:
        patch = cv2.warpAffine(rgb, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=fill)
        out[slot[1]:slot[1] + size[1], slot[0]:slot[0] + size[0]] = patch

    for slot, finger in enumerate(FINGER_ORDER):
        joints = FINGERS[finger]
        base = p[joints[0]]
        up = _unit(p[joints[-1]] - base)
        center = base + up * (h_in / 2 - STRIP_BASE * palm)
        paste(part_matrix(center, up, thumb_side, (w_in, h_in), STRIP), STRIP, (2 + slot * STRIP[0], 0))
    palm_center = p[[WRIST, INDEX_MCP, MIDDLE_MCP, PINKY_MCP]].mean(axis=0)
    palm_in = (PALM_PATCH[0] / 100 * palm, PALM_PATCH[1] / 100 * palm)
    paste(part_matrix(palm_center, p[MIDDLE_MCP] - p[WRIST], thumb_side, palm_in, PALM_PATCH), PALM_PATCH,
          PALM_SLOT)
    return Image.fromarray(out)


class PartsLoader(LandmarkViewLoader):
    """Sample index → parts mosaic (`parts_mosaic`)."""

    render = staticmethod(parts_mosaic)

    def __repr__(self) -> str:
        return (f"PartsLoader({model_version()}, mosaic={MOSAIC}, strip={STRIP}, span={STRIP_SPAN}, "
                f"width={STRIP_WIDTH}, base={STRIP_BASE}, palm={PALM_PATCH}, thumb-left, border-median, v1)")
