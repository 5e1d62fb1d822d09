"""Capture sessions read off the 11k Hands numbering, and the same/cross-session split of results."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from biomatch.data.datasets import Sample, load_hands11k
from biomatch.hands.sessions import (
    SESSION_GAP,
    capture_sessions,
    cross_session_queries,
    image_number,
    session_breakdown,
)


def _s(n: int, who: str, view: str) -> Sample:
    return Sample(Path(f"images/Hand_{n:07d}.jpg"), who, view)


# subject a: session 0 has both views, session 1 only dorsal photos; subject b: one session
QUERIES = [_s(5, "a", "dorsal"), _s(9950, "a", "dorsal"), _s(9960, "a", "dorsal"), _s(300, "b", "dorsal")]
GALLERY = [_s(38, "a", "palmar"), _s(40, "a", "palmar"), _s(310, "b", "palmar")]


def _random_order_first_rank(identity: str, gallery: list[Sample]) -> float:
    """Mean first-correct rank over every order of the gallery (brute force)."""
    firsts = [1 + [g.identity for g in order].index(identity) for order in itertools.permutations(gallery)]
    return sum(firsts) / len(firsts)


def test_sessions_split_at_the_gap_only():
    sessions = capture_sessions(QUERIES + GALLERY)
    assert [sessions[s.path] for s in QUERIES] == [0, 1, 1, 0]
    assert [sessions[s.path] for s in GALLERY] == [0, 0, 0]
    # a gap of exactly SESSION_GAP stays within the session
    assert set(capture_sessions([_s(1, "c", "dorsal"), _s(1 + SESSION_GAP, "c", "palmar")]).values()) == {0}


def test_cross_session_queries_and_breakdown_match_a_loop():
    cross = cross_session_queries(QUERIES, GALLERY)
    assert cross.tolist() == [False, True, True, False]
    ranks = np.array([1, 30, 12, 2])
    out = session_breakdown(ranks, QUERIES, GALLERY)
    chance = {q: _random_order_first_rank(q.identity, GALLERY) for q in QUERIES}  # a: 4/3, b: 2
    assert out["same_session"] == pytest.approx({"n_queries": 2, "recall@1": 0.5, "mean_rank": 1.5,
                                                 "chance_mean_rank": (chance[QUERIES[0]] + chance[QUERIES[3]]) / 2})
    assert out["cross_session"] == pytest.approx({"n_queries": 2, "recall@1": 0.0, "mean_rank": 21.0, "subjects": 1,
                                                  "chance_mean_rank": chance[QUERIES[1]]})
    empty = session_breakdown(ranks[[0, 3]], [QUERIES[0], QUERIES[3]], GALLERY)
    assert empty["cross_session"]["n_queries"] == 0 and empty["cross_session"]["mean_rank"] is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no image number"):
        image_number(Path("palm.jpg"))
    with pytest.raises(ValueError, match="3 ranks for 4 queries"):
        session_breakdown([1, 2, 3], QUERIES, GALLERY)


def test_the_shared_set_has_eight_two_session_subjects(shared_dataset):
    """The numbers behind SESSION_GAP: one run of numbers per session, sessions thousands apart."""
    samples = load_hands11k(shared_dataset("hands11k"))
    sessions = capture_sessions(samples)
    two = sorted({s.identity for s in samples if sessions[s.path] > 0})
    assert two == ["0000000", "0000025", "0000055", "0000546", "0001019", "0001024", "0001541", "0001543"]
    widest_inside = 0
    by_key: dict[tuple[str, int], list[int]] = {}
    for s in samples:
        by_key.setdefault((s.identity, sessions[s.path]), []).append(image_number(s.path))
    for numbers in by_key.values():
        numbers.sort()
        widest_inside = max([widest_inside, *(b - a for a, b in zip(numbers, numbers[1:]))])
    assert widest_inside < SESSION_GAP / 10  # 33: far from the threshold on either side


def test_session_figure_has_one_row_per_session(hands_samples, tmp_path):
    from PIL import Image

    from biomatch.viz.hands_report import plot_subject_sessions

    subject = hands_samples[0].identity
    n_sessions = max(capture_sessions([s for s in hands_samples if s.identity == subject]).values()) + 1
    out = plot_subject_sessions(hands_samples, subject, tmp_path / "s.png", tile=40)
    assert Image.open(out).height == 18 + n_sessions * (40 + 26 + 4) + 4
    with pytest.raises(ValueError, match="no images of subject 'nobody'"):
        plot_subject_sessions(hands_samples, "nobody", tmp_path / "x.png")
