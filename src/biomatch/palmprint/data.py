"""Palmprint ROI datasets (Tongji, TongjiFull, PolyU multispectral green, user folders) as samples.

Layouts (see data/palmprint/SOURCE.md):
- Tongji/ROI/session{1,2}/NNNNN.bmp: files 1-10 are palm 0, 11-20 palm 1, ... in both sessions.
- TongjiFull/session{1,2}/NNNNN.png: the same numbering, 600 palms x 10 images per session.
- PolyU/Multispectral_G/PPP/S_NN_s.bmp: folder = palm, S = session.
- a user folder (``load_layout``): ``<palm>/<session>_<n>.<ext>`` or a ``palms.csv`` (see there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomatch.data.images import file_fingerprint, load_image
from biomatch.errors import InputError, NotFoundError
from biomatch.paths import dataset_dir

DATASETS = ("tongji", "polyu", "tongji_full")
DISPLAY_NAMES = {
    "tongji": "Tongji contactless ROI (10 palms)",
    "polyu": "PolyU multispectral green (10 palms)",
    "tongji_full": "Tongji contactless ROI, full set (600 palms x 2 sessions x 10)",
}
IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class PalmSample:
    """One ROI image: its file, palm id (0-based) and acquisition session (1 or 2)."""

    path: Path
    palm: int
    session: int


def _tongji(root: Path, sub: str = "Tongji/ROI", ext: str = "bmp") -> list[PalmSample]:
    out = []
    for session in (1, 2):
        folder = root / sub / f"session{session}"
        for path in sorted(folder.glob(f"*.{ext}")):
            if not path.stem.isdigit():
                raise InputError(f"unexpected Tongji file name {path} (want NNNNN.{ext})")
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
    """All samples of dataset ``name`` ('tongji', 'polyu', 'tongji_full'), sorted by session, palm, file."""
    key = name.lower()
    if key not in DATASETS:
        raise NotFoundError(f"unknown palmprint dataset {name!r}; choose one of {list(DATASETS)}")
    base = root if root is not None else dataset_dir("palmprint")
    if key == "tongji":
        samples = _tongji(base)
    elif key == "tongji_full":
        samples = _tongji(base, "TongjiFull", "png")
    else:
        samples = _polyu(base)
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


# ----------------------------------------------------------------------------- user layouts

_LAYOUT_NAME = re.compile(r"^(\d+)_([^.]+)\.[A-Za-z]+$")
LAYOUT_HELP = (
    "a folder with one sub-folder per palm holding <session>_<n>.<ext> files (session = 1, 2, ...; "
    f"ext one of {', '.join(IMAGE_EXTS)}), or a CSV file (or <root>/palms.csv) with a header "
    "'path,palm,session' (paths relative to the CSV)"
)


def load_layout(root: Path) -> list[PalmSample]:
    """Samples of a user's ROI collection (``LAYOUT_HELP``); palm names map to ids in sorted order.

    Every file is checked, so a stray or misnamed file fails here with its path instead of
    silently changing the protocol.
    """
    root = Path(root)
    if root.is_file() or (root / "palms.csv").is_file():
        return _layout_csv(root if root.is_file() else root / "palms.csv")
    if not root.is_dir():
        raise NotFoundError(f"palm ROI folder {root} does not exist")
    rows: list[tuple[Path, str, int]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise InputError(f"{entry}: expected one sub-folder per palm, found a file ({LAYOUT_HELP})")
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            match = _LAYOUT_NAME.match(path.name)
            if path.is_dir() or not match or path.suffix.lower() not in IMAGE_EXTS:
                raise InputError(f"{path}: not a <session>_<n>.<ext> image file ({LAYOUT_HELP})")
            rows.append((path, entry.name, int(match.group(1))))
    return _build(rows, root)


def _layout_csv(csv_path: Path) -> list[PalmSample]:
    import csv

    rows: list[tuple[Path, str, int]] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "palm", "session"} <= {f.strip() for f in reader.fieldnames}:
            raise InputError(f"{csv_path}: the header must name the columns path, palm, session")
        for line, rec in enumerate(reader, start=2):
            rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k is not None}
            path = (csv_path.parent / rec["path"]).resolve()
            if not rec["session"].isdigit():
                raise InputError(f"{csv_path}:{line}: session {rec['session']!r} is not a positive integer")
            if not rec["palm"]:
                raise InputError(f"{csv_path}:{line}: empty palm id")
            if not path.is_file():
                raise NotFoundError(f"{csv_path}:{line}: image {path} does not exist")
            rows.append((path, rec["palm"], int(rec["session"])))
    return _build(rows, csv_path)


def _build(rows: list[tuple[Path, str, int]], where: Path) -> list[PalmSample]:
    if not rows:
        raise NotFoundError(f"no palm ROI images under {where} ({LAYOUT_HELP})")
    bad = [r for r in rows if r[2] < 1]
    if bad:
        raise InputError(f"{bad[0][0]}: session must be >= 1, got {bad[0][2]}")
    names = sorted({r[1] for r in rows}, key=lambda n: (len(n), n) if n.isdigit() else (10**9, n))
    ids = {n: i for i, n in enumerate(names)}
    samples = [PalmSample(Path(p), ids[name], session) for p, name, session in rows]
    return sorted(samples, key=lambda s: (s.session, s.palm, s.path.name))


def load_rois_cached(samples: list[PalmSample], size: int = 128) -> np.ndarray:
    """``load_rois`` as uint8 -> float32, cached on disk (12,000 PNGs take ~20 s to decode)."""
    import hashlib

    from biomatch.paths import cache_dir

    h = hashlib.sha256(str(size).encode())
    for s in samples:
        h.update(f"{s.palm}|{s.session}|{file_fingerprint(s.path)}\n".encode())
    path = cache_dir() / "palmprint" / f"rois_{size}_{h.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path).astype(np.float32) / 255.0
    rois = load_rois(samples, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.round(rois * 255).astype(np.uint8))
    tmp.replace(path)
    return rois
