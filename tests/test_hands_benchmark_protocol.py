"""Seed-role bookkeeping of benchmarks/hands_dorsal_palmar.py: roles, per-seed incremental
results, commits per seed, and "(b) beats (a)" over the seeds both rows ran."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from biomatch.hands.methods import RunResult
from biomatch.hands.protocol import REPORT_SEEDS, ROLE_SEEDS, TUNING_SEEDS, VALIDATION_SEEDS, role_record, seed_role
from biomatch.metrics.retrieval import retrieval_ranks, retrieval_summary
from biomatch.paths import REPO_ROOT
from biomatch.training import History


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("hands_bench", REPO_ROOT / "benchmarks" / "hands_dorsal_palmar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_roles():
    assert list(TUNING_SEEDS) == [0, 1, 2, 3, 4] and list(REPORT_SEEDS) == list(range(10, 20))
    assert list(VALIDATION_SEEDS) == [5, 6, 7, 8, 9]
    # the three roles never share a seed
    members = [set(seeds) for seeds in ROLE_SEEDS.values()]
    assert sum(len(m) for m in members) == len(set().union(*members))
    assert seed_role([0, 3]) == "tuning"
    assert seed_role([5, 9]) == "validation"
    assert seed_role(range(10, 20)) == "report"
    assert seed_role([4, 10]) == "other"  # never mixed into one column
    assert seed_role([4, 5]) == "other"
    assert seed_role([20]) == "other" and seed_role([]) == "other"
    assert role_record("report", range(10, 20))["complete"] is True
    assert role_record("tuning", [0, 1, 2, 3])["complete"] is False
    with pytest.raises(ValueError, match="unknown seed role 'final'"):
        role_record("final", [])


def test_a_validation_run_is_its_own_record_and_note(bench, tmp_path, monkeypatch, hands_samples):
    """Seeds 5-9 check a candidate between its tuning row and its report run: their record names the
    role and its planned seeds, and the section prints them in their own note, never in a column."""
    monkeypatch.setattr(bench, "run_method", _fake_run())
    cfg = str(REPO_ROOT / "configs" / "hands_b_triplet_batch_hard.yaml")
    rec = bench.run_config(cfg, [5, 6], "validation", hands_samples, "cpu", False, results_dir=tmp_path)
    assert rec["seed_role"] == "validation" and rec["seeds_planned"] == [5, 6, 7, 8, 9]
    assert rec["seeds"] == [5, 6] and rec["complete"] is False
    assert (tmp_path / "hands_dorsal_palmar_hands_b_triplet_batch_hard_validation.json").is_file()
    note = bench.validation_notes({"hands_b_triplet_batch_hard": {"validation": rec}, "other": {"tuning": rec}})
    mr = [p["mean_rank"] for p in rec["per_seed"]]
    assert len(note) == 1 and "Validation seeds [5, 6, 7, 8, 9]" in note[0]
    assert (f"hands_b_triplet_batch_hard {rec['metrics']['recall@1']['mean']:.3f} / {np.mean(mr):.3f} "
            f"(mean rank per seed {mr[0]:.2f}, {mr[1]:.2f}) (2 seeds)") in note[0]
    assert "other" not in note[0]
    assert bench.validation_notes({"x": {"tuning": rec, "report": rec}}) == []


def _fake_run(fail_on: int | None = None):
    def run(cfg, split, device="cpu", progress=False, **_):
        if split.seed == fail_on:
            raise KeyboardInterrupt  # a run killed in the middle
        from biomatch.hands.protocol import HandsSplit

        q, g = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
        rng = np.random.default_rng(split.seed)
        ids = sorted({s.identity for s in q + g})
        centers = {i: rng.normal(size=8) for i in ids}
        qe = np.stack([centers[s.identity] + rng.normal(size=8) for s in q]).astype(np.float32)
        ge = np.stack([centers[s.identity] + rng.normal(size=8) for s in g]).astype(np.float32)
        ranks = retrieval_ranks(qe, ge, [s.identity for s in q], [s.identity for s in g])
        return RunResult(cfg.name, split.seed, ranks, retrieval_summary(ranks), History(), q, g, qe, ge,
                         {"train_s": 0.1, "features_s": 0.0})
    return run


def test_results_are_written_per_seed_with_role_and_commit(bench, tmp_path, monkeypatch, hands_samples):
    monkeypatch.setattr(bench, "run_method", _fake_run(fail_on=2))
    cfg = str(REPO_ROOT / "configs" / "hands_b_triplet_batch_hard.yaml")
    with pytest.raises(KeyboardInterrupt):
        bench.run_config(cfg, [0, 1, 2, 3, 4], "tuning", hands_samples, "cpu", False, results_dir=tmp_path)
    rec = json.loads((tmp_path / "hands_dorsal_palmar_hands_b_triplet_batch_hard_tuning.json").read_text())
    assert rec["seed_role"] == "tuning" and rec["seeds"] == [0, 1] and rec["complete"] is False
    assert rec["seeds_planned"] == [0, 1, 2, 3, 4]
    assert [p["seed"] for p in rec["per_seed"]] == [0, 1]
    assert all(p["commit"] and len(p["worst_queries"]) == 10 for p in rec["per_seed"])
    assert sum(rec["per_seed"][0]["rank_histogram"].values()) == rec["per_seed"][0]["n_queries"]
    # subjects counted once can only move the true subject up: 1 <= identity mean rank <= mean rank
    assert all(1 <= p["identity_mean_rank"] <= p["mean_rank"] for p in rec["per_seed"])
    assert any(p["identity_mean_rank"] < p["mean_rank"] for p in rec["per_seed"])
    # the mean over seeds is the mean of the per-seed values actually stored
    assert rec["metrics"]["recall@1"]["mean"] == pytest.approx(np.mean([p["recall@1"] for p in rec["per_seed"]]))
    # resume keeps the finished seeds and runs only the rest
    calls = []
    run = _fake_run()
    monkeypatch.setattr(bench, "run_method", lambda cfg, split, **kw: calls.append(split.seed) or run(cfg, split))
    rec = bench.run_config(cfg, [0, 1, 2, 3, 4], "tuning", hands_samples, "cpu", True, results_dir=tmp_path)
    assert calls == [2, 3, 4] and rec["complete"] is True and rec["seeds"] == [0, 1, 2, 3, 4]


def test_a_rerun_replaces_seeds_and_keeps_the_others(bench, tmp_path, monkeypatch, hands_samples):
    """Rerunning seeds of a config whose file already holds them (e.g. after a change of feature
    runtime) replaces those seeds' records; it once appended them, so a seed appeared twice."""
    cfg = str(REPO_ROOT / "configs" / "hands_b_triplet_batch_hard.yaml")
    out = tmp_path / "hands_dorsal_palmar_hands_b_triplet_batch_hard_tuning.json"
    monkeypatch.setattr(bench, "run_method", _fake_run())
    bench.run_config(cfg, [0, 1, 2, 3, 4], "tuning", hands_samples, "cpu", False, results_dir=tmp_path)
    first = {p["seed"]: p for p in json.loads(out.read_text())["per_seed"]}
    monkeypatch.setattr(bench, "feature_runtime", lambda device: "rerun-marker")
    rec = bench.run_config(cfg, [1, 3], "tuning", hands_samples, "cpu", False, results_dir=tmp_path)
    assert [p["seed"] for p in rec["per_seed"]] == [0, 1, 2, 3, 4]  # no seed twice
    assert [p["feature_runtime"] for p in rec["per_seed"]] == ["onnxruntime", "rerun-marker", "onnxruntime",
                                                                "rerun-marker", "onnxruntime"]
    assert rec["per_seed"][0] == first[0] and rec["per_seed"][4] == first[4]
    assert rec["feature_runtime"] == ["onnxruntime", "rerun-marker"]


def test_beats_compares_only_common_seeds(bench):
    a = {"per_seed": [{"seed": s, "recall@1": 0.5} for s in (0, 1, 2, 3, 4)]}
    b = {"per_seed": [{"seed": s, "recall@1": r} for s, r in ((0, 0.6), (1, 0.4), (3, 0.7))]}
    assert bench.beats(a, b) == "2 of 3 seeds ([0, 1, 3])"


def test_derived_tuning_column_reads_old_records_with_new_config_fields_at_their_defaults(bench):
    """hands_e_aligned_geo05's tuning column comes from hands_e_aligned_geometry's geometry sweep;
    that record was written before `cohort_k`/`identity_weight` existed and must still match."""
    from biomatch.config import load_method

    target = load_method(REPO_ROOT / "configs" / "hands_e_aligned_geo05.yaml").model_dump()
    old_config = {k: v for k, v in {**target, "name": "hands_e_aligned_geometry", "geometry_weight": 0.1}.items()
                  if k not in ("cohort_k", "identity_weight")}
    per_seed = [{"seed": s, "commit": "abc", "geo0.05:recall@1": 0.7 + s / 100, "geo0.05:mean_rank": 3.0}
                for s in TUNING_SEEDS]
    results = {"hands_e_aligned_geometry": {"tuning": {"config": old_config, "per_seed": per_seed,
                                                       "seeds": list(TUNING_SEEDS), "metrics": {}}},
               "hands_e_aligned_geo05": {"report": {"config": target, "per_seed": [], "metrics": {}}}}
    notes = bench._derive_tuning(results)
    derived = results["hands_e_aligned_geo05"]["tuning"]
    assert [p["recall@1"] for p in derived["per_seed"]] == [0.7 + s / 100 for s in TUNING_SEEDS]
    assert "hands_e_aligned_geometry" in notes[0]
    # a record that differs in a real choice (here the hub correction) is not a source
    results = {"hands_e_aligned_geometry": {"tuning": {"config": {**old_config, "cohort_k": 40}, "per_seed": per_seed,
                                                       "seeds": list(TUNING_SEEDS), "metrics": {}}},
               "hands_e_aligned_geo05": {"report": {"config": target, "per_seed": [], "metrics": {}}}}
    assert bench._derive_tuning(results) == [] and "tuning" not in results["hands_e_aligned_geo05"]


def test_pooled_sessions_weigh_seeds_by_their_queries(bench):
    def rec(seed, same, cross):
        n = same[0] + cross[0]
        mr = (same[0] * same[2] + cross[0] * (cross[2] or 0)) / n
        return {"seed": seed, "n_queries": n, "mean_rank": mr, "sessions": {
            "same_session": {"n_queries": same[0], "recall@1": same[1], "mean_rank": same[2]},
            "cross_session": {"n_queries": cross[0], "recall@1": cross[1], "mean_rank": cross[2], "subjects": 1}}}

    text = bench.pooled_sessions([rec(10, (100, 0.8, 2.0), (0, None, None)),
                                  rec(11, (300, 0.6, 3.0), (12, 0.0, 30.0)), {"seed": 12}])
    # same-session: (100·0.8 + 300·0.6) / 400 = 0.65, (100·2 + 300·3) / 400 = 2.75
    assert "Pooled over seeds [10, 11] (all 412 queries: mean rank 3.54)" in text  # (200 + 900 + 360) / 412
    assert "same-session: 400 queries, R@1 0.650, mean rank 2.75" in text
    assert "cross-session: 12 queries, R@1 0.000, mean rank 30.00 (cross-session queries on seeds [11])" in text
    # the goal's arithmetic: (2.5 · 412 − 30 · 12) / 400 = 1.675, the same-session mean rank it would need
    need = (bench.MEAN_RANK_GOAL * 412 - 30.0 * 12) / 400
    assert f"needs the same-session ones at {need:.2f} (now 2.75)" in text
    assert bench.pooled_sessions([{"seed": 1}]) == ""
    # seeds that recorded the random-order mean rank get it pooled the same way
    recs = [rec(10, (100, 0.8, 2.0), (6, 0.0, 40.0)), rec(11, (300, 0.6, 3.0), (12, 0.0, 30.0))]
    for p, (same, cross) in zip(recs, ((20.0, 35.0), (30.0, 38.0))):
        p["sessions"]["same_session"]["chance_mean_rank"] = same
        p["sessions"]["cross_session"]["chance_mean_rank"] = cross
    text = bench.pooled_sessions(recs)
    assert "same-session: 400 queries, R@1 0.650, mean rank 2.75 (a random gallery order: 27.50)" in text
    assert "cross-session: 18 queries, R@1 0.000, mean rank 33.33 (a random gallery order: 37.00)" in text


def test_excess_record_and_its_pooled_sentence(bench):
    rec = bench.excess_record([9, 1, 3, 2, 1, 1, 1, 4], list("babcdefg"))
    # per subject Σ(rank − 1): b 10, g 3, c 1, the rest 0; the top EXCESS_TOP (5) are kept
    assert rec["total"] == 14 and rec["n_subjects"] == 7 and len(rec["top"]) == bench.EXCESS_TOP
    assert rec["top"][:3] == [{"subject": "b", "n_queries": 2, "excess": 10},
                              {"subject": "g", "n_queries": 1, "excess": 3},
                              {"subject": "c", "n_queries": 1, "excess": 1}]
    other = bench.excess_record([2, 2, 2, 2, 2, 11], list("uvwxyz"))  # total 15, the top 5 carry 10 + 4·1 = 14
    text = bench.pooled_excess([{"seed": 3, "excess_rank": rec}, {"seed": 4, "excess_rank": other}, {"seed": 5}])
    assert "on seeds [3, 4] the 5 subjects" in text
    assert "carry 97% of it (per seed 93%–100%)" in text  # mean of 14/14 and 14/15
    assert "b (2 queries, mean rank 6.0), z (1 queries, mean rank 11.0)" in text
    assert bench.pooled_excess([{"seed": 1}]) == ""


def test_row_kinds(bench):
    assert bench.row_kind("hands_e10_p32") == "method e"
    assert bench.row_kind("hands_e10x_parts") == "method e"
    assert bench.row_kind("hands_b_triplet_batch_hard") == "method b"
    assert bench.row_kind("hands_control_e10_bg_fill") == "control, not a method"
    assert bench.row_kind("hands_e10xpl1_xcov_qn") == "separate protocol: each query reads the other test queries"


def test_query_set_rows_also_show_their_single_query_numbers(bench):
    def rec(seeds, single, final):
        per_seed = [{"seed": s, "single_query:recall@1": a, "single_query:mean_rank": b,
                     "recall@1": c, "mean_rank": d} for s, (a, b), (c, d) in zip(seeds, single, final)]
        return {"seeds": seeds, "per_seed": per_seed,
                "metrics": {"recall@1": {"mean": np.mean([f[0] for f in final])},
                            "mean_rank": {"mean": np.mean([f[1] for f in final])}}}

    results = {"x_qn": {"tuning": rec([0, 1], [(0.7, 3.0), (0.8, 2.0)], [(0.8, 2.0), (0.9, 1.5)]),
                        "report": rec([10], [(0.6, 4.0)], [(0.7, 3.0)])},
               "plain": {"tuning": {"seeds": [0], "per_seed": [{"seed": 0, "recall@1": 0.5, "mean_rank": 3.0}]}}}
    notes = bench.single_query_notes(results)
    assert notes == ["x_qn without its query-set step, the very same runs (single-query protocol, R@1 / mean rank): "
                     "tuning seeds [0, 1]: 0.750 / 2.50 (with it 0.850 / 1.75, mean rank lower on 2 of 2); "
                     "report seeds [10]: 0.600 / 4.00 (with it 0.700 / 3.00, mean rank lower on 1 of 1)."]
    # the translation rows read their own key the same way
    moved = {"x_tr": {"tuning": {**rec([0, 1], [(0.7, 3.0), (0.8, 2.0)], [(0.8, 2.0), (0.9, 2.5)])}}}
    for p in moved["x_tr"]["tuning"]["per_seed"]:
        p["before_translation:recall@1"], p["before_translation:mean_rank"] = (p.pop("single_query:recall@1"),
                                                                               p.pop("single_query:mean_rank"))
    assert bench.translation_notes(moved) == [
        "x_tr without its dorsal-to-palm translation, the very same runs (R@1 / mean rank): tuning seeds [0, 1]: "
        "0.750 / 2.50 (with it 0.850 / 2.25, mean rank lower on 1 of 2)."]
    assert bench.single_query_notes(moved) == []
    # a row with both steps: the translation's note compares with the scores right after the
    # translation (its single-query numbers), not with the final ones after the query-set step too
    both = {"x_tr_qn": {"tuning": rec([0, 1], [(0.7, 3.0), (0.8, 2.0)], [(0.8, 2.0), (0.9, 1.5)])}}
    for p, before in zip(both["x_tr_qn"]["tuning"]["per_seed"], [(0.6, 3.5), (0.7, 1.5)]):
        p["before_translation:recall@1"], p["before_translation:mean_rank"] = before
    assert bench.translation_notes(both) == [
        "x_tr_qn without its dorsal-to-palm translation, the very same runs (R@1 / mean rank): tuning seeds [0, 1]: "
        "0.650 / 2.50 (with it (before the query-set step) 0.750 / 2.50, mean rank lower on 1 of 2)."]


def test_the_section_shows_a_row_with_only_a_validation_run(bench, tmp_path, monkeypatch, hands_samples):
    """A candidate checked on seeds 5-9 before any other run keeps its row (tuning and report columns
    empty) and its validation note; the section once read FTA from the tuning or report record only."""
    monkeypatch.setattr(bench, "run_method", _fake_run())
    cfg = str(REPO_ROOT / "configs" / "hands_b_triplet_batch_hard.yaml")
    rec = bench.run_config(cfg, [5, 6], "validation", hands_samples, "cpu", False, results_dir=tmp_path)
    written = {}
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "update_benchmarks_section", lambda name, md: written.update({name: md}))
    bench.write_section()
    md = written["hands_dorsal_palmar"]
    row = next(line for line in md.splitlines() if line.startswith("| hands_b_triplet_batch_hard |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:8] == ["–"] * 6  # tuning R@1 / mean rank, report R@1 / mean rank / R@5 / mAP
    assert f"hands_b_triplet_batch_hard {rec['metrics']['recall@1']['mean']:.3f}" in md
    assert "Validation seeds [5, 6, 7, 8, 9]" in md


def test_the_hand_written_headlines_name_the_best_method_with_its_report_numbers():
    """BENCHMARKS.md's summary table and the README's results table are written by hand: both must
    name BEST_METHOD and quote its recorded report-seed R@1 / mean rank (the summary row once
    still named the previous best after a new one was adopted)."""
    from biomatch.hands.protocol import BEST_METHOD
    from biomatch.results import RESULTS_DIR

    rec = json.loads((RESULTS_DIR / f"hands_dorsal_palmar_{BEST_METHOD}_report.json").read_text())
    r1, mr = rec["metrics"]["recall@1"]["mean"], rec["metrics"]["mean_rank"]["mean"]
    wanted = {"BENCHMARKS.md": ("| Hands: dorsal → palmar |", [f"R@1 {r1:.3f}", f"mean rank {mr:.2f}"]),
              "README.md": ("| Hands dorsal→palmar,", [f"{r1:.3f} / {mr:.2f}"])}
    for doc, (start, numbers) in wanted.items():
        rows = [line.replace("**", "") for line in (REPO_ROOT / doc).read_text().splitlines() if line.startswith(start)]
        assert len(rows) == 1, doc
        best_named = rows[0].index(BEST_METHOD)
        assert all(rows[0].find(n) > best_named for n in numbers), (doc, numbers)


def test_head_draws_get_their_own_file_no_row_and_a_note_beside_the_row(bench, tmp_path, monkeypatch, hands_samples):
    """--head-draw D reruns a method on the same seeds with other head seeds: run_method gets the
    draw, the record goes to ..._draw<D>_<role>.json with head_draw, the table keeps one row (draw 0)
    and the note lists every draw's mean over the seeds all draws share."""
    seen = []

    def run(cfg, split, device="cpu", progress=False, head_draw=0, **_):
        seen.append(head_draw)
        return _fake_run()(cfg, split.__class__(split.train, split.val, split.test, split.seed + 100 * head_draw))

    monkeypatch.setattr(bench, "run_method", run)
    cfg = str(REPO_ROOT / "configs" / "hands_b_triplet_batch_hard.yaml")
    row = bench.run_config(cfg, [0, 1, 2], "tuning", hands_samples, "cpu", False, results_dir=tmp_path)
    one = bench.run_config(cfg, [0, 1], "tuning", hands_samples, "cpu", False, results_dir=tmp_path, head_draw=1)
    assert seen == [0, 0, 0, 1, 1]
    assert (tmp_path / "hands_dorsal_palmar_hands_b_triplet_batch_hard_draw1_tuning.json").is_file()
    assert row["head_draw"] == 0 and one["head_draw"] == 1 and one["seeds"] == [0, 1]
    assert one["per_seed"][0]["mean_rank"] != row["per_seed"][0]["mean_rank"]  # other heads, other ranks
    written = {}
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "update_benchmarks_section", lambda name, md: written.update({name: md}))
    bench.write_section()
    md = written["hands_dorsal_palmar"]
    assert sum(line.startswith("| hands_b_triplet_batch_hard |") for line in md.splitlines()) == 1
    mr0 = np.mean([p["mean_rank"] for p in row["per_seed"][:2]])  # the seeds both draws ran
    mr1 = np.mean([p["mean_rank"] for p in one["per_seed"]])
    sd = np.mean([np.std([row["per_seed"][i]["mean_rank"], one["per_seed"][i]["mean_rank"]]) for i in (0, 1)])
    assert (f"hands_b_triplet_batch_hard, head-seed draws (the same method and splits, every head from other seeds; "
            f"`--head-draw`, draw 0 is the row), tuning seeds [0, 1], R@1 / mean rank: draw 0 "
            f"{np.mean([p['recall@1'] for p in row['per_seed'][:2]]):.3f} / {mr0:.3f}, draw 1 "
            f"{np.mean([p['recall@1'] for p in one['per_seed']]):.3f} / {mr1:.3f}; over the 2 draws "
            f"{np.mean([mr0, mr1]):.3f} ± {np.std([mr0, mr1]):.3f} "
            f"(per seed, the std across draws averages {sd:.3f}).") in md
