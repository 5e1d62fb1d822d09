"""Dataset adapters: every dataset becomes a list of `Sample`s with identity and view.

Adapters only read metadata and check that files exist; pixels are decoded lazily by
`biomatch.data.images.load_image` so that a bad image is reported with its name.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from biomatch.errors import InputError, NotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    """One image of one identity. `view` is e.g. 'dorsal'/'palmar'; `side` 'left'/'right'."""

    path: Path
    identity: str
    view: str = ""
    side: str = ""
    session: int = 0
    attrs: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


HANDINFO_COLUMNS = ("id", "aspectOfHand", "imageName")


def load_hands11k(root: str | Path, images_dir: str = "images") -> list[Sample]:
    """11k Hands: read HandInfo.csv, keep rows whose image exists under `root/images_dir`.

    `aspectOfHand` ("dorsal right") is split into view and side; every other column
    (age, gender, skinColor, accessories, nailPolish, irregularities) goes to `attrs`.
    """
    root = Path(root)
    csv_path = root / "HandInfo.csv"
    if not csv_path.is_file():
        raise NotFoundError(f"11k Hands metadata not found: {csv_path}")
    image_root = root / images_dir
    if not image_root.is_dir():
        raise NotFoundError(f"11k Hands image folder not found: {image_root}")
    on_disk = {p.name for p in image_root.iterdir()}
    samples: list[Sample] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in HANDINFO_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["imageName"] not in on_disk:
                continue
            aspect = row["aspectOfHand"].strip().lower().split()
            if len(aspect) != 2 or aspect[0] not in ("dorsal", "palmar") or aspect[1] not in ("left", "right"):
                raise InputError(f"{csv_path}:{line}: unexpected aspectOfHand {row['aspectOfHand']!r}")
            attrs = {k: v for k, v in row.items() if k not in HANDINFO_COLUMNS}
            samples.append(
                Sample(image_root / row["imageName"], row["id"], view=aspect[0], side=aspect[1], attrs=attrs)
            )
    if not samples:
        raise InputError(f"no image listed in {csv_path} exists under {image_root}")
    return sorted(samples, key=lambda s: s.path.name)


def load_identity_folders(root: str | Path, view: str = "") -> list[Sample]:
    """Generic adapter: `root/<identity>/<image>`; every sub-folder is one identity."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"dataset folder not found: {root}")
    samples = [
        Sample(path, folder.name, view=view)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise InputError(f"no images found in identity sub-folders of {root}")
    return samples


def identities(samples: Sequence[Sample]) -> list[str]:
    """Sorted distinct identities."""
    return sorted({s.identity for s in samples})
