"""GTSRB levers of the workbench: official ROI crop (index.csv), train+val training, TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.workbench.data import load_split, roi_of, roi_to_image
from biomatch.workbench.experiment import (
    TTA_VIEWS,
    ExperimentConfig,
    embed_rows,
    load_image_tensor,
    tta_view,
)


def test_roi_maps_known_box() -> None:
    # a 100x50 original with box (10, 5)-(60, 45) on a 48x48 image: x scale 0.48, y scale 0.96
    assert roi_to_image((10, 5, 60, 45), (100, 50), (48, 48)) == pytest.approx((4.8, 4.8, 28.8, 43.2))
    # 10 % margin per side, clipped to the image
    assert roi_to_image((10, 5, 60, 45), (100, 50), (48, 48), margin=0.1) == pytest.approx(
        (2.4, 0.96, 31.2, 47.04))
    assert roi_to_image((0, 0, 100, 50), (100, 50), (48, 48), margin=0.2) == (0.0, 0.0, 48.0, 48.0)
    with pytest.raises(InputError):
        roi_to_image((10, 5, 5, 45), (100, 50), (48, 48))


def _dataset(root: Path, index: bool = True) -> None:
    rows = ["split,path,class_id,original_file,orig_width,orig_height,roi_x1,roi_y1,roi_x2,roi_y2"]
    for split in ("train", "test"):
        for c in range(2):
            for i in range(5 if split == "train" else 2):
                img = np.zeros((48, 48, 3), np.uint8)
                img[12:36, 12:36] = (255, 0, 0) if c == 0 else (0, 0, 255)  # the "sign" in the box
                rel = f"{split}/{c:02d}/{i:05d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                rows.append(f"{split},{rel},{c},x.ppm,96,96,24,24,72,72")  # box = pixels 12..36 at 48 px
    if index:
        (root / "index.csv").write_text("\n".join(rows) + "\n")


def test_roi_crop_keeps_label_and_fills_with_sign(tmp_path: Path) -> None:
    _dataset(tmp_path)
    split = load_split(tmp_path, seed=0)
    s = split.test[0]
    assert roi_of(s.path) == ((24.0, 24.0, 72.0, 72.0), (96, 96))
    full, crop = load_image_tensor([s], 48), load_image_tensor([s], 48, roi_crop=True)
    assert crop.shape == full.shape == (1, 3, 48, 48)
    # the crop is all sign colour; the whole frame has the black margin
    dominant = 0 if s.identity == "00" else 2
    assert crop[0, dominant].std() < 1e-3 and full[0, dominant].std() > 0.5
    assert split.labels([s])[0] == split.classes.index(s.identity)


def test_roi_crop_without_index_is_a_clear_error(tmp_path: Path) -> None:
    _dataset(tmp_path, index=False)
    split = load_split(tmp_path, seed=0)
    with pytest.raises(NotFoundError, match="index.csv"):
        load_image_tensor(split.test[:1], 48, roi_crop=True)


def test_tta_views_and_config() -> None:
    x = torch.randn(3, 3, 48, 48)
    assert torch.allclose(tta_view(x, 1.0, 0.0, 0.0), x, atol=1e-5)
    shifted = tta_view(x, 1.0, 2.0, 0.0)
    assert torch.allclose(shifted[..., 4:], x[..., 2:-2], atol=1e-5)  # content moves right by 2 px
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 48 * 48, 8))
    emb = embed_rows(model, x, tta=len(TTA_VIEWS))
    assert emb.shape == (3, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cfg = ExperimentConfig(backbone="small_cnn", roi_crop=True, train_on_val=True, tta=2)
    assert cfg.roi_crop and cfg.train_on_val and cfg.tta == 2
    with pytest.raises(InputError):
        ExperimentConfig(tta=9)
