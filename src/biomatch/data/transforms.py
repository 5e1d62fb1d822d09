"""Image transforms: evaluation preprocessing and the configurable training augmentations."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply in training; all off = evaluation preprocessing."""

    hflip: bool = False
    rotation_deg: float = 0.0
    translate: float = 0.0
    crop_scale: float = 1.0  # RandomResizedCrop lower scale bound; 1.0 = no crop
    color_jitter: float = 0.0

    @classmethod
    def named(cls, name: str) -> "AugmentConfig":
        """Presets: none, flip, light, strong."""
        presets = {
            "none": cls(),
            "flip": cls(hflip=True),
            "light": cls(hflip=True, rotation_deg=10, translate=0.05, color_jitter=0.1),
            "strong": cls(hflip=True, rotation_deg=20, translate=0.1, crop_scale=0.7, color_jitter=0.3),
        }
        if name not in presets:
            from biomatch.errors import InputError

            raise InputError(f"unknown augmentation preset {name!r}; choose from {sorted(presets)}")
        return presets[name]


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Resize to size×size (images here are already square), to tensor, normalize."""
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(mean, std)])


def train_transform(size: int, aug: AugmentConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Augmentations from `aug`, then the evaluation preprocessing."""
    steps: list = []
    if aug.crop_scale < 1.0:
        steps.append(T.RandomResizedCrop(size, scale=(aug.crop_scale, 1.0), ratio=(0.9, 1.1)))
    else:
        steps.append(T.Resize((size, size)))
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip())
    if aug.rotation_deg or aug.translate:
        steps.append(T.RandomAffine(aug.rotation_deg, translate=(aug.translate, aug.translate)))
    if aug.color_jitter:
        c = aug.color_jitter
        steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 3, 0.1)))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
