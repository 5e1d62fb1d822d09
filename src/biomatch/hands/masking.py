"""Hand / background segmentation of 11k Hands photos, for the background (session-cue) control.

The 11k Hands images show one hand on a near-white sheet; the sheet's tint, shading and the
camera's white balance differ between photo sessions, and a subject's dorsal and palmar photos
come from one session. Colour/texture statistics (method d) may therefore match the *session*
rather than the hand. `BackgroundFill` removes that cue: it segments the hand (skin is
saturated or darker than the sheet: HSV saturation above `sat_thr` or value below `val_thr`,
then a morphological close/open, the largest connected component and its holes filled) and
paints everything else one constant colour (`mode="fill"`), or, for the opposite control,
paints the (dilated) hand and keeps the background (`mode="only"`; the silhouette stays).

`BackgroundFill` is a picklable callable PIL → PIL with a stable `repr`, so composing it in
front of an eval transform gives feature-cache keys of their own.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MODES = ("fill", "only")


def hand_mask(rgb: np.ndarray, sat_thr: int = 28, val_thr: int = 150, kernel: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) bool, True on the hand (and whatever is attached to it:
    sleeves, rings, watches). Thresholds are on OpenCV's 0–255 HSV scale."""
    import cv2

    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    fg = ((hsv[..., 1] > sat_thr) | (hsv[..., 2] < val_thr)).astype(np.uint8)
    k = kernel or max(3, (min(h, w) // 40) | 1)  # odd, ~2.5 % of the side
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, se)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, se)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (lab == largest).astype(np.uint8)
    # fill holes: background = what a flood fill from the (padded) border reaches
    pad = np.pad(fg, 1)
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return fg.astype(bool) | holes


class BackgroundFill:
    """PIL image → the same image with the background (`mode="fill"`) or the hand dilated by
    `dilate` px (`mode="only"`) painted `color` (an RGB triple)."""

    def __init__(self, mode: str = "fill", color: tuple[int, int, int] = (128, 128, 128), sat_thr: int = 28,
                 val_thr: int = 150, dilate: int = 5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.color = mode, tuple(int(c) for c in color)
        self.sat_thr, self.val_thr, self.dilate = sat_thr, val_thr, dilate

    def __repr__(self) -> str:
        return (f"BackgroundFill(mode={self.mode!r}, color={self.color}, sat_thr={self.sat_thr}, "
                f"val_thr={self.val_thr}, dilate={self.dilate}, v=1)")

    def mask(self, img: Image.Image) -> np.ndarray:
        return hand_mask(np.asarray(img.convert("RGB")), self.sat_thr, self.val_thr)

    def __call__(self, img: Image.Image) -> Image.Image:
        import cv2

        rgb = np.asarray(img.convert("RGB")).copy()
        m = self.mask(img)
        if self.mode == "fill":
            paint = ~m
        else:
            k = 2 * self.dilate + 1
            paint = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
        rgb[paint] = self.color
        return Image.fromarray(rgb)


def background_transform(background: str, color: tuple[int, int, int], transform):
    """`transform` preceded by a `BackgroundFill` unless `background == "keep"`."""
    if background == "keep":
        return transform
    from torchvision import transforms

    return transforms.Compose([BackgroundFill(background, color), transform])
