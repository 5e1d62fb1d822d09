"""TongjiFull protocols (issue #9): which images train, enrol, probe, and serve as RSM references.

- **closed** (the CCNet/RSM papers' protocol): every palm is enrolled with its 10 session-1
  images; every session-2 image probes against every session-1 image (6,000 x 6,000).
  The learned matchers train on session-1 images 1-9 of each palm; image 10 of each palm
  (600 images) is *held out of training* and is the RSM reference set. Those references are
  enrolment images (available to a deployment) but neither training nor test images; a
  reference that is the pair's own enrolled image is left out of that pair.
- **open** (what a deployment faces): palms 0-249 (both sessions) train the networks, palms
  250-299 are a validation split never trained on (RSM references and the M / alpha choice),
  palms 300-599 are test: session 1 enrols, session 2 probes (3,000 x 3,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from biomatch.errors import InputError
from biomatch.palmprint.data import PalmSample

Protocol = Literal["closed", "open"]
PROTOCOLS: tuple[Protocol, ...] = ("closed", "open")
OPEN_TRAIN_PALMS = range(0, 250)
OPEN_VAL_PALMS = range(250, 300)
OPEN_TEST_PALMS = range(300, 600)


@dataclass(frozen=True)
class Split:
    """Sample lists of one protocol; ``refs`` are the RSM references, never in ``train``."""

    protocol: str
    train: list[PalmSample]
    gallery: list[PalmSample]
    probes: list[PalmSample]
    refs: list[PalmSample]
    refs_note: str


def image_index(sample: PalmSample) -> int:
    """0-based index of a TongjiFull image within its palm and session (file number - 1) % 10."""
    if not sample.path.stem.isdigit():
        raise InputError(f"{sample.path}: not a TongjiFull NNNNN file name")
    return (int(sample.path.stem) - 1) % 10


def make_split(samples: list[PalmSample], protocol: str, ref_index: int = 9) -> Split:
    """The ``closed`` or ``open`` split of TongjiFull samples (see the module docstring)."""
    s1 = [s for s in samples if s.session == 1]
    s2 = [s for s in samples if s.session == 2]
    if protocol == "closed":
        train = [s for s in s1 if image_index(s) != ref_index]
        refs = [s for s in s1 if image_index(s) == ref_index]
        note = (f"session-1 image {ref_index + 1} of every palm (held out of the networks' training; "
                "enrolment images, not test images; the pair's own enrolled image is left out)")
        return Split("closed", train, s1, s2, refs, note)
    if protocol == "open":
        train = [s for s in samples if s.palm in OPEN_TRAIN_PALMS]
        refs = [s for s in samples if s.palm in OPEN_VAL_PALMS]
        gallery = [s for s in s1 if s.palm in OPEN_TEST_PALMS]
        probes = [s for s in s2 if s.palm in OPEN_TEST_PALMS]
        note = "palms 250-299, both sessions (validation palms: never trained on, never tested)"
        return Split("open", train, gallery, probes, refs, note)
    raise InputError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")


def validation_split(samples: list[PalmSample]) -> Split:
    """Where M and alpha are chosen: validation palms 250-274 as probes (session 2) / gallery
    (session 1), palms 275-299 (both sessions) as references. No test palm, no training image."""
    val = [s for s in samples if s.palm in OPEN_VAL_PALMS]
    half = OPEN_VAL_PALMS.start + len(OPEN_VAL_PALMS) // 2
    gallery = [s for s in val if s.session == 1 and s.palm < half]
    probes = [s for s in val if s.session == 2 and s.palm < half]
    refs = [s for s in val if s.palm >= half]
    return Split("validation", [], gallery, probes, refs, "palms 275-299 (validation)")


def indices_of(subset: list[PalmSample], universe: list[PalmSample]) -> np.ndarray:
    """Positions of ``subset``'s samples in ``universe`` (to index a cached ROI array)."""
    pos = {s.path: i for i, s in enumerate(universe)}
    try:
        return np.array([pos[s.path] for s in subset], dtype=np.int64)
    except KeyError as exc:
        raise InputError(f"sample {exc.args[0]} is not in the loaded set") from None
