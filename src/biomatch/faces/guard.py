"""The face-crop guard: ``--embedder face-crop`` skips detection, so it must not embed photos
that are clearly not face crops (an uncropped photo falsely accepted 74 % of impostors).

A crop passes when BlazeFace finds a face whose eyes sit where an LFW-framed crop puts them:
inter-ocular distance between ``MIN_IOD`` and ``MAX_IOD`` of the image width and the eye
midpoint within ``MAX_MID_OFFSET`` (fraction of the size) of ``MID``. The limits were set on
300 LFW crops of folds 1-2 (tuning): IOD 0.154-0.367 (median 0.290), midpoint (0.503, 0.423),
99th percentile offset 0.079, maximum 0.221; the share of real crops refused is measured on
the other folds by ``benchmarks/lfw_verification.py``. A face at half the crop's scale (IOD
about 0.145) is refused.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from biomatch.errors import InputError

MIN_IOD = 0.15
MAX_IOD = 0.50
MID = (0.503, 0.423)
MAX_MID_OFFSET = 0.22
GUARD_DETECTORS = ("blazeface", "blazeface-full")
GUARD_SPEC = {"detectors": list(GUARD_DETECTORS), "min_iod": MIN_IOD, "max_iod": MAX_IOD, "mid": list(MID),
              "max_mid_offset": MAX_MID_OFFSET}


def crop_geometry(image: Image.Image) -> tuple[float, float] | None:
    """(inter-ocular distance / width, eye-midpoint offset from ``MID``), or None with no face."""
    from biomatch.faces.landmarks import detect_landmarks

    det = detect_landmarks(image, GUARD_DETECTORS)
    if det is None:
        return None
    w, h = image.size
    eyes = det.points[:2]
    iod = float(np.linalg.norm(eyes[1] - eyes[0]) / w)
    mid = eyes.mean(0) / np.array([w, h], np.float64)
    return iod, float(np.linalg.norm(mid - np.array(MID)))


def check_face_crop(image: Image.Image, name: str = "image") -> str:
    """Return "crop" when ``image`` looks like a face crop; InputError naming the problem otherwise."""
    geo = crop_geometry(image)
    hint = "use --embedder face (detects and aligns the face)"
    if geo is None:
        raise InputError(f"{name} is not a face crop: no face found in it; {hint}")
    iod, off = geo
    if iod < MIN_IOD:
        raise InputError(f"{name} is not a face crop: the face covers too little of the image "
                         f"(eye distance {iod:.2f} of the width, crops have >= {MIN_IOD}); {hint}")
    if iod > MAX_IOD or off > MAX_MID_OFFSET:
        raise InputError(f"{name} is not a face crop: the face is off-centre or too close "
                         f"(eye distance {iod:.2f} of the width, eye midpoint {off:.2f} off centre); {hint}")
    return "crop"
