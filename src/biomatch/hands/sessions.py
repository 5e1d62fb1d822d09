"""Capture sessions of 11k Hands subjects, read off the image numbering, and the split of a
dorsal→palmar result into same-session and cross-session queries.

Why: 11k Hands numbers its photos in capture order (Hand_0000002 … Hand_0011744), and 182 of its
190 subjects occupy one run of numbers (the widest gap inside a subject is 21 in HandInfo.csv, 33
in the bundled subset). Eight subjects come back thousands of numbers later (gaps of 4,432 to
9,893): a second photo session, with other lighting, accessories and sometimes only one view. A
dorsal query whose subject has no palm from its own session must be matched on the hand alone,
without the session's lighting and accessories. On the report seeds of the best hands method they
are 2 % of the queries and about 40 % of the mean rank above 1 (BENCHMARKS.md). This module only
labels them; the protocol and the headline numbers do not change.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biomatch.data.datasets import Sample
from biomatch.metrics.retrieval import chance_first_rank

SESSION_GAP = 1000  # numbers between two photos of one subject that start a new session (see above)
_NUMBER = re.compile(r"(\d+)")


def image_number(path: Path) -> int:
    """The capture-order number in an 11k Hands file name (Hand_0001234.jpg → 1234).

    >>> image_number(Path("images/Hand_0001234.jpg"))
    1234
    """
    found = _NUMBER.findall(path.stem)
    if not found:
        raise ValueError(f"no image number in {path.name!r} (expected Hand_NNNNNNN.jpg)")
    return int(found[-1])


def capture_sessions(samples: Sequence[Sample], gap: int = SESSION_GAP) -> dict[Path, int]:
    """Session index (0, 1, …) of every sample within its subject: a new session starts where
    the subject's next image number is more than `gap` after the previous one.

    >>> s = [Sample(Path(f"Hand_{n:07d}.jpg"), "a") for n in (5, 9, 9950, 9960)] + [Sample(Path("Hand_0000007.jpg"), "b")]
    >>> sorted(capture_sessions(s).values())
    [0, 0, 0, 1, 1]
    """
    by_subject: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for s in samples:
        by_subject[s.identity].append((image_number(s.path), s.path))
    out: dict[Path, int] = {}
    for items in by_subject.values():
        items.sort()
        session = 0
        for i, (number, path) in enumerate(items):
            if i and number - items[i - 1][0] > gap:
                session += 1
            out[path] = session
    return out


def cross_session_queries(queries: Sequence[Sample], gallery: Sequence[Sample]) -> np.ndarray:
    """Per query: True where no gallery image of its subject comes from the query's session."""
    sessions = capture_sessions([*queries, *gallery])
    palms = {(g.identity, sessions[g.path]) for g in gallery}
    return np.array([(q.identity, sessions[q.path]) not in palms for q in queries], dtype=bool)


def session_breakdown(first_ranks: Sequence[int] | np.ndarray, queries: Sequence[Sample],
                      gallery: Sequence[Sample]) -> dict[str, dict[str, float | int | None]]:
    """R@1 and mean first-correct rank over same-session and over cross-session queries
    (None where a group has no query), with the group sizes, the mean rank a random gallery
    order would give the same queries (`chance_mean_rank`), and the cross-session subjects."""
    ranks = np.asarray(first_ranks)
    if len(ranks) != len(queries):
        raise ValueError(f"{len(ranks)} ranks for {len(queries)} queries")
    cross = cross_session_queries(queries, gallery)
    palms = Counter(g.identity for g in gallery)
    chance = np.array([chance_first_rank(len(gallery), palms[q.identity]) for q in queries])
    out: dict[str, dict[str, float | int | None]] = {}
    for name, mask in (("same_session", ~cross), ("cross_session", cross)):
        r = ranks[mask]
        out[name] = {"n_queries": int(mask.sum()),
                     "recall@1": float((r == 1).mean()) if len(r) else None,
                     "mean_rank": float(r.mean()) if len(r) else None,
                     "chance_mean_rank": float(chance[mask].mean()) if len(r) else None}
    out["cross_session"]["subjects"] = len({q.identity for q, c in zip(queries, cross) if c})
    return out
