"""Batch samplers for metric learning: P identities × K images, optionally view-aware.

Batch-hard mining needs every identity in a batch to have positives; for cross-view
matching it needs positives *of the other view*, which plain PK sampling does not
guarantee. The view-aware mode draws ceil(K/2) dorsal and floor(K/2) palmar images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

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

    def _choose(self, queue: list[int], labels: np.ndarray, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """The batch's p identities and the queue left: walk identities in shuffled order,
        refill when used up."""
        if len(queue) < self.p:
            queue += [int(x) for x in rng.permutation(labels) if int(x) not in queue]
        return queue[: self.p], queue[self.p :]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        labels = np.array(sorted(self._groups))
        queue: list[int] = []
        for _ in range(self.batches_per_epoch):
            chosen, queue = self._choose(queue, labels, rng)
            batch: list[int] = []
            for label in chosen:
                parts = self._groups[label]
                counts = [self.k] if len(parts) == 1 else [(self.k + 1) // 2, self.k // 2]
                for part, count in zip(parts, counts):
                    batch += rng.choice(part, size=count, replace=len(part) < count).tolist()
            yield batch


class LookalikePKSampler(PKSampler):
    """PK batches made of groups of look-alike identities: each of `p // group` anchors (taken
    from the shuffled walk, as in PKSampler) brings `group - 1` identities drawn at random from
    its `top` nearest neighbours (a fixed table, e.g. from `cross_view_neighbours`).

    Why: batch-hard mining only sees the negatives inside a batch, and with 16 random identities
    out of ~150 a subject's look-alikes rarely share its batch; the dorsal→palmar errors that
    cost the most rank come from a few look-alike subjects (BENCHMARKS.md, worst queries). This
    is class-level hard-example mining (Suh et al., CVPR 2019, "Stochastic class-based hard
    example mining"), with the neighbour table computed once from the frozen features.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, neighbours: Mapping[int, Sequence[int]],
                 group: int = 4, top: int = 8, **kwargs) -> None:
        super().__init__(labels, p, k, **kwargs)
        if not 1 <= group <= p:
            raise InputError(f"look-alike groups need 1 <= group <= p, got group={group}, p={p}")
        if top < group - 1:
            raise InputError(f"top={top} neighbours cannot fill groups of {group}")
        self.group, self.top = group, top
        self.neighbours = {label: [int(n) for n in neighbours.get(label, ()) if int(n) in self._groups and n != label]
                           for label in self._groups}

    def _choose(self, queue: list[int], labels: np.ndarray, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        chosen: list[int] = []
        while len(chosen) < self.p:
            if not queue:
                queue = [int(x) for x in rng.permutation(labels) if int(x) not in chosen]
            anchor = queue.pop(0)
            if anchor in chosen:
                continue
            chosen.append(anchor)
            pool = [n for n in self.neighbours[anchor][: self.top] if n not in chosen]
            take = min(self.group - 1, self.p - len(chosen), len(pool))
            for n in (rng.choice(pool, size=take, replace=False).tolist() if take else []):
                chosen.append(int(n))
        taken = set(chosen)
        return chosen, [x for x in queue if x not in taken]


def cross_view_neighbours(features: np.ndarray, labels: Sequence[int], views: Sequence[str],
                          view_pair: tuple[str, str] = ("dorsal", "palmar"), top: int = 8) -> dict[int, list[int]]:
    """Each identity's `top` nearest other identities by the symmetrized cosine between one's
    mean (L2-normalized) `view_pair[0]` feature and the other's mean `view_pair[1]` feature —
    the identities a cross-view matcher confuses it with. Identities lacking a view get none.

    >>> f = np.array([[1, 0], [1, 0], [0.9, 0.1], [0.9, 0.1], [0, 1], [0, 1.0]])
    >>> cross_view_neighbours(f, [0, 0, 1, 1, 2, 2], ["dorsal", "palmar"] * 3, top=1)
    {0: [1], 1: [0], 2: [1]}
    """
    x = np.asarray(features, dtype=np.float64)
    lab, view = np.asarray(labels), np.asarray(views)
    if x.ndim != 2 or x.shape[0] != lab.shape[0] or lab.shape != view.shape:
        raise InputError(f"features {x.shape}, {lab.shape[0]} labels and {view.shape[0]} views do not match")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    ids = [int(i) for i in np.unique(lab) if all(((lab == i) & (view == v)).any() for v in view_pair)]
    means = []
    for v in view_pair:
        m = np.stack([x[(lab == i) & (view == v)].mean(0) for i in ids])
        means.append(m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12))
    sim = means[0] @ means[1].T
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :top]
    return {i: [ids[j] for j in row] for i, row in zip(ids, order)}
