"""Batch samplers for metric learning: P identities × K images, optionally view-aware.

Batch-hard mining needs every identity in a batch to have positives; for cross-view
matching it needs positives *of the other view*, which plain PK sampling does not
guarantee. The view-aware mode draws ceil(K/2) dorsal and floor(K/2) palmar images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from biomatch.errors import InputError


class PKSampler(Sampler[list[int]]):
    """Yields batches of indices: `p` identities × `k` images each (sampled with replacement
    when an identity has fewer than k). With `views` and `view_aware=True`, each identity in
    a batch contributes images of both views (identities lacking a view are skipped).

    An epoch has `batches_per_epoch` batches (default: enough to see each identity once).
    Seeded: epoch `e` uses seed `seed + e`; call `set_epoch(e)` as with DistributedSampler.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        views: Sequence[str] | None = None,
        view_aware: bool = False,
        view_pair: tuple[str, str] = ("dorsal", "palmar"),
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        if p < 2 or k < 1:
            raise InputError(f"PK sampler needs p >= 2 and k >= 1, got p={p}, k={k}")
        if view_aware and (views is None or k < 2):
            raise InputError("view-aware PK sampling needs per-sample views and k >= 2")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.view_aware, self.view_pair = view_aware, view_pair
        labels_arr = np.asarray(labels)
        self._groups: dict[int, list[np.ndarray]] = {}
        for label in np.unique(labels_arr):
            idx = np.flatnonzero(labels_arr == label)
            if view_aware:
                view_arr = np.asarray(views)
                parts = [idx[view_arr[idx] == v] for v in view_pair]
                if all(len(part) for part in parts):
                    self._groups[int(label)] = parts
            else:
                self._groups[int(label)] = [idx]
        if len(self._groups) < p:
            raise InputError(f"only {len(self._groups)} usable identities for p={p}")
        self.batches_per_epoch = batches_per_epoch or max(1, len(self._groups) // p)

    def set_epoch(self, epoch: int) -> None:
        """Change the seed used by the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        labels = np.array(sorted(self._groups))
        queue: list[int] = []
        for _ in range(self.batches_per_epoch):
            if len(queue) < self.p:  # walk identities in shuffled order, refill when used up
                queue += [int(x) for x in rng.permutation(labels) if int(x) not in queue]
            chosen, queue = queue[: self.p], queue[self.p :]
            batch: list[int] = []
            for label in chosen:
                parts = self._groups[label]
                counts = [self.k] if len(parts) == 1 else [(self.k + 1) // 2, self.k // 2]
                for part, count in zip(parts, counts):
                    batch += rng.choice(part, size=count, replace=len(part) < count).tolist()
            yield batch
