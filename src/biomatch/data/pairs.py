"""Pair batches for twin (siamese) networks: balanced random positive/negative pairs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from biomatch.errors import InputError


def random_pairs(
    labels: Sequence[int], n_pairs: int, seed: int, views: Sequence[str] | None = None,
    view_pair: tuple[str, str] | None = None, positive_fraction: float = 0.5,
) -> np.ndarray:
    """(n_pairs, 3) array of (i, j, same): about half same-identity pairs, half different.

    With `view_pair=("dorsal", "palmar")` the first element is always of the first view and
    the second of the second view (the query→gallery geometry).
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    if view_pair is not None:
        if views is None:
            raise InputError("view_pair needs per-sample views")
        v = np.asarray(views)
        left_pool, right_pool = np.flatnonzero(v == view_pair[0]), np.flatnonzero(v == view_pair[1])
    else:
        left_pool = right_pool = np.arange(len(labels_arr))
    right_by_label = {int(k): right_pool[labels_arr[right_pool] == k] for k in np.unique(labels_arr[right_pool])}
    anchors = np.array([i for i in left_pool if int(labels_arr[i]) in right_by_label])
    if len(anchors) == 0 or len(right_by_label) < 2:
        raise InputError("need at least two identities with images for both pair sides")
    out = np.empty((n_pairs, 3), dtype=np.int64)
    for t in range(n_pairs):
        i = int(rng.choice(anchors))
        if rng.random() < positive_fraction:
            candidates = right_by_label[int(labels_arr[i])]
            candidates = candidates[candidates != i] if len(candidates) > 1 else candidates
            j, same = int(rng.choice(candidates)), 1
        else:
            j = int(rng.choice(right_pool))
            while labels_arr[j] == labels_arr[i]:
                j = int(rng.choice(right_pool))
            same = 0
        out[t] = (i, j, same)
    return out


def random_triplets(labels: Sequence[int], n_triplets: int, seed: int) -> np.ndarray:
    """(n, 3) array of (anchor, positive, negative) indices drawn uniformly at random."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    by_label = {int(k): np.flatnonzero(labels_arr == k) for k in np.unique(labels_arr)}
    usable = [k for k, v in by_label.items() if len(v) >= 2]
    if not usable or len(by_label) < 2:
        raise InputError("triplets need an identity with 2+ images and at least two identities")
    out = np.empty((n_triplets, 3), dtype=np.int64)
    keys = np.array(sorted(by_label))
    for t in range(n_triplets):
        k = int(rng.choice(usable))
        a, p = rng.choice(by_label[k], size=2, replace=False)
        neg_label = int(rng.choice(keys[keys != k]))
        out[t] = (a, p, int(rng.choice(by_label[neg_label])))
    return out


class PairBatchSampler(Sampler[list[int]]):
    """Batches of `pairs_per_batch` random pairs flattened as [i0, j0, i1, j1, …]; new pairs
    every epoch (seed + epoch)."""

    def __init__(self, labels: Sequence[int], pairs_per_batch: int, batches_per_epoch: int, seed: int = 0,
                 views: Sequence[str] | None = None, view_pair: tuple[str, str] | None = None) -> None:
        self.labels, self.views, self.view_pair = list(labels), views, view_pair
        self.pairs_per_batch, self.batches_per_epoch, self.seed, self.epoch = (
            pairs_per_batch, batches_per_epoch, seed, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        pairs = random_pairs(self.labels, self.pairs_per_batch * self.batches_per_epoch, self.seed + self.epoch,
                             self.views, self.view_pair)
        for b in range(self.batches_per_epoch):
            chunk = pairs[b * self.pairs_per_batch : (b + 1) * self.pairs_per_batch]
            yield chunk[:, :2].reshape(-1).tolist()
