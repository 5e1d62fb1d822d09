"""The palmprint verification protocol: session 1 = train / enrol / references, session 2 = test.

Two pair sets (DESIGN.md, Protocols):
- ``all-vs-all``: every unordered pair of session-2 images; RSM references are session-1
  images, hence never one of the pair.
- ``test-vs-enrolled``: every (session-2, session-1) pair; references are session-1 images,
  and a reference that is the enrolled image of the pair is left out (col owner).
Matchers return dissimilarities in [0, 1]; metrics get ``-dissimilarity`` as the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from biomatch.errors import InputError
from biomatch.matching.rsm import RSM
from biomatch.palmprint.data import PalmSample, load_rois_cached, load_samples, palm_labels, split_sessions

PairSet = Literal["all-vs-all", "test-vs-enrolled"]
PAIR_SETS: tuple[PairSet, ...] = ("all-vs-all", "test-vs-enrolled")


class Matcher(Protocol):
    """Anything that encodes ROIs and compares two encoded sets with a [0, 1] dissimilarity."""

    name: str

    def encode(self, rois: np.ndarray) -> Tensor: ...

    def dissimilarity(self, a: Tensor, b: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SessionScores:
    """All dissimilarities one matcher needs for both pair sets and RSM, on one dataset."""

    matcher: str
    dataset: str
    test: list[PalmSample]
    enrol: list[PalmSample]
    test_test: Tensor  # n2 x n2
    test_enrol: Tensor  # n2 x n1 (also: test items to the references)
    enrol_enrol: Tensor  # n1 x n1 (enrolled items to the references)
    refs_are_training: bool = False  # the matcher was trained on session 1, i.e. on the references
    allow_training_refs: bool = False

    def pairs(self, pair_set: PairSet) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of the pairs of ``pair_set`` (into test / enrol lists)."""
        n2, n1 = len(self.test), len(self.enrol)
        if pair_set == "all-vs-all":
            i, j = torch.triu_indices(n2, n2, offset=1)
            return i.numpy(), j.numpy()
        if pair_set == "test-vs-enrolled":
            i, j = np.meshgrid(np.arange(n2), np.arange(n1), indexing="ij")
            return i.ravel(), j.ravel()
        raise InputError(f"unknown pair set {pair_set!r}; choose one of {list(PAIR_SETS)}")

    def labels(self, pair_set: PairSet) -> np.ndarray:
        """1 = same palm for each pair of ``pair_set``."""
        i, j = self.pairs(pair_set)
        rows = palm_labels(self.test)
        cols = rows if pair_set == "all-vs-all" else palm_labels(self.enrol)
        return (rows[i] == cols[j]).astype(np.int8)

    def dissimilarities(self, pair_set: PairSet, rsm: RSM | None = None) -> np.ndarray:
        """Plain (``rsm`` None) or RSM-re-scored dissimilarity of each pair of ``pair_set``."""
        if rsm is not None and self.refs_are_training and not self.allow_training_refs:
            from biomatch.palmprint.full import ReferenceSetError

            raise ReferenceSetError(
                f"{self.matcher} was trained on session 1, which is also the RSM reference set; "
                "pass allow_training_refs=True (CLI: --allow-training-refs) to use its training images as references anyway"
            )
        i, j = self.pairs(pair_set)
        if pair_set == "all-vs-all":
            mat = self.test_test if rsm is None else rsm(self.test_test, self.test_enrol, self.test_enrol)
        else:
            n1 = len(self.enrol)
            mat = (
                self.test_enrol
                if rsm is None
                else rsm(self.test_enrol, self.test_enrol, self.enrol_enrol, col_ref_owner=torch.arange(n1))
            )
        return mat[i, j].numpy().astype(np.float64)

    def scores(self, pair_set: PairSet, rsm: RSM | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarity scores = -dissimilarity, labels) for the verification metrics."""
        return -self.dissimilarities(pair_set, rsm), self.labels(pair_set)


def compute_session_scores(
    matcher: Matcher, dataset: str, root: Path | None = None, samples: list[PalmSample] | None = None,
    *, allow_training_refs: bool = False,
) -> SessionScores:
    """Load ``dataset`` (or use ``samples``, e.g. from ``load_layout``), train ``matcher`` on
    session 1 if it has ``fit``, and score everything. A trained matcher's references (session 1)
    are its training images, so RSM is refused on it unless ``allow_training_refs``."""
    enrol, test = split_sessions(samples if samples is not None else load_samples(dataset, root))
    x1, x2 = load_rois_cached(enrol), load_rois_cached(test)
    fit = getattr(matcher, "fit", None)
    if callable(fit):
        fit(x1, palm_labels(enrol))
    f1, f2 = matcher.encode(x1), matcher.encode(x2)
    return SessionScores(
        matcher=matcher.name,
        dataset=dataset,
        test=test,
        enrol=enrol,
        test_test=matcher.dissimilarity(f2, f2).to(torch.float64),
        test_enrol=matcher.dissimilarity(f2, f1).to(torch.float64),
        enrol_enrol=matcher.dissimilarity(f1, f1).to(torch.float64),
        refs_are_training=callable(fit),
        allow_training_refs=allow_training_refs,
    )


def make_matcher(name: str, seed: int = 0) -> Matcher:
    """Matchers by CLI name: 'compcode', 'compcode-noshift', 'palmnet', 'compnet' (learned competitive coding,
    trained here for at most ``COMPNET_BUDGET_S``; the full-scale benchmark trains it longer)."""
    from biomatch.palmprint.ccnet import CompNetMatcher, TrainConfig
    from biomatch.palmprint.compcode import CompCode
    from biomatch.palmprint.learned import LearnedMatcher

    if name == "compnet":
        return CompNetMatcher(config=TrainConfig(time_budget_s=COMPNET_BUDGET_S, max_epochs=60, seed=seed))

    if name == "compcode":
        return CompCode()
    if name == "compcode-noshift":
        return CompCode(max_shift=0, name="CompCode (no shift)")
    if name == "palmnet":
        return LearnedMatcher(seed=seed)
    raise InputError(f"unknown matcher {name!r}; choose one of {list(MATCHERS + ('compnet',))}")


MATCHERS = ("compcode", "compcode-noshift", "palmnet")
COMPNET_BUDGET_S = 300.0
