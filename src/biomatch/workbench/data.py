"""Identity datasets for the workbench: named datasets or any "one folder per identity" root,
split per identity (stratified) into train / validation / test, all seeded.

A dataset root that holds `train/` and `test/` folders (GTSRB) keeps its official test set:
its training images are frames of a few physical signs, so a random split would leak
near-duplicates into test. Validation is always carved out of train, stratified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomatch.data.datasets import Sample, identities, load_identity_folders
from biomatch.data.splits import stratified_split
from biomatch.errors import InputError, NotFoundError

ROI_INDEX = "index.csv"
from biomatch.paths import dataset_dir

NAMED = {"lfw62": "LFW, people with >= 20 images (62 identities)",
         "gtsrb_small": "GTSRB traffic signs, 43 classes (60 train + 20 test per class)"}


@dataclass
class IdentitySplit:
    """Train / validation / test samples of one seeded split; `classes` fixes label indices."""

    dataset: str
    seed: int
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    classes: list[str]
    official_test: bool = False

    def labels(self, samples: Sequence[Sample]) -> np.ndarray:
        """Integer class index of each sample (index into `classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.array([index[s.identity] for s in samples], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"identity {exc.args[0]!r} is not one of this split's classes") from exc

    @property
    def all_samples(self) -> list[Sample]:
        return sorted(self.train + self.val + self.test, key=lambda s: str(s.path))


def resolve_root(dataset: str | Path) -> Path:
    """A named dataset (lfw62, gtsrb_small) or a folder path."""
    if str(dataset) in NAMED:
        return dataset_dir(str(dataset))
    root = Path(dataset)
    if not root.is_dir():
        raise NotFoundError(f"dataset {dataset!r} is neither a named dataset ({', '.join(NAMED)}) nor a folder")
    return root


def load_split(dataset: str | Path, seed: int = 0, test_fraction: float = 0.25,
               val_fraction: float = 0.2) -> IdentitySplit:
    """Seeded per-identity stratified split; official test set kept when the root has one."""
    root = resolve_root(dataset)
    name = str(dataset) if str(dataset) in NAMED else root.name
    if (root / "train").is_dir() and (root / "test").is_dir():
        trainval, test = load_identity_folders(root / "train"), load_identity_folders(root / "test")
        official = True
    else:
        trainval, test = stratified_split(load_identity_folders(root), test_fraction, seed)
        official = False
    if val_fraction > 0:
        train, val = stratified_split(trainval, val_fraction, seed + 10_007)
    else:
        train, val = trainval, []
    classes = identities(trainval)
    unknown = sorted({s.identity for s in test} - set(classes))
    if unknown:
        raise InputError(f"{root}: test identities without training images: {unknown[:5]}")
    if len(classes) < 2:
        raise InputError(f"{root}: need at least two identities, found {len(classes)}")
    return IdentitySplit(name, seed, train, val, test, classes, official)


def roi_to_image(box: Sequence[float], orig_size: tuple[int, int], size: tuple[int, int],
                 margin: float = 0.0) -> tuple[float, float, float, float]:
    """An ROI box (x1, y1, x2, y2) in original pixel coordinates mapped onto an image resized to
    `size` (width, height): scaled by size/orig per axis, grown by `margin` × box size on each
    side and clipped to the image."""
    (x1, y1, x2, y2), (ow, oh), (w, h) = box, orig_size, size
    if ow <= 0 or oh <= 0 or x2 <= x1 or y2 <= y1:
        raise InputError(f"bad ROI box {tuple(box)} for an image of {ow}x{oh}")
    sx, sy = w / ow, h / oh
    bx1, by1, bx2, by2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
    mx, my = (bx2 - bx1) * margin, (by2 - by1) * margin
    return max(0.0, bx1 - mx), max(0.0, by1 - my), min(float(w), bx2 + mx), min(float(h), by2 + my)


_ROI_CACHE: dict[Path, dict[Path, tuple[tuple[float, ...], tuple[int, int]]]] = {}


def roi_table(root: Path) -> dict[Path, tuple[tuple[float, ...], tuple[int, int]]]:
    """{resolved image path: ((x1, y1, x2, y2), (orig_width, orig_height))} from `root/index.csv`
    (the official GTSRB ROI boxes in original pixel coordinates)."""
    import csv

    root = Path(root).resolve()
    if root not in _ROI_CACHE:
        index = root / ROI_INDEX
        if not index.is_file():
            raise NotFoundError(f"roi_crop needs {index} (split, path, orig_width/height, roi_x1..roi_y2); "
                                "it is missing")
        table = {}
        with open(index, newline="") as fh:
            for row in csv.DictReader(fh):
                table[(root / row["path"]).resolve()] = (
                    tuple(float(row[k]) for k in ("roi_x1", "roi_y1", "roi_x2", "roi_y2")),
                    (int(row["orig_width"]), int(row["orig_height"])))
        _ROI_CACHE[root] = table
    return _ROI_CACHE[root]


def roi_of(path: Path) -> tuple[tuple[float, ...], tuple[int, int]]:
    """ROI entry of one image of a `<root>/<split>/<class>/<file>` dataset with `<root>/index.csv`."""
    path = Path(path).resolve()
    table = roi_table(path.parents[2])
    if path not in table:
        raise NotFoundError(f"{path} is not listed in {path.parents[2] / ROI_INDEX}")
    return table[path]
