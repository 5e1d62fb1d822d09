"""Multi-stage "tap" features of an EfficientNet(-Lite) backbone for dorsal→palmar matching.

Measured on the bundled 11k Hands images (see configs/hands_d_*.yaml): the globally pooled
last feature map of an ImageNet CNN is a weak cross-view cue, while per-channel statistics
(mean and standard deviation, the "style" of AdaIN) of the *early* stages carry what the
dorsal and palmar photos of one subject share: skin colour and texture, accessories and
the photo session's lighting. A tap is `"<stage>:<pool>"`:

- stage: `1`…`7` (the end of EfficientNet stage n; stage 2 of Lite0 is 24 channels at
  stride 4, stage 3 40 ch at stride 8, stage 4 80 ch and stage 5 112 ch at stride 16) or
  `head` (the final 1×1 conv map, what `Backbone.forward` pools);
- pool: `avg`, `std` (per-channel spatial standard deviation), `gem`, `gridN` (N×N
  layout-keeping average pooling) or `cov` (the channel covariance, second-order "style":
  which channels vary together over the hand, see `cov_pool`); `mavg`, `mstd`, `mcov` are the
  same statistics over the hand's pixels only (`hand_weights`, `masked_pool`).

Each tap's vector is L2-normalized before concatenation, so a 24-d colour-like tap weighs as
much as a 1280-d one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from biomatch.errors import InputError

POOLS = ("avg", "std", "gem", "cov")
HAND_POOLS = ("mavg", "mstd", "mcov")  # the same statistics over hand pixels only (masked_pool)


def parse_tap(tap: str) -> tuple[str, str]:
    """`"3:std"` → ("3", "std"); raises InputError on anything else."""
    stage, _, pool = tap.partition(":")
    stage, pool = stage.strip(), pool.strip()
    ok_stage = stage == "head" or (stage.isdigit() and 1 <= int(stage) <= 7)
    ok_pool = pool in POOLS or pool in HAND_POOLS or (pool.startswith("grid") and pool[4:].isdigit() and int(pool[4:]) >= 1)
    if not (ok_stage and ok_pool):
        raise InputError(f"bad tap {tap!r}: use '<stage 1-7 or head>:<avg|std|gem|cov|gridN|mavg|mstd|mcov>'")
    return stage, pool


def taps_id(taps: Sequence[str]) -> str:
    """Short stable id of a tap list, for feature-cache names."""
    return hashlib.sha256("|".join(taps).encode()).hexdigest()[:10]


def pool_map(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, H, W) → (B, D) by one of the tap pools."""
    if pool == "avg":
        return x.mean(dim=(-2, -1))
    if pool == "std":
        return x.flatten(2).std(dim=2)
    if pool == "gem":
        return x.clamp(min=1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    if pool == "cov":
        return cov_pool(x)
    if pool in HAND_POOLS:
        raise InputError(f"the {pool!r} pool needs the hand mask: use masked_pool (TapFeatures does)")
    return grid_pool(x, int(pool[4:]))


def cov_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, C·(C+1)/2): the upper triangle (row-major, diagonal included) of the
    channel covariance over the H·W positions, signed-square-rooted.

    Why: mean and std per channel (the `avg`/`std` taps) are first-order statistics of each
    channel alone; skin texture and lighting also show in which channels vary *together* (the
    Gram matrix of style transfer; bilinear pooling). The signed square root is the usual
    normalization of second-order pooling (it evens out a few dominant entries).

    >>> x = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]]])  # 2 channels, 1×2 positions
    >>> cov_pool(x).tolist()  # var(ch0) = 1, cov = 0, var(ch1) = 0
    [[1.0, 0.0, 0.0]]
    """
    flat = x.flatten(2)
    flat = flat - flat.mean(dim=2, keepdim=True)
    return signed_sqrt_upper(flat @ flat.transpose(1, 2) / flat.shape[2])


def signed_sqrt_upper(cov: torch.Tensor) -> torch.Tensor:
    """(B, C, C) covariances → (B, C·(C+1)/2): the upper triangle (row-major, diagonal included),
    signed-square-rooted — the second-order taps' output (`cov_pool`, `masked_pool`'s `mcov`)."""
    c = int(cov.shape[1])  # channels are fixed by the network; the batch stays symbolic for ONNX export
    rows, cols = torch.triu_indices(c, c)
    upper = cov[:, rows, cols]
    return torch.sign(upper) * upper.abs().sqrt()


def hand_weights(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], sat_thr: float = 28 / 255,
                 val_thr: float = 150 / 255) -> torch.Tensor:
    """(B, 3, H, W) normalized images → (B, 1, H, W) float, 1 on the hand, 0 on the sheet.

    The rule of `biomatch.hands.masking.hand_mask` (skin is saturated or darker than the near-white
    sheet) in tensor ops that export to ONNX, so the mask rides inside the feature pass; a 5×5
    majority filter stands in for its morphological close/open (no connected components here)."""
    rgb = images * torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1) + \
        torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    top, low = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
    saturation = (top - low) / top.clamp(min=1e-6)
    hand = ((saturation > sat_thr) | (top < val_thr)).to(images.dtype)
    return (F.avg_pool2d(hand, 5, stride=1, padding=2, count_include_pad=False) > 0.5).to(images.dtype)


def masked_pool(x: torch.Tensor, weights: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, h, w) map, (B, 1, H, W) hand weights at the input's size → (B, D): the mean
    (`mavg`), standard deviation (`mstd`) or signed-square-rooted covariance (`mcov`, as
    `cov_pool`) of each channel over the hand's pixels only.

    Why: the whole-image statistics mix the hand with the sheet around it, so they also say how
    much of the frame the hand fills and how it is posed; over the hand only they describe the
    skin. Measured on tuning seeds 0-4 (XQDA alone, Lite0 photo taps of stages 2-5): 6.20 mean
    rank with the whole-image taps, 6.55 with the hand-only ones, 5.41 with both as separate
    XQDA blocks. An image where no hand pixel is found is pooled uniformly (as the plain pools).

    >>> x = torch.tensor([[[[1.0, 3.0, 100.0]]]])  # 1 channel, 1×3 positions
    >>> round(masked_pool(x, torch.tensor([[[[1.0, 1.0, 0.0]]]]), "mavg").item(), 2)  # the sheet pixel is left out
    2.0
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    big_h, big_w = int(weights.shape[-2]), int(weights.shape[-1])
    kh, kw = -(-big_h // h), -(-big_w // w)  # the map's stride ("same" padding rounds its size up)
    cell = F.avg_pool2d(weights, (kh, kw), stride=(kh, kw), ceil_mode=True) if (kh, kw) != (1, 1) else weights
    if tuple(cell.shape[-2:]) != (h, w):
        raise InputError(f"hand mask {big_h}×{big_w} does not tile the {h}×{w} feature map")
    cell = cell + 1e-4  # no hand found: uniform weights
    cell = cell / cell.sum(dim=(-2, -1), keepdim=True)
    mu = (x * cell).sum(dim=(-2, -1))
    if pool == "mavg":
        return mu
    centred = x - mu[..., None, None]
    if pool == "mstd":
        return (centred * centred * cell).sum(dim=(-2, -1)).clamp(min=0).sqrt()
    if pool != "mcov":
        raise InputError(f"unknown hand-only pool {pool!r}: use one of {HAND_POOLS}")
    flat = centred.flatten(2)
    return signed_sqrt_upper((flat * cell.flatten(2)) @ flat.transpose(1, 2))


def grid_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C·n·n): `adaptive_avg_pool2d(x, n)` written as static slices.

    Why not adaptive_avg_pool2d itself: the ONNX exporter cannot export it when the traced
    feature map's spatial size is symbolic, which broke `gridN` taps on the ONNX Runtime feature
    path (biomatch.models.onnx_features). The bins are the same: rows floor(i·H/n) to
    ceil((i+1)·H/n), likewise for columns.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    cells = [x[..., (i * h) // n: -((-(i + 1) * h) // n), (j * w) // n: -((-(j + 1) * w) // n)].mean(dim=(-2, -1))
             for i in range(n) for j in range(n)]
    return torch.stack(cells, dim=-1).flatten(1)


def stage_ends(body: nn.Module) -> list[int]:
    """Block indices where each EfficientNet stage ends (the output channel count changes next)."""
    blocks = getattr(body, "_blocks", None)
    if blocks is None:
        raise InputError("tap features need an EfficientNet(-Lite) backbone (efficientnet_lite0/lite1/lite2)")
    chans = [b._project_conv.out_channels for b in blocks]
    return [i for i in range(len(blocks)) if i == len(blocks) - 1 or chans[i + 1] != chans[i]]


class TapFeatures(nn.Module):
    """Backbone → concatenated, per-tap L2-normalized tap features; runs the network only as
    deep as the deepest tap needs. Carries the backbone's `weights_id`, `mean`, `std`."""

    def __init__(self, backbone: nn.Module, taps: Sequence[str]) -> None:
        super().__init__()
        if not taps:
            raise InputError("TapFeatures needs at least one tap")
        self.backbone, self.taps = backbone, [parse_tap(t) for t in taps]
        body = backbone.body
        ends = stage_ends(body)
        if len(ends) < 7:
            raise InputError(f"expected 7 EfficientNet stages, found {len(ends)}")
        self.block_of = {str(n + 1): ends[n] for n in range(7)}
        self.need_head = any(s == "head" for s, _ in self.taps)
        self.last_block = len(body._blocks) - 1 if self.need_head else max(self.block_of[s] for s, _ in self.taps)
        self.weights_id, self.mean, self.std = backbone.weights_id, backbone.mean, backbone.std
        self.input_size = backbone.input_size

    def tap_dims(self) -> list[int]:
        """Width of each tap's vector, in tap order (to slice a concatenation)."""
        body = self.backbone.body
        out = []
        for stage, pool in self.taps:
            ch = body._conv_head.out_channels if stage == "head" else \
                body._blocks[self.block_of[stage]]._project_conv.out_channels
            out.append(ch * (ch + 1) // 2 if pool in ("cov", "mcov") else ch * (int(pool[4:]) ** 2 if pool.startswith("grid") else 1))
        return out

    def hand_only(self) -> list[bool]:
        """Per tap: is it pooled over the hand's pixels only (`mavg`/`mstd`/`mcov`)?"""
        return [pool in HAND_POOLS for _, pool in self.taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.backbone.body
        hand = hand_weights(x, self.mean, self.std) if any(self.hand_only()) else None
        maps: dict[str, torch.Tensor] = {}
        wanted = {self.block_of[s]: s for s, _ in self.taps if s != "head"}
        x = body._swish(body._bn0(body._conv_stem(x)))
        n = len(body._blocks)
        for i, block in enumerate(body._blocks[: self.last_block + 1]):
            rate = body._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * float(i) / n if rate else None)
            if i in wanted:
                maps[wanted[i]] = x
        if self.need_head:
            maps["head"] = body._swish(body._bn1(body._conv_head(x)))
        return torch.cat([F.normalize(masked_pool(maps[s], hand, p) if hand is not None and p in HAND_POOLS
                                      else pool_map(maps[s], p), dim=1) for s, p in self.taps], dim=1)


# One pass of an EfficientNet serves every hands method: the early-stage statistics of method (d)/(e)
# and the pooled last map ("head:avg" = what `Backbone.forward` returns) of methods (a)-(c).
UNION_TAPS = ("2:avg", "2:std", "3:avg", "3:std", "4:avg", "4:std", "5:avg", "5:std", "head:avg")


def union_slices(extractor: TapFeatures, wanted: Sequence[str]) -> list[slice]:
    """Column slices of `wanted` taps inside the output of `extractor` (which holds them all)."""
    names = [f"{s}:{p}" for s, p in extractor.taps]
    bounds = [0]
    for d in extractor.tap_dims():
        bounds.append(bounds[-1] + d)
    out = []
    for tap in wanted:
        stage, pool = parse_tap(tap)
        i = names.index(f"{stage}:{pool}")
        out.append(slice(bounds[i], bounds[i + 1]))
    return out
