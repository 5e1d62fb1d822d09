"""The hands report explains its columns and shows the tail: rank histogram, worst queries,
aligned crops and how the run was made."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomatch.hands.methods import RunResult
from biomatch.hands.protocol import HandsSplit, make_split
from biomatch.metrics.retrieval import retrieval_ranks, retrieval_summary
from biomatch.training import History
from biomatch.viz.hands_report import COLUMN_HELP, excess_sentence, rank_histogram, worst_queries, write_hands_report


def _result(split, seed=0):
    q, g = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
    rng = np.random.default_rng(seed)
    centers = {i: rng.normal(size=8) for i in {s.identity for s in q + g}}
    qe = np.stack([centers[s.identity] + 1.5 * rng.normal(size=8) for s in q]).astype(np.float32)
    ge = np.stack([centers[s.identity] + 1.5 * rng.normal(size=8) for s in g]).astype(np.float32)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)  # embeddings are L2-normalized (DESIGN.md)
    ge /= np.linalg.norm(ge, axis=1, keepdims=True)
    ranks = retrieval_ranks(qe, ge, [s.identity for s in q], [s.identity for s in g])
    return RunResult("fake", split.seed, ranks, retrieval_summary(ranks), History(loss=[1.0, 0.5]), q, g, qe, ge,
                     {"train_s": 1.0})


def test_rank_histogram_counts_every_query():
    h = rank_histogram([1, 1, 2, 3, 4, 5, 6, 10, 11, 20, 21, 300])
    assert h == {"1": 2, "2": 1, "3": 1, "4-5": 2, "6-10": 2, "11-20": 2, ">20": 2}


def test_excess_sentence_names_the_subjects_that_carry_the_mean_rank():
    # Σ(rank − 1) = 8 + 0 + 2 + 1 = 11; subject "b" carries 8 + 2 = 10 of it
    text = excess_sentence([9, 1, 3, 2], ["b", "a", "b", "c"], n=1)
    assert "Σ(rank − 1) = 11 here" in text and "The 1 subjects (of 3)" in text and "carry 91%" in text
    assert "b (2 queries, mean rank 6.0)" in text
    # subjects whose queries all rank first are not named among the "most"
    assert "a (" not in excess_sentence([9, 1, 3, 2], ["b", "a", "b", "c"], n=5)
    assert excess_sentence([1, 1], ["a", "b"]) == "Every query ranks a correct palm first."


def test_worst_queries_are_the_lowest_ranked_with_their_true_palm(hands_samples):
    r = _result(make_split(hands_samples, 0))
    worst = worst_queries(r, 10)
    ranks = sorted(r.ranks.first_rank.tolist(), reverse=True)[:10]
    assert [w["rank"] for w in worst] == ranks
    scores = r.score_matrix()
    for w in worst:
        qi = next(i for i, q in enumerate(r.queries) if q.path.name == w["query"])
        assert w["true_palm"] is not None
        gi = next(i for i, g in enumerate(r.gallery) if g.path.name == w["true_palm"]["file"])
        assert r.gallery[gi].identity == r.queries[qi].identity
        # the true palm's rank (pessimistic) is the number of gallery items scoring >= it
        assert (scores[qi] >= scores[qi, gi]).sum() == w["rank"]


def test_report_explains_columns_and_shows_the_tail(hands_samples, tmp_path, tmp_cache):
    pytest.importorskip("mediapipe")
    split = make_split(hands_samples, 0)
    run_info = {"command": "biomatch demo", "commit": "abc", "packages": {"torch": "x"}, "best": "fake",
                "load_during_run": {"min": 0.5, "mean": 1.0, "max": 2.0, "n": 3}, "seconds_before_report": 12.0,
                "feature_runtime": "onnxruntime"}
    page = write_hands_report([_result(split)], tmp_path, run_info=run_info, split=split)
    md = (tmp_path / "report.md").read_text()
    for column in ("map", "train s", "fta", "mean_rank"):
        assert COLUMN_HELP[column] in md
    assert "rank 1" in md and "worst queries" in md and "aligned" in md.lower()
    assert "command: `biomatch demo`" in md and "mean 1.0, max 2.0" in md and "train + val" in md
    assert "Where the mean rank comes from" in md and "Where the mean rank comes from" in page.read_text()
    assert "features computed with: onnxruntime" in md
    for png in ("worst_queries.png", "aligned_crops.png", "cmc.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert "worst_queries.png" in page.read_text()


def test_retrieval_examples_rank_by_the_methods_own_scores(hands_samples, tmp_path, monkeypatch):
    """A method with its own scores (geometry, gallery normalization) is shown ranked by them,
    not by the raw embedding cosine the table does not measure."""
    import dataclasses

    from biomatch.viz import hands_report

    r = _result(make_split(hands_samples, 0))
    flipped = -(r.query_emb @ r.gallery_emb.T)  # an ordering the embeddings alone would never give
    r = dataclasses.replace(r, scores=flipped)
    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        return tmp_path / "strip.png"

    monkeypatch.setattr(hands_report, "retrieval_strip", capture)
    monkeypatch.setattr(hands_report, "plot_worst_queries", lambda *a, **k: tmp_path / "worst.png")
    write_hands_report([r], tmp_path)
    np.testing.assert_array_equal(seen["score_matrix"], flipped)
    assert "final score" in (tmp_path / "report.md").read_text()


def test_a_query_set_method_shows_its_single_query_numbers(hands_samples, tmp_path, monkeypatch):
    import dataclasses

    from biomatch.viz import hands_report

    r = _result(make_split(hands_samples, 0))
    r = dataclasses.replace(r, method="qn", metrics={**r.metrics, "single_query:recall@1": 0.6125,
                                                     "single_query:mean_rank": 3.456})
    monkeypatch.setattr(hands_report, "plot_worst_queries", lambda *a, **k: tmp_path / "worst.png")
    write_hands_report([r], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "qn re-ranks each query with its mutual nearest test queries" in md
    assert "without that step: R@1 0.613, mean rank 3.46" in md
    write_hands_report([_result(make_split(hands_samples, 0))], tmp_path / "plain")
    assert "mutual nearest" not in (tmp_path / "plain" / "report.md").read_text()
