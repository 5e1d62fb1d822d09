"""Identity-disjoint, seeded splits (subjects never cross train/val/test)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biomatch.data.datasets import Sample, identities
from biomatch.errors import InputError


def split_identities(
    ids: Sequence[str], fractions: Sequence[float] = (0.68, 0.11, 0.21), seed: int = 0
) -> list[list[str]]:
    """Shuffle identities with `seed` and cut them by `fractions` (which must sum to 1).

    Rounding: each part gets round(f·n) identities, the last part gets the rest, and each
    non-zero fraction gets at least one identity.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise InputError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    ids = sorted(set(ids))
    if len(ids) < sum(1 for f in fractions if f > 0):
        raise InputError(f"{len(ids)} identities cannot fill {len(fractions)} splits")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        if i == len(fractions) - 1:
            count = len(ids) - start
        else:
            count = max(int(round(frac * len(ids))), 1 if frac > 0 else 0)
        parts.append(sorted(shuffled[start : start + count]))
        start += count
    return parts


def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = (0.68, 0.11, 0.21), seed: int = 0
) -> list[list[Sample]]:
    """Split samples by identity (see `split_identities`)."""
    parts = split_identities(identities(samples), fractions, seed)
    lookup = {ident: i for i, part in enumerate(parts) for ident in part}
    out: list[list[Sample]] = [[] for _ in parts]
    for s in samples:
        out[lookup[s.identity]].append(s)
    return out


def cross_view_identities(samples: Sequence[Sample], views: tuple[str, str] = ("dorsal", "palmar")) -> list[str]:
    """Identities that have at least one image of each of the given views."""
    seen: dict[str, set[str]] = {}
    for s in samples:
        seen.setdefault(s.identity, set()).add(s.view)
    return sorted(i for i, v in seen.items() if set(views) <= v)


def stratified_split(
    samples: Sequence[Sample], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Per-identity stratified train/test split (closed-set classification protocols).

    Each identity with ≥ 2 images puts round(test_fraction·n) (at least 1) in test.
    """
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[Sample]] = {}
    for s in samples:
        by_id.setdefault(s.identity, []).append(s)
    train, test = [], []
    for ident in sorted(by_id):
        group = by_id[ident]
        order = rng.permutation(len(group))
        n_test = max(1, int(round(test_fraction * len(group)))) if len(group) > 1 else 0
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test
