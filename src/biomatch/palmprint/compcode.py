"""Competitive Code (CompCode, Kong & Zhang 2004): a training-free palmprint matcher.

Palm lines are dark, so at each pixel the orientation whose (zero-mean) real Gabor filter
responds most negatively is the "winner". The winner index j in 0..5 is stored with the
3-bit code 000, 001, 011, 111, 110, 100 so that the Hamming distance between two codes equals
the circular angular distance min(|a - b|, 6 - |a - b|) (0..3). Two palms are compared by
the normalized Hamming distance over the overlapping area, minimized over small
translations (ROI alignment is never exact). The result is a dissimilarity in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from biomatch.errors import InputError

# 3-bit codes per orientation, Hamming distance between rows = circular orientation distance
_BITS = torch.tensor(
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32
)


def gabor_bank(n_orient: int = 6, size: int = 35, sigma: float = 5.6, wavelength: float = 11.0) -> np.ndarray:
    """Real, zero-mean Gabor kernels (n_orient, size, size) at angles j*pi/n_orient."""
    kernels = []
    for j in range(n_orient):
        k = cv2.getGaborKernel((size, size), sigma, j * math.pi / n_orient, wavelength, 1.0, 0.0, ktype=cv2.CV_32F)
        k -= k.mean()  # no DC response: illumination changes do not pick a winner
        kernels.append(k / np.abs(k).sum())
    return np.stack(kernels)


@dataclass(frozen=True)
class CompCode:
    """CompCode encoder + matcher; ``stride`` subsamples the code map (128 / 4 = 32 x 32)."""

    n_orient: int = 6
    stride: int = 4
    max_shift: int = 2
    name: str = "CompCode"

    def encode(self, rois: np.ndarray) -> Tensor:
        """Bit codes (n, 3, h, w) for grayscale ROIs (n, H, W) in [0, 1]."""
        if rois.ndim != 3:
            raise InputError(f"expected grayscale ROIs (n, H, W), got shape {rois.shape}")
        if self.n_orient != 6:
            raise InputError("CompCode's 3-bit code is defined for 6 orientations")
        bank = torch.from_numpy(gabor_bank(self.n_orient)).unsqueeze(1)
        half = bank.shape[-1] // 2
        codes = []
        for start in range(0, rois.shape[0], 256):
            # cv2.filter2D(BORDER_REFLECT) sampled every `stride` pixels = symmetric padding + strided correlation
            block = np.pad(rois[start : start + 256].astype(np.float32), ((0, 0), (half, half), (half, half)), mode="symmetric")
            resp = torch.nn.functional.conv2d(torch.from_numpy(block).unsqueeze(1), bank, stride=self.stride)
            winner = resp.argmin(dim=1)  # most negative = dark line orientation
            codes.append(_BITS[winner].permute(0, 3, 1, 2))
        return torch.cat(codes)

    def encode_reference(self, rois: np.ndarray) -> Tensor:
        """The per-image OpenCV version of ``encode`` (full-resolution filtering, then subsampling); tests only."""
        bank = gabor_bank(self.n_orient)
        codes = []
        for roi in rois.astype(np.float32):
            resp = np.stack([cv2.filter2D(roi, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT) for k in bank])
            winner = torch.from_numpy(resp[:, :: self.stride, :: self.stride].argmin(axis=0))
            codes.append(_BITS[winner].permute(2, 0, 1))
        return torch.stack(codes)

    def dissimilarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Angular distance in [0, 1] between code sets ``a`` (n,3,h,w) and ``b`` (m,3,h,w), min over shifts."""
        if a.shape[1:] != b.shape[1:]:
            raise InputError(f"code shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
        return shifted_hamming(a, b, self.max_shift)


def shifted_hamming(a: Tensor, b: Tensor, max_shift: int, chunk: int = 1024) -> Tensor:
    """min over translations |dy|, |dx| <= max_shift of the normalized Hamming distance (n x m), float32.

    Only the overlap of the two shifted maps is compared, so every shift is normalized by
    its own bit count. Hamming(x, y) = |x| + |y| - 2 x.y for bit vectors, so each shift is one
    matrix product: an exact int8 x int8 -> int32 product (``torch._int_mm``, ~5x a float32
    GEMM on CPUs with VNNI) where available, float32 otherwise; rows go in chunks so memory
    stays ~ chunk x m.
    """
    _, c, h, w = a.shape
    n, m = a.shape[0], b.shape[0]
    best = torch.full((n, m), math.inf, dtype=torch.float32)
    a8, b8 = a.to(torch.int8), b.to(torch.int8)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            ya, yb = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
            xa, xb = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
            fa = a8[:, :, ya, xa].reshape(n, -1)
            fb = b8[:, :, yb, xb].reshape(m, -1)
            bits = fa.shape[1]
            na, nb = fa.sum(1, dtype=torch.float32), fb.sum(1, dtype=torch.float32)
            fbt = _pad_cols(fb).T.contiguous()
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                dot = _int_dot(_pad_cols(fa[start:stop]), fbt)
                diff = dot.mul_(-2.0).add_(na[start:stop, None]).add_(nb[None, :]).div_(bits)
                torch.minimum(best[start:stop], diff, out=best[start:stop])
    return best.clamp_(0.0, 1.0)


def _pad_cols(x: Tensor) -> Tensor:
    """Zero-pad the bit dimension to a multiple of 8 (``_int_mm``'s requirement; zeros add nothing)."""
    extra = (-x.shape[1]) % 8
    return torch.nn.functional.pad(x, (0, extra)) if extra else x.contiguous()


def _int_dot(a: Tensor, bt: Tensor) -> Tensor:
    """Exact a @ bt for 0/1 int8 matrices as float32."""
    if a.shape[0] > 16 and hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(a, bt).to(torch.float32)
        except RuntimeError:  # pragma: no cover - builds without the int8 kernel
            pass
    return a.to(torch.float32) @ bt.to(torch.float32)


def shifted_hamming_loop(a: Tensor, b: Tensor, max_shift: int) -> Tensor:
    """Brute-force reference for ``shifted_hamming`` (one pair and one shift at a time); tests only."""
    _, c, h, w = a.shape
    out = torch.empty(a.shape[0], b.shape[0])
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            best = math.inf
            for dy in range(-max_shift, max_shift + 1):
                for dx in range(-max_shift, max_shift + 1):
                    ya, yb = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
                    xa, xb = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
                    pa, pb = a[i, :, ya, xa], b[j, :, yb, xb]
                    best = min(best, float((pa != pb).float().mean()))
            out[i, j] = best
    return out
