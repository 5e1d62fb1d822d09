"""The dorsal→palmar protocol: subject-disjoint seeded splits of subjects with both views;
queries = dorsal images of test subjects, gallery = palmar images of test subjects."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from biomatch.data.datasets import Sample, load_hands11k
from biomatch.data.splits import cross_view_identities, split_identities
from biomatch.paths import dataset_dir

QUERY_VIEW, GALLERY_VIEW = "dorsal", "palmar"


@dataclass(frozen=True)
class HandsSplit:
    """Train/val/test samples of one split seed (only subjects that have both views)."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    seed: int

    @staticmethod
    def queries(samples: Sequence[Sample]) -> list[Sample]:
        return [s for s in samples if s.view == QUERY_VIEW]

    @staticmethod
    def gallery(samples: Sequence[Sample]) -> list[Sample]:
        return [s for s in samples if s.view == GALLERY_VIEW]


def load_hands(root: str | None = None) -> list[Sample]:
    """11k Hands samples from `root`, the shared data or the vendored sample."""
    return load_hands11k(root or dataset_dir("hands11k"))


HIRES_DATASET = "hands11k_hires"  # 772 photos at 640×480 (../shared/data/hands11k_hires/SOURCE.md)


def load_hires_hands(root: str | None = None) -> list[Sample]:
    """The 640×480 11k Hands subset (same HandInfo.csv layout); a clear NotFoundError when absent."""
    return load_hands11k(root or dataset_dir(HIRES_DATASET))


@dataclass(frozen=True)
class ResolutionSplit:
    """The resolution protocol (issue #14 §3): test subjects = the high-resolution set's subjects
    with both views; the heads train on the low-resolution subjects (both views) not among them.
    `lowres_test` is the low-resolution set's own images of the test subjects that have both
    views there; `hires_test` the high-resolution images of every test subject."""

    train: list[Sample]
    test_subjects: list[str]
    lowres_test: list[Sample]
    hires_test: list[Sample]


def resolution_split(lowres: Sequence[Sample], hires: Sequence[Sample]) -> ResolutionSplit:
    """Subject-disjoint train (low-res) / test (hires subjects with both views) split."""
    from biomatch.errors import InputError

    views = (QUERY_VIEW, GALLERY_VIEW)
    test = set(cross_view_identities(hires, views))
    if not test:
        raise InputError("no subject of the high-resolution set has both dorsal and palmar images")
    lowres_both = set(cross_view_identities(lowres, views))
    train_ids = lowres_both - test
    if not train_ids:
        raise InputError("every low-resolution subject is a test subject: nothing left to train on")
    train = [s for s in lowres if s.identity in train_ids]
    return ResolutionSplit(train=train, test_subjects=sorted(test),
                           lowres_test=[s for s in lowres if s.identity in lowres_both & test],
                           hires_test=[s for s in hires if s.identity in test])


def make_split(samples: Sequence[Sample], seed: int, fractions: Sequence[float] = (0.68, 0.11, 0.21)) -> HandsSplit:
    """Split the subjects that have both views; subjects with one view are left out."""
    usable = cross_view_identities(samples, (QUERY_VIEW, GALLERY_VIEW))
    parts = split_identities(usable, fractions, seed)
    sets = [set(p) for p in parts]
    groups = [[s for s in samples if s.identity in ids] for ids in sets]
    while len(groups) < 3:
        groups.append([])
    return HandsSplit(groups[0], groups[1], groups[2], seed)


# Seed roles (issue #14): every choice is made on the tuning seeds; the report seeds are run once,
# after the choices are frozen, and give the headline numbers. The validation seeds sit between:
# a candidate picked among many probes on the tuning seeds must also win there, under a rule fixed
# before, so that the report seeds do not absorb the selection; they choose nothing themselves.
TUNING_SEEDS = range(5)
VALIDATION_SEEDS = range(5, 10)
REPORT_SEEDS = range(10, 20)
ROLE_SEEDS = {"tuning": TUNING_SEEDS, "validation": VALIDATION_SEEDS, "report": REPORT_SEEDS}
# The method frozen on the tuning seeds (configs/<name>.yaml): the demo runs it, the report rows show it.
# A candidate becomes it when it passes the stages fixed before its report run (tuning rule, validation
# seeds, the demo's time); the report run then reports and chooses nothing, in either direction.
BEST_METHOD = "hands_e8xpl1_xcov_trh_hn_sc"


def role_record(role: str, seeds_done: Iterable[int]) -> dict:
    """The seed-role fields of a result file: its role, the seeds that role plans, and whether all
    of them are in (a killed run is written with `complete: False`).

    >>> role_record("validation", [5, 6])
    {'seed_role': 'validation', 'seeds_planned': [5, 6, 7, 8, 9], 'complete': False}
    """
    if role not in ROLE_SEEDS:
        raise ValueError(f"unknown seed role {role!r} (one of {sorted(ROLE_SEEDS)})")
    planned = list(ROLE_SEEDS[role])
    return {"seed_role": role, "seeds_planned": planned, "complete": set(planned) <= set(seeds_done)}


def result_name(method: str, role: str) -> str:
    """Name of a method's dorsal→palmar benchmark result (benchmarks/results/<name>.json) for a seed role."""
    return f"hands_dorsal_palmar_{method}_{role}"


def seed_role(seeds: Sequence[int]) -> str:
    """The role (a key of `ROLE_SEEDS`) that holds every one of `seeds`, else 'other' (seeds of
    two roles, or of none, are never mixed into one column)."""
    seeds = list(seeds)
    for role, members in ROLE_SEEDS.items():
        if seeds and all(s in members for s in seeds):
            return role
    return "other"
