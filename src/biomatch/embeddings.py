"""Batch feature extraction with an on-disk cache keyed by backbone + weights + transform + files.

Frozen-backbone training on a 2-core CPU is only practical when each image goes through the
backbone once; this module makes that the default. The cache key hashes everything that
changes the features, so a stale cache cannot be read by mistake.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset

from biomatch.data.datasets import Sample
from biomatch.data.images import file_fingerprint, load_image
from biomatch.paths import cache_dir
from biomatch.progress import CountProgress


class ImageDataset(Dataset):
    """Samples → (tensor, label index); optional horizontal mirror of every image. `loader`
    (sample index → PIL image) replaces reading the file, e.g. to align the hand first."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor],
                 labels: Sequence[int] | None = None, mirror: bool = False,
                 loader: Callable[[int], Image.Image] | None = None) -> None:
        self.samples, self.transform, self.mirror = list(samples), transform, mirror
        self.labels = list(labels) if labels is not None else [0] * len(self.samples)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.loader(i) if self.loader is not None else load_image(self.samples[i].path)
        if self.mirror:
            img = ImageOps.mirror(img)
        return self.transform(img), self.labels[i]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def prefetched_batches(dataset: Dataset, batch_size: int, depth: int = 2) -> Iterator[torch.Tensor]:
    """The dataset's image tensors stacked in batches, in order, with the next `depth` batches
    decoded and transformed in a thread while the caller runs the model on this one.

    Why: on a 2-core CPU, JPEG decoding, hand alignment and resizing take 2-4 ms per image, a
    sixth of the frozen features' time when done between the model's batches; the model's
    runtime (ONNX Runtime, PyTorch) releases the GIL, so a thread overlaps them without the
    start-up cost of DataLoader worker processes. Same tensors as a DataLoader without workers.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    n = len(dataset)  # type: ignore[arg-type]

    def make(lo: int) -> torch.Tensor:
        return torch.stack([dataset[i][0] for i in range(lo, min(lo + batch_size, n))])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque(pool.submit(make, lo) for lo in range(0, min(n, depth * batch_size), batch_size))
        next_lo = depth * batch_size
        while pending:
            batch = pending.popleft().result()
            if next_lo < n:
                pending.append(pool.submit(make, next_lo))
                next_lo += batch_size
            yield batch


@torch.no_grad()
def extract(
    model: nn.Module, samples: Sequence[Sample], transform: Callable, batch_size: int = 64,
    mirror: bool = False, num_workers: int = 0, progress: bool = True, desc: str = "embedding",
    loader: Callable[[int], Image.Image] | None = None,
) -> np.ndarray:
    """Run `model` over the images (eval mode) and return float32 rows in sample order. With
    `progress` and stderr not a terminal (a piped log), a plain line is printed about every
    quarter of the work instead of a progress bar, so long phases never run silent."""
    model.eval()
    device = _device_of(model)
    dataset = ImageDataset(samples, transform, mirror=mirror, loader=loader)
    if num_workers > 0:
        batches: Iterable[torch.Tensor] = (x for x, _ in DataLoader(dataset, batch_size=batch_size,
                                                                     num_workers=num_workers, shuffle=False))
    else:
        batches = prefetched_batches(dataset, batch_size)
    out = []
    every = batch_size * max(1, -(-len(dataset) // batch_size) // 4)  # about a quarter, in whole batches
    with CountProgress(len(dataset), desc, every, progress) as bar:
        for x in batches:
            out.append(model(x.to(device)).float().cpu())
            bar.update(len(x))
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def cache_key(backbone_name: str, weights_id: str, transform: Callable, samples: Sequence[Sample],
              mirror: bool = False, extra: str = "") -> str:
    """Hash of everything that determines the cached features."""
    h = hashlib.sha256()
    for part in (backbone_name, weights_id, repr(transform), str(mirror), extra):
        h.update(part.encode() + b"\0")
    for s in samples:
        h.update(file_fingerprint(s.path).encode() + b"\0")
    return h.hexdigest()[:24]


def cached_features(
    backbone: nn.Module, backbone_name: str, samples: Sequence[Sample], transform: Callable,
    mirror: bool = False, batch_size: int = 64, cache: Path | None = None, progress: bool = True,
    loader: Callable[[int], Image.Image] | None = None, loader_id: str = "",
) -> np.ndarray:
    """Backbone features of `samples`, computed once and then read from `cache`/features/*.npy.
    A custom `loader` must come with a `loader_id` naming everything it depends on (it joins
    the cache key)."""
    job = FeatureJob(backbone, backbone_name, samples, transform, None, mirror, loader, loader_id, batch_size)
    return job.run(cache, progress)


@dataclass
class FeatureJob:
    """One `cached_features` call, described up front so that several can run side by side.
    `size` is the (H, W) of the images the transform makes (needed to run side by side)."""

    backbone: nn.Module
    name: str
    samples: Sequence[Sample]
    transform: Callable
    size: tuple[int, int] | None = None
    mirror: bool = False
    loader: Callable[[int], Image.Image] | None = None
    loader_id: str = ""
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.loader is not None and not self.loader_id:
            raise ValueError("a custom loader needs a loader_id for the cache key")

    def cache_path(self, cache: Path | None) -> Path:
        weights_id = getattr(self.backbone, "weights_id", "unknown")
        key = cache_key(self.name, weights_id, self.transform, self.samples, self.mirror, extra=self.loader_id)
        return feature_cache_path(self.name, key, cache)

    def run(self, cache: Path | None, progress: bool) -> np.ndarray:
        """The job's features, read from the cache or computed in one piece and stored."""
        return disk_cached(self.cache_path(cache), len(self.samples),
                           lambda: self.extract_rows(0, len(self.samples), progress))

    def extract_rows(self, lo: int, hi: int, progress: bool) -> np.ndarray:
        """Features of samples[lo:hi], not cached (the whole job, or a piece of it)."""
        base = self.loader
        loader = base if base is None or lo == 0 else (lambda i: base(i + lo))  # it indexes the whole job
        piece = f" [{lo}:{hi}]" if (lo, hi) != (0, len(self.samples)) else ""
        desc = f"{self.name} features{' (mirrored)' if self.mirror else ''}{piece}"
        return extract(self.backbone, self.samples[lo:hi], self.transform, self.batch_size, mirror=self.mirror,
                       progress=progress, desc=desc, loader=loader)


JOB_PIECES = 2  # each job to compute is split in this many pieces, so that no job runs alone at the end


def run_feature_jobs(jobs: Sequence[FeatureJob], cache: Path | None = None, progress: bool = True) -> list[np.ndarray]:
    """The features of every job, in order (each cached as `cached_features` would). Where jobs
    must be computed on ONNX Runtime and torch has two or more threads, their pieces run two at
    a time, each session on half the threads.

    Why: on a 2-core CPU one EfficientNet-Lite session keeps both cores only partly busy (small
    batches of small maps, JPEG decoding in between); two sessions of one thread each finish the
    same work ~12 % sooner, and splitting each job in pieces keeps both busy to the end. ONNX
    Runtime's outputs depend neither on its thread count nor on the batch
    (tests/test_onnx_features.py), so the features are the same as one job at a time.
    """
    from biomatch.models.onnx_features import OrtFeatures

    todo = [j for j in jobs if not j.cache_path(cache).is_file() and len(j.samples) >= JOB_PIECES]
    threads = torch.get_num_threads()
    width = min(2, threads)
    if not todo or width < 2 or not all(isinstance(j.backbone, OrtFeatures) and j.size for j in todo):
        return [j.run(cache, progress) for j in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=width) as pool:
        pieces = {}
        for j in todo:
            # the ONNX export is not thread-safe: each runs here, one after another, while the
            # workers already extract the jobs exported before it
            j.backbone.threads = max(1, threads // width)  # type: ignore[union-attr]
            j.backbone.prepare(j.size)  # type: ignore[union-attr,arg-type]
            cuts = np.linspace(0, len(j.samples), JOB_PIECES + 1).round().astype(int)
            pieces[id(j)] = [pool.submit(j.extract_rows, int(lo), int(hi), progress) for lo, hi in pairwise(cuts)]
        out = []
        for j in jobs:
            if id(j) in pieces:
                futures = pieces[id(j)]
                out.append(disk_cached(j.cache_path(cache), len(j.samples),
                                       lambda futures=futures: np.concatenate([f.result() for f in futures])))
            else:
                out.append(j.run(cache, progress))
        return out


def feature_cache_path(name: str, key: str, cache: Path | None = None) -> Path:
    """`<cache>/features/<name>-<key>.npy` (the folder is created)."""
    folder = (cache or cache_dir()) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{key}.npy"


def disk_cached(path: Path, n_rows: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array stored at `path` if it has `n_rows` rows; otherwise `compute()` it and store it
    atomically (tmp file + rename), so a crash never leaves a truncated cache behind."""
    if path.is_file():
        feats = np.load(path)
        if feats.shape[0] == n_rows:
            return feats
    feats = compute()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, feats)
    os.replace(tmp, path)
    return feats
