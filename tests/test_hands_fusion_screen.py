"""The late-fusion screen (benchmarks/hands_fusion_screen.py): its rule, its width profile and its
wiring (an oracle source must pass, a source with no signal must not)."""

from __future__ import annotations

import importlib.util
import itertools
import sys

import numpy as np
import pytest

from biomatch.errors import InputError
from biomatch.paths import REPO_ROOT


@pytest.fixture(scope="module")
def screen():
    spec = importlib.util.spec_from_file_location("hands_fusion_screen", REPO_ROOT / "benchmarks" / "hands_fusion_screen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_the_verdict_agrees_with_a_spelled_out_rule_on_random_points(screen):
    rng = np.random.default_rng(0)
    for _ in range(200):
        base = screen.ScreenPoint("base", 0.0, tuple(rng.uniform(1.5, 3, 5)), tuple(rng.uniform(0.7, 0.9, 5)))
        points = [screen.ScreenPoint("v", w, tuple(np.array(base.mean_rank) + rng.normal(-0.03, 0.05, 5)),
                                     tuple(np.array(base.recall1) + rng.normal(0, 0.005, 5))) for w in (0.1, 0.2)]
        best, passed, why = screen.screen_verdict(base, points)
        means = [sum(p.mean_rank) / 5 for p in points]
        want_best = points[int(np.argmin(means))]
        lower = sum(1 for a, b in zip(want_best.mean_rank, base.mean_rank) if a < b)
        want = (sum(want_best.mean_rank) / 5 <= sum(base.mean_rank) / 5 - 0.03 and lower >= 4
                and sum(want_best.recall1) / 5 >= sum(base.recall1) / 5 - 0.005)
        assert best is want_best and passed == want and (why == "all met") == want


def test_the_width_profile_measures_a_drawn_hand(screen):
    """A drawn hand: a 40-px palm and four vertical 8-px fingers on landmarks placed on them; every
    width is its drawn width over the palm length, short by at most a pixel (`mask_run`)."""
    from biomatch.hands.landmarks import FINGERS, MIDDLE_MCP, WRIST

    mask = np.zeros((200, 200), bool)
    mask[100:160, 60:100] = True  # palm: x 60..99 (40 px), y 100..159
    points = np.zeros((21, 2))
    points[WRIST] = (80, 155)
    for k, f in enumerate(("index", "middle", "ring", "little")):
        x = 64 + 10 * k  # finger k: x x-4 .. x+3 (8 px), y 40..99
        mask[40:100, x - 4:x + 4] = True
        for j, y in zip(FINGERS[f], (100, 80, 60, 45)):
            points[j] = (x, y)
    points[list(FINGERS["thumb"])] = [(60, 150), (55, 140), (50, 130), (45, 120)]
    points[MIDDLE_MCP] = (74, 100)
    palm = float(np.hypot(74 - 80, 100 - 155))
    profile = screen.width_profile(mask, points)
    assert profile.shape == (4 * 4 + 3,)
    fingers, palms = profile[:16] * palm, profile[16:] * palm
    # a finger's run stops at its neighbours' gaps (2 px) - the drawn fingers are 8 px wide
    assert np.all((fingers >= 7) & (fingers <= 8))
    # across the palm (perpendicular to wrist → middle MCP, which leans): a little over 40 px
    assert np.all((palms >= 39) & (palms <= 46))
    assert np.isnan(screen.width_profile(mask, np.full((21, 2), np.nan))).all()


def test_the_screen_refuses_report_seeds_and_unknown_sources(screen, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--seeds", "0,10"])
    with pytest.raises(InputError, match="report seeds"):
        screen.main()
    monkeypatch.setattr(sys, "argv", ["x", "--sources", "palm_detector,tea_leaves"])
    with pytest.raises(InputError, match="tea_leaves"):
        screen.main()
    with pytest.raises(InputError, match="no config"):
        screen.base_directory("hands_nonexistent")


def test_an_oracle_source_passes_and_a_blank_one_does_not(screen, monkeypatch, hands_samples, tmp_path):
    """The wiring end to end, with a synthetic base S (noisy identity scores) in place of the best
    method's run: a source whose extra score is 1 for the true subject must pass; one with no signal
    must fail. The result record and the BENCHMARKS section are captured, not written."""
    from biomatch.hands.protocol import HandsSplit, make_split

    def base_scores(method, seed, draw, samples, directory):
        split = make_split(samples, seed)
        q, g = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
        same = np.equal.outer([s.identity for s in q], [s.identity for s in g]).astype(float)
        rng = np.random.default_rng([seed, draw])
        return {"scores": same + rng.normal(0, 0.6, same.shape), "q": np.array([str(s.path) for s in q]),
                "g": np.array([str(s.path) for s in g]), "commit": np.array("test")}

    ids = sorted({s.identity for s in hands_samples})
    one_hot = np.eye(len(ids))[[ids.index(s.identity) for s in hands_samples]]

    def oracle_extra(rows, train, cfg):
        return rows[1] @ rows[2].T

    sources = {"oracle": screen.Source(lambda samples, points: {"O": one_hot}, oracle_extra, (0.5,), "the labels"),
               "blank": screen.Source(lambda samples, points: {"B": np.ones((len(hands_samples), 1))}, oracle_extra,
                                      (0.5,), "a constant")}
    written, sections = {}, {}
    monkeypatch.setattr(screen, "SOURCES", sources)
    monkeypatch.setattr(screen, "base_scores", base_scores)
    monkeypatch.setattr(screen, "write_result", lambda name, extra, **kw: written.update(kw, **extra))
    monkeypatch.setattr(screen, "update_benchmarks_section", lambda name, md: sections.update({name: md}))
    monkeypatch.setattr("biomatch.hands.landmarks.cached_landmarks",  # the sources here read no landmarks
                        lambda samples, *a, **k: (np.full((len(samples), 21, 2), np.nan), np.zeros(len(samples), bool)))
    monkeypatch.setattr(sys, "argv", ["x", "--sources", "oracle,blank"])
    screen.main()
    assert written["verdicts"]["oracle"]["passed"] and not written["verdicts"]["blank"]["passed"]
    assert written["seed_role"] == "tuning" and written["seeds"] == [0, 1, 2, 3, 4]
    assert written["metrics"]["O w=0.5"]["mean_rank"] < written["metrics"]["base"]["mean_rank"] - 0.03
    # a constant extra score changes no ranking: the blank source's numbers are the base's
    assert written["metrics"]["B w=0.5"]["mean_rank"] == pytest.approx(written["metrics"]["base"]["mean_rank"])
    assert "oracle" in sections["hands_fusion_screen"] and "**rejected**" in sections["hands_fusion_screen"]
    assert list(itertools.islice(written["metrics"], 1)) == ["base"]
