"""Palmprint ROI datasets (Tongji, PolyU multispectral green) as samples with palm id and session.

Layouts (see data/palmprint/SOURCE.md):
- Tongji/ROI/session{1,2}/NNNNN.bmp: files 1-10 are palm 0, 11-20 palm 1, ... in both sessions.
- PolyU/Multispectral_G/PPP/S_NN_s.bmp: folder = palm, S = session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomatch.data.images import load_image
from biomatch.errors import InputError, NotFoundError
from biomatch.paths import dataset_dir

DATASETS = ("tongji", "polyu")
DISPLAY_NAMES = {"tongji": "Tongji contactless ROI (10 palms)", "polyu": "PolyU multispectral green (10 palms)"}


@dataclass(frozen=True)
class PalmSample:
    """One ROI image: its file, palm id (0-based) and acquisition session (1 or 2)."""

    path: Path
    palm: int
    session: int


def _tongji(root: Path) -> list[PalmSample]:
    out = []
    for session in (1, 2):
        folder = root / "Tongji" / "ROI" / f"session{session}"
        for path in sorted(folder.glob("*.bmp")):
            if not path.stem.isdigit():
                raise InputError(f"unexpected Tongji file name {path.name} (want NNNNN.bmp)")
            out.append(PalmSample(path, (int(path.stem) - 1) // 10, session))
    return out


_POLYU_NAME = re.compile(r"^(\d)_(\d+)_s\.bmp$")


def _polyu(root: Path) -> list[PalmSample]:
    out = []
    for folder in sorted((root / "PolyU" / "Multispectral_G").glob("[0-9]*")):
        for path in sorted(folder.glob("*.bmp")):
            match = _POLYU_NAME.match(path.name)
            if not match:
                raise InputError(f"unexpected PolyU file name {path} (want S_NN_s.bmp)")
            out.append(PalmSample(path, int(folder.name) - 1, int(match.group(1))))
    return out


def load_samples(name: str, root: Path | None = None) -> list[PalmSample]:
    """All samples of dataset ``name`` ('tongji' or 'polyu'), sorted by session then file."""
    key = name.lower()
    if key not in DATASETS:
        raise NotFoundError(f"unknown palmprint dataset {name!r}; choose one of {list(DATASETS)}")
    base = root if root is not None else dataset_dir("palmprint")
    samples = _tongji(base) if key == "tongji" else _polyu(base)
    if not samples:
        raise NotFoundError(f"no {key} palmprint images under {base}")
    return sorted(samples, key=lambda s: (s.session, s.palm, s.path.name))


def split_sessions(samples: list[PalmSample]) -> tuple[list[PalmSample], list[PalmSample]]:
    """(session 1 = train / enrol, session 2 = test), the protocol of DESIGN.md."""
    s1 = [s for s in samples if s.session == 1]
    s2 = [s for s in samples if s.session == 2]
    if not s1 or not s2:
        raise InputError("palmprint protocol needs images from both sessions")
    return s1, s2


def load_rois(samples: list[PalmSample], size: int = 128) -> np.ndarray:
    """Grayscale ROIs as float32 (n, size, size) in [0, 1]; resized only if not already ``size``."""
    arrays = []
    for s in samples:
        img = load_image(s.path, mode="L")
        if img.size != (size, size):
            img = img.resize((size, size))
        arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
    return np.stack(arrays)


def palm_labels(samples: list[PalmSample]) -> np.ndarray:
    """Palm ids of ``samples`` as an int64 array."""
    return np.array([s.palm for s in samples], dtype=np.int64)
