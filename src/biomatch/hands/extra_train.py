"""Extra training photos for the dorsal→palmar heads, from the 640×480 subset (issue #14 §4).

The low-resolution set holds 2,101 of the 11,076 11k Hands photos; the 640×480 subset holds
645 more photos of 122 of its subjects (615 of 118 subjects with both views). Converted the way
the low-resolution set was made (`biomatch.hands.resolution.lowres_copy`: rotate 180°, squash
to 180×180, JPEG 75), they give the heads more photos per training identity. The protocol does
not change: only photos of a split's *training* subjects are added to its training set; test
queries and gallery stay the low-resolution set's own images.

The converted copies of every extra photo (all subjects) are made once, so the feature cache of
"low-res set + extras" is the same file for every split seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import get_args

from biomatch.config import MethodConfig
from biomatch.data.datasets import Sample

EXTRA_SOURCES = get_args(MethodConfig.model_fields["extra_train"].annotation)  # ("none", "hires_180")


def extra_photos(kind: str, lowres: Sequence[Sample], out_root: Path | None = None,
                 hires_root: str | None = None) -> list[Sample]:
    """Every photo of the `kind` source that the low-resolution set lacks, converted like it,
    for the subjects the low-resolution set has (sorted by path). `kind` "none" gives [].

    Raises NotFoundError when the 640×480 subset is not there (e.g. a clone without ../shared)."""
    from biomatch.errors import InputError

    if kind == "none":
        return []
    if kind != "hires_180":
        raise InputError(f"unknown extra training source {kind!r}; expected one of {', '.join(EXTRA_SOURCES)}")
    from biomatch.hands.protocol import load_hires_hands
    from biomatch.hands.resolution import VARIANTS, make_variant
    from biomatch.paths import cache_dir

    have = {s.path.name for s in lowres}
    subjects = {s.identity for s in lowres}
    wanted = [s for s in load_hires_hands(hires_root) if s.path.name not in have and s.identity in subjects]
    converted, _ = make_variant(wanted, VARIANTS["180x180"], (out_root or cache_dir()) / "hands_extra_train")
    return sorted(converted, key=lambda s: str(s.path))


def for_subjects(extras: Iterable[Sample], subjects: Iterable[str]) -> list[Sample]:
    """The extra photos of these subjects only (a split's training subjects)."""
    keep = set(subjects)
    return [s for s in extras if s.identity in keep]
