"""Seeded pairs and triplets for any identity dataset, and the batch samplers that feed them
to the shared training loop as flattened rows ([i0, j0, i1, j1, …] or [a0, p0, n0, …]).

Built on `biomatch.data.pairs`; adds exactly balanced pairs (the shared generator flips a
coin per pair, so its balance is only approximate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from biomatch.data.pairs import random_pairs, random_triplets
from biomatch.errors import InputError


def balanced_pairs(labels: Sequence[int], n_pairs: int, seed: int) -> np.ndarray:
    """(n_pairs, 3) rows (i, j, same) with exactly ceil(n/2) same-identity pairs (i ≠ j) and
    floor(n/2) different-identity pairs, in seeded random order. y = same = 1 → same identity."""
    if n_pairs < 2:
        raise InputError(f"n_pairs must be >= 2 for a balanced set, got {n_pairs}")
    labels_arr = np.asarray(labels)
    counts = np.unique(labels_arr, return_counts=True)[1]
    if not (counts >= 2).any():
        raise InputError("positive pairs need an identity with at least 2 images")
    n_pos = (n_pairs + 1) // 2
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31 - 1, size=3)
    # anchors of identities with one image cannot have a positive: restrict them for positives
    pos_ok = np.isin(labels_arr, np.unique(labels_arr)[counts >= 2])
    pos_idx = np.flatnonzero(pos_ok)
    pos = random_pairs(labels_arr[pos_idx], n_pos, int(seeds[0]), positive_fraction=1.0)
    pos[:, :2] = pos_idx[pos[:, :2]]
    neg = random_pairs(labels_arr, n_pairs - n_pos, int(seeds[1]), positive_fraction=0.0)
    out = np.concatenate([pos, neg])
    return out[np.random.default_rng(int(seeds[2])).permutation(len(out))]


def triplets(labels: Sequence[int], n_triplets: int, seed: int) -> np.ndarray:
    """(n, 3) rows (anchor, positive, negative): uniformly random ("random mining")."""
    return random_triplets(labels, n_triplets, seed)


class TupleBatchSampler(Sampler[list[int]]):
    """Batches of `per_batch` tuples from `make(labels, n, seed)`, flattened row-wise; each
    batch drawn with its own seed from (seed, epoch, batch), so runs are reproducible and
    `set_epoch` gives fresh tuples."""

    def __init__(self, labels: Sequence[int], make: Callable[[Sequence[int], int, int], np.ndarray],
                 width: int, per_batch: int, batches_per_epoch: int, seed: int = 0) -> None:
        if per_batch < 1 or batches_per_epoch < 1:
            raise InputError("per_batch and batches_per_epoch must be >= 1")
        self.labels, self.make, self.width = list(labels), make, width
        self.per_batch, self.batches_per_epoch, self.seed, self.epoch = per_batch, batches_per_epoch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.batches_per_epoch):  # drawn per batch: each batch is balanced on its own
            seed = int(np.random.SeedSequence([self.seed, self.epoch, b]).generate_state(1)[0])
            yield self.make(self.labels, self.per_batch, seed)[:, : self.width].reshape(-1).tolist()
