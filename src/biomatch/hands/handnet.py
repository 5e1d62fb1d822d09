"""Features of a network trained on hands: MediaPipe's hand-landmark CNN, read from the inside.

Every other hands branch is an ImageNet network. MediaPipe's `hand_landmark_full.tflite` (shipped in
the mediapipe 0.10.14 wheel, so it runs offline) is a MobileNetV2-like CNN trained to regress 21
hand landmarks on hand crops of both sides, so its inner maps have seen only hands. Its input is a
224×224 hand crop with the fingers up, which is what the landmark-aligned crop
(`biomatch.hands.landmarks.align_hand`) is. `ai-edge-litert` runs it and keeps the intermediate
tensors (`experimental_preserve_all_tensors`), from which this module pools:

- head taps: per-channel mean and standard deviation of `add_5` (14×14×112) and `add_8` (7×7×192);
- XQDA extras: the channel covariances (signed square root, upper triangle) of `add_1` (28×28×40)
  and `add_5`, second-order texture as the `"<stage>:cov"` taps of the EfficientNet branches.

Each tap is L2-normalized, as `biomatch.hands.features.TapFeatures` does. Measured on the tuning
seeds as a sixth branch of hands_e10xpl1_xcov_trh with 8 heads per branch (configs/
hands_e8xpl1_xcov_trh_hn.yaml): mean rank 2.113 over three head-seed draws against 2.192.
Written by hand: no library reads a TFLite model's inner tensors into pooled features.

`NetSpec` names a model and its maps, so the same reader serves the wheel's palm detector
(`PALM_DETECTOR`), screened as a late-fused score in `benchmarks/hands_fusion_screen.py`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.data.datasets import Sample
from biomatch.errors import NotFoundError
from biomatch.progress import CountProgress

TENSOR_PREFIX = "model_1/model/{}/add"  # how both hand models name a residual sum's output
FEATURES_VERSION = "handnet-v1"


@dataclass(frozen=True)
class NetSpec:
    """A TFLite model shipped in the mediapipe wheel and the inner maps read from it."""

    relpath: tuple[str, ...]  # inside the mediapipe package
    input_size: int  # square RGB input, values in [0, 1]
    head_maps: tuple[str, ...]  # per-channel mean/std taps
    cov_maps: tuple[str, ...]  # channel covariances


HAND_LANDMARK = NetSpec(("modules", "hand_landmark", "hand_landmark_full.tflite"), 224,
                        head_maps=("add_5", "add_8"),  # mean/std taps the heads read
                        cov_maps=("add_1", "add_5"))  # covariances XQDA (and the heads, whitened) read as well
# the palm detector (an SSD-style net on 192×192 frames); its [0, 1] input range was chosen on its own palm
# confidence (0.81–0.99 on four aligned crops; [-1, 1] gave 0.45 on one), before any retrieval number
PALM_DETECTOR = NetSpec(("modules", "palm_detection", "palm_detection_full.tflite"), 192,
                        head_maps=("add_8", "add_13", "add_18", "add_23"), cov_maps=("add_8", "add_13"))


def model_path(spec: NetSpec = HAND_LANDMARK) -> Path:
    """The model inside the installed mediapipe package (never downloaded)."""
    import mediapipe

    path = Path(os.path.dirname(mediapipe.__file__)).joinpath(*spec.relpath)
    if not path.is_file():
        raise NotFoundError(f"{path} is missing: biomatch needs mediapipe 0.10.14, whose wheel ships the hand models")
    return path


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


# the arithmetic stays in the maps' float32, as in the probe that chose this branch (session 20)


def mean_std(fmap: np.ndarray) -> list[np.ndarray]:
    """(H, W, C) map → [per-channel mean, per-channel std], each L2-normalized.

    >>> [np.round(t, 3).tolist() for t in mean_std(np.array([[[1.0, 0.0]], [[3.0, 0.0]]]))]
    [[1.0, 0.0], [1.0, 0.0]]
    """
    flat = fmap.reshape(-1, fmap.shape[-1])
    return [_unit(flat.mean(0)), _unit(flat.std(0))]


def signed_sqrt_cov(fmap: np.ndarray) -> np.ndarray:
    """(H, W, C) map → the upper triangle (row-major, diagonal included) of its channel covariance
    over the positions, signed-square-rooted and L2-normalized (as `features.cov_pool`).

    >>> np.round(signed_sqrt_cov(np.array([[[1.0, 2.0], [3.0, 2.0]]])), 3).tolist()  # var 1, cov 0, var 0
    [1.0, 0.0, 0.0]
    """
    flat = fmap.reshape(-1, fmap.shape[-1])
    flat = flat - flat.mean(0)
    cov = flat.T @ flat / flat.shape[0]
    rows, cols = np.triu_indices(cov.shape[0])
    upper = cov[rows, cols]
    return _unit(np.sign(upper) * np.sqrt(np.abs(upper)))


class HandNet:
    """A hand model (`spec`, the hand-landmark CNN by default) with its inner maps kept:
    `taps(rgb)` → (head taps, XQDA extras)."""

    def __init__(self, threads: int = 1, spec: NetSpec = HAND_LANDMARK) -> None:
        from ai_edge_litert.interpreter import Interpreter

        import warnings

        self.spec = spec
        with warnings.catch_warnings():  # "preserve all tensors is for debugging": it is what we need
            warnings.simplefilter("ignore")
            self.interpreter = Interpreter(model_path=str(model_path(spec)), experimental_preserve_all_tensors=True,
                                           num_threads=threads)
        self.interpreter.allocate_tensors()
        names = {t["name"]: t["index"] for t in self.interpreter.get_tensor_details()}
        self.tensor = {}
        for m in {*spec.head_maps, *spec.cov_maps}:
            found = [i for n, i in names.items() if n.startswith(TENSOR_PREFIX.format(m))]
            if len(found) != 1:
                raise NotFoundError(f"tensor {m!r} not found in {spec.relpath[-1]} (another mediapipe version?)")
            self.tensor[m] = found[0]
        self.input = self.interpreter.get_input_details()[0]["index"]

    def maps(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """(size, size, 3) uint8 RGB → {map name: (H, W, C) float map}."""
        size = self.spec.input_size
        if rgb.shape != (size, size, 3):
            raise ValueError(f"{self.spec.relpath[-1]} reads {size}×{size} RGB crops, got shape {rgb.shape}")
        self.interpreter.set_tensor(self.input, (rgb.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        return {m: self.interpreter.get_tensor(i)[0].copy() for m, i in self.tensor.items()}

    def taps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(head taps: mean/std of the spec's head maps, XQDA extras: covariances of its cov maps),
        each tap unit-norm."""
        maps = self.maps(rgb)
        head = np.concatenate([t for m in self.spec.head_maps for t in mean_std(maps[m])])
        extra = np.concatenate([signed_sqrt_cov(maps[m]) for m in self.spec.cov_maps])
        return head.astype(np.float32), extra.astype(np.float32)


def head_width() -> int:
    """Width of the hand-landmark net's head taps (2 × the channels of HAND_LANDMARK.head_maps)."""
    return 2 * (112 + 192)


def cached_handnet_features(samples: Sequence[Sample], points: np.ndarray, cache: Path | None = None,
                            progress: bool = True, paint: Callable[[Image.Image], Image.Image] | None = None
                            ) -> np.ndarray:
    """(N, head_width() + covariance width) hand-net taps of each sample's landmark-aligned crop
    (the un-aligned photo resized where no hand was found), head taps first; cached beside the
    landmarks, keyed on the image files, the landmark model, the crop and `paint` (a
    `biomatch.hands.masking.BackgroundFill` for the background controls, applied to the crop as
    the other aligned branches apply it; its repr joins the key)."""
    from biomatch.data.images import file_fingerprint
    from biomatch.embeddings import disk_cached
    from biomatch.hands.landmarks import AlignedLoader, landmark_cache_path

    loader = AlignedLoader(samples, points)
    key = f"{FEATURES_VERSION}|{loader!r}|{model_path().stat().st_size}" + (f"|{paint!r}" if paint else "")
    h = hashlib.sha256(key.encode())
    for s in samples:
        h.update(file_fingerprint(s.path).encode() + b"\0")
    path = landmark_cache_path(cache).parent / f"handnet-{h.hexdigest()[:24]}.npy"

    def rows(net: HandNet, lo: int, hi: int, bar: CountProgress) -> np.ndarray:
        out = []
        for i in range(lo, hi):
            crop = loader(i).convert("RGB")
            head, extra = net.taps(np.asarray(paint(crop) if paint else crop))
            out.append(np.concatenate([head, extra]))
            bar.update(1)
        return np.stack(out) if out else np.zeros((0, head_width()), np.float32)

    def compute() -> np.ndarray:
        # Why two workers: TFLite releases the GIL while it runs, so two one-thread interpreters keep both
        # cores of the 2-core machine busy, as run_feature_jobs does for the EfficientNet branches (2,101
        # images: 12 s instead of 22 s). With one BLAS thread: the workers' small covariance products on a
        # multi-threaded OpenBLAS spin on each other's core and made two workers no faster than one. The
        # rows do not depend on how the images are shared out (tests/test_hands_handnet.py).
        from concurrent.futures import ThreadPoolExecutor

        import torch
        from threadpoolctl import threadpool_limits

        workers = max(1, min(2, torch.get_num_threads(), len(samples)))
        cuts = np.linspace(0, len(samples), workers + 1).round().astype(int)
        nets = [HandNet() for _ in range(workers)]  # an interpreter per worker: one is not thread-safe
        with (CountProgress(len(samples), "hand-net features", 500, progress) as bar,
              threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool):
            parts = [pool.submit(rows, net, int(lo), int(hi), bar) for net, lo, hi in zip(nets, cuts[:-1], cuts[1:])]
            return np.concatenate([f.result() for f in parts])

    return disk_cached(path, len(samples), compute)
