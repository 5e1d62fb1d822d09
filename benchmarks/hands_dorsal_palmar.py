"""Benchmark: 11k Hands dorsal → palmar, configs/hands_*.yaml methods over split seeds.

Seed rule (issue #14): split seeds 0–4 are the TUNING seeds — every choice (method, budget,
margin, taps, fusion and geometry weights, anything) is made on them only. Seeds 10–19 are the
REPORT seeds, run once after the choices are frozen; the headline numbers come from them. Seeds
5–9 are the VALIDATION seeds: a candidate picked among many probes on the tuning seeds is checked
there, under a rule fixed before, before its one report run (they choose nothing). Each
result file is named by method and role (hands_dorsal_palmar_<method>_<role>.json) and carries
"seeds" (the seeds actually run), "seed_role" ("tuning" | "validation" | "report") and per-seed results with
the commit each was measured at. A seed's result is written as soon as it finishes, so a killed
run keeps what it did (`complete: false` until every planned seed is in). "(b) beats (a) on N of
M seeds" only compares seeds both rows ran.

`--head-draw D` (D > 0) reruns a method on the same split seeds with every head trained from other
seeds (biomatch.hands.methods.HEAD_DRAW_STRIDE) into its own file (..._<method>_draw<D>_<role>.json):
it chooses nothing and makes no row; the section lists the draws beside draw 0 (the recorded row),
so a reader sees how far the heads' seeds alone move a result.

    python benchmarks/hands_dorsal_palmar.py --role tuning [--configs configs/hands_b*.yaml]
    python benchmarks/hands_dorsal_palmar.py --role validation --configs <candidate + the method it would replace>
    python benchmarks/hands_dorsal_palmar.py --role report --configs <frozen best + a, b, controls>
    python benchmarks/hands_dorsal_palmar.py --role tuning --head-draw 1 --configs <a method>
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from biomatch.config import MethodConfig, load_method
from biomatch.hands.methods import run_method
from biomatch.hands.protocol import (
    BEST_METHOD,
    REPORT_SEEDS,
    ROLE_SEEDS,
    TUNING_SEEDS,
    VALIDATION_SEEDS,
    load_hands,
    make_split,
    result_name,
    role_record,
    seed_role,
)
from biomatch.hands.sessions import cross_session_queries, session_breakdown
from biomatch.metrics.retrieval import bootstrap_ci, excess_rank_by_identity, identity_first_ranks
from biomatch.models.onnx_features import feature_runtime
from biomatch.paths import REPO_ROOT
from biomatch.results import (
    RESULTS_DIR,
    git_commit,
    markdown_table,
    summarize,
    update_benchmarks_section,
    write_result,
)
from biomatch.viz.hands_report import (
    plot_subject_sessions,
    plot_worst_queries,
    rank_histogram,
    worst_queries,
)

METRICS = ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank", "map")
REFERENCE_SOURCE = ("DESIGN.md / issue #3: full-resolution 11k Hands (1600×1200), one split, ~41 test subjects")
REFERENCES = {
    "hands_a_twin_contrastive": ("ResNet50 twin + contrastive", {"recall@1": 0.098, "recall@5": 0.415,
                                                                  "recall@10": 0.634, "mean_rank": 12.20}),
    "hands_b_triplet_batch_hard": ("DINOv2 ViT-B/14 frozen + triplet batch-hard",
                                   {"recall@1": 0.610, "recall@5": 0.902, "recall@10": 0.951, "mean_rank": 2.51}),
}
PROTOCOL = ("subject-disjoint split 68/11/21 % of subjects with both views; queries = every dorsal image "
            "of test subjects, gallery = every palmar image of test subjects; ranks pessimistic on ties")
DATASET = "11k Hands (bundled subset: 181 subjects with both views, 100–180 px squares)"
PLOTS = RESULTS_DIR / "hands_dorsal_palmar_plots"


def aggregate(per_seed: Sequence[dict]) -> dict:
    """mean ± std of every metric over the seeds done so far, plus the pooled rank histogram."""
    metrics = {m: summarize([p[m] for p in per_seed]) for m in METRICS}
    for extra in ("fta_rate",):
        if all(extra in p for p in per_seed):
            metrics[extra] = summarize([p[extra] for p in per_seed])
    metrics["random_recall@1"] = summarize([1 / p["n_gallery_subjects"] for p in per_seed])
    hist: dict[str, int] = {}
    for p in per_seed:
        for k, v in p["rank_histogram"].items():
            hist[k] = hist.get(k, 0) + v
    metrics["rank_histogram_all_seeds"] = hist
    return metrics


def run_config(path: str, seeds: Sequence[int], role: str, samples, device: str, resume: bool,
               results_dir=RESULTS_DIR, head_draw: int = 0) -> dict:
    """Run one config over `seeds`, rewriting its result file after every seed (head draw > 0:
    its own file, no figures)."""
    cfg = load_method(path)
    name = result_name(f"{cfg.name}_draw{head_draw}" if head_draw else cfg.name, role)
    out = results_dir / f"{name}.json"
    per_seed: list[dict] = []
    if resume and out.is_file():
        old = json.loads(out.read_text())
        if old.get("config") == cfg.model_dump():
            per_seed = [p for p in old.get("per_seed", []) if p["seed"] in seeds]
    done = {p["seed"] for p in per_seed}
    for seed in seeds:
        if seed in done:
            continue
        load_before = os.getloadavg()
        r = run_method(cfg, make_split(samples, seed), device=device, progress=False, head_draw=head_draw)
        ci = bootstrap_ci(r.ranks, n_boot=1000, seed=seed)["recall@1"]
        by_identity = identity_first_ranks(r.score_matrix(), [q.identity for q in r.queries],
                                           [g.identity for g in r.gallery])
        rec = {"seed": seed, **{m: r.metrics[m] for m in METRICS},
               **{k: v for k, v in r.metrics.items() if k.startswith(("fta", "geo", "single_query", "translation", "before_translation"))},
               "recall@1_ci95": list(ci), "identity_mean_rank": float(by_identity.mean()),
               "n_queries": len(r.queries), "n_gallery": len(r.gallery),
               "n_gallery_subjects": len({g.identity for g in r.gallery}),
               "rank_histogram": rank_histogram(r.ranks.first_rank),
               "worst_queries": worst_queries(r, 10),
               "sessions": session_breakdown(r.ranks.first_rank, r.queries, r.gallery),
               "excess_rank": excess_record(r.ranks.first_rank, [q.identity for q in r.queries]),
               "train_s": r.timing["train_s"],
               "features_s": r.timing["features_s"], "commit": git_commit(),
               "load_before": list(load_before), "load_after": list(os.getloadavg()),
               "feature_runtime": feature_runtime(device)}
        per_seed.append(rec)
        with _locked(out):  # several processes may run seeds of one config: merge, never clobber
            _write(cfg, name, role, seeds, merged_seeds(out, cfg, per_seed), results_dir, head_draw)
        # the section's figures show the recorded row (draw 0) of the tuning and report seeds
        if not head_draw and cfg.name == BEST_METHOD and seed == seeds[0] and role != "validation":
            plot_worst_queries(r, results_dir / PLOTS.name / f"{cfg.name}_{role}_seed{seed}_worst.png")
        if not head_draw and cfg.name == BEST_METHOD and rec["sessions"]["cross_session"]["n_queries"]:
            cross = cross_session_queries(r.queries, r.gallery)
            for identity in sorted({q.identity for q, c in zip(r.queries, cross) if c}):
                plot_subject_sessions(r.queries + r.gallery, identity,
                                      results_dir / PLOTS.name / f"sessions_{identity}.png")
        drawn = f" draw {head_draw}" if head_draw else ""
        print(f"{cfg.name}{drawn} [{role}] seed {seed}: R@1 {r.metrics['recall@1']:.3f} mean rank "
              f"{r.metrics['mean_rank']:.2f} ({r.timing['train_s']:.0f} s train)", flush=True)
    return json.loads(out.read_text())


def merged_seeds(out: Path, cfg: MethodConfig, mine: list[dict]) -> list[dict]:
    """This process's seed records plus those in `out` (same config) for seeds it did not run;
    where both hold a seed, this process's record wins (a rerun replaces, never duplicates)."""
    by_seed: dict[int, dict] = {}
    if out.is_file():
        other = json.loads(out.read_text())
        if other.get("config") == cfg.model_dump():
            by_seed = {p["seed"]: p for p in other.get("per_seed", [])}
    by_seed.update({p["seed"]: p for p in mine})
    return [by_seed[s] for s in sorted(by_seed)]


@contextlib.contextmanager
def _locked(path):
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"{path.name}.lock", "w") as fh:  # outside the repository
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _write(cfg, name: str, role: str, seeds: Sequence[int], per_seed: list[dict], results_dir,
           head_draw: int = 0) -> None:
    planned = sorted(set(seeds) | {p["seed"] for p in per_seed})
    write_result(
        name, benchmark="hands_dorsal_palmar", method=f"{cfg.name}: {cfg.description}", dataset=DATASET,
        protocol=PROTOCOL, seeds=[p["seed"] for p in per_seed], metrics=aggregate(per_seed),
        reference=_reference(cfg.name),
        timing={"train_s_mean": float(np.mean([p["train_s"] for p in per_seed])),
                "features_s_first_seed": per_seed[0]["features_s"]},
        extra={**role_record(role, [p["seed"] for p in per_seed]),
               "config": cfg.model_dump(), "verdict": cfg.verdict, "per_seed": per_seed, "head_draw": head_draw,
               "load": list(os.getloadavg()), "seeds_this_process": planned,
               # seeds measured before biomatch.models.onnx_features ran their features through PyTorch
               "feature_runtime": sorted({p.get("feature_runtime", "torch") for p in per_seed})},
        results_dir=results_dir,
    )


def _reference(name: str) -> dict:
    ref_name, ref_metrics = REFERENCES.get(name, ("", {}))
    return {"source": REFERENCE_SOURCE, "method": ref_name, "metrics": ref_metrics} if ref_name else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=tuple(ROLE_SEEDS), default="tuning",
                        help="tuning = seeds 0-4 (choices are made here), validation = seeds 5-9 (a candidate's check "
                             "before its report run), report = seeds 10-19 (run once, frozen)")
    parser.add_argument("--seeds", default=None, help="a subset of the role's seeds, e.g. 0,1")
    parser.add_argument("--configs", nargs="*", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--resume", action="store_true", help="keep seeds already in the result file (same config)")
    parser.add_argument("--section-only", action="store_true", help="only rewrite the BENCHMARKS.md section")
    parser.add_argument("--head-draw", type=int, default=0,
                        help="D > 0: the same method and splits with every head from other seeds (own file, no row)")
    args = parser.parse_args()
    if args.head_draw < 0:
        sys.exit(f"--head-draw must be 0 or more, got {args.head_draw}")
    torch.set_num_threads(args.threads)
    role_seeds = list(ROLE_SEEDS[args.role])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else role_seeds
    if seed_role(seeds) != args.role:
        sys.exit(f"seeds {seeds} are not all {args.role} seeds ({role_seeds})")
    if not args.section_only:
        # the hands_f_* rows come from the GPU finetune (scripts/gpu_hands_finetune.py, scored by
        # benchmarks/hands_finetune_fusion.py): run_method cannot run them, so they are left out here
        configs = args.configs or sorted(c for c in glob.glob(str(REPO_ROOT / "configs" / "hands_*.yaml"))
                                         if not Path(c).name.startswith(GPU_SCRIPTED_PREFIX))
        samples = load_hands()
        for path in configs:
            run_config(path, seeds, args.role, samples, args.device, args.resume, head_draw=args.head_draw)
    write_section()


def row_kind(name: str) -> str:
    """What a row is: a reference method (a–c), a method (d, e), a control, or another protocol."""
    if name.startswith("hands_control_"):
        return "control, not a method"
    if "side_aware" in name:
        return "separate protocol: uses left/right labels"
    if name.endswith("_qn"):
        return "separate protocol: each query reads the other test queries"
    if name.endswith(("_qe", "_krr")):
        return "separate protocol: re-ranks over the whole test set"
    letters = re.match(r"[a-z]+", name.split("_")[1])  # hands_e10_p32, hands_e10x_parts: method (e) variants
    return f"method {letters.group(0) if letters else name.split('_')[1]}"


def beats(a: dict, b: dict) -> str:
    """'(b) beats (a) at R@1 on N of M seeds', over the seeds both rows ran."""
    pa, pb = {p["seed"]: p for p in a["per_seed"]}, {p["seed"]: p for p in b["per_seed"]}
    common = sorted(set(pa) & set(pb))
    wins = sum(pb[s]["recall@1"] > pa[s]["recall@1"] for s in common)
    return f"{wins} of {len(common)} seeds ({common})"


def _cell(rec: dict | None, metric: str) -> str:
    if rec is None:
        return "–"
    m = rec["metrics"][metric]
    partial = "" if rec.get("complete", True) else f" ({len(rec['seeds'])} seeds)"
    return f"{m['mean']:.3f} ± {m['std']:.3f}{partial}"


GPU_SCRIPTED_PREFIX = "hands_f_"


def _derive_tuning(results: dict[str, dict[str, dict]]) -> list[str]:
    """A config with a report run but no tuning run of its own that differs from a tuned config only
    in `geometry_weight` gets its tuning column from that run's geometry sweep (the very same heads,
    scored at the chosen weight; see GEOMETRY_SWEEP), and a note saying so."""
    skip = {"name", "description", "verdict", "geometry_weight"}
    notes = []
    for target in sorted(results):
        if "tuning" in results[target] or not (REPO_ROOT / "configs" / f"{target}.yaml").is_file():
            continue
        want = load_method(REPO_ROOT / "configs" / f"{target}.yaml").model_dump()
        key = f"geo{want['geometry_weight']:g}:"
        for name, recs in sorted(results.items()):
            rec = recs.get("tuning")
            if rec is None or rec["config"].get("name") == target:
                continue
            # a record written before a config field existed holds that field's default
            theirs = MethodConfig(**{k: v for k, v in rec["config"].items() if k in MethodConfig.model_fields}).model_dump()
            if any(theirs.get(k) != v for k, v in want.items() if k not in skip):
                continue
            if not all(key + "recall@1" in p for p in rec["per_seed"]):
                continue
            # only R@1 and mean rank were recorded at the other weights: nothing else is carried over
            per_seed = [{"seed": p["seed"], "commit": p["commit"], "recall@1": p[key + "recall@1"],
                         "mean_rank": p[key + "mean_rank"]} for p in rec["per_seed"]]
            results[target]["tuning"] = {**rec, "per_seed": per_seed, "config": {**rec["config"], "name": target},
                                         "metrics": {"recall@1": summarize([p["recall@1"] for p in per_seed]),
                                                     "mean_rank": summarize([p["mean_rank"] for p in per_seed]),
                                                     "fta_rate": rec["metrics"].get("fta_rate")}}
            notes.append(f"The tuning column of {target} is {name}'s run on seeds {rec['seeds']} scored at geometry "
                         f"weight {want['geometry_weight']:g} (the same heads; only the weight differs).")
            break
    return notes


MEAN_RANK_GOAL = 2.5  # issue #14: the best method's report mean rank
EXCESS_TOP = 5  # subjects named per seed in the "where the mean rank comes from" record


def excess_record(first_rank: Sequence[int], query_ids: Sequence[str]) -> dict:
    """Σ(first rank − 1) of one seed, its subject count, and the `EXCESS_TOP` subjects with the most
    of it (biomatch.metrics.retrieval.excess_rank_by_identity)."""
    parts = excess_rank_by_identity(first_rank, query_ids)
    return {"total": sum(p.excess for p in parts), "n_subjects": len(parts),
            "top": [{"subject": p.identity, "n_queries": p.n_queries, "excess": p.excess} for p in parts[:EXCESS_TOP]]}


def pooled_excess(per_seed: Sequence[dict]) -> str:
    """One sentence: per seed, the share of Σ(rank − 1) the `EXCESS_TOP` subjects with the most of it
    carry; "" where no seed recorded it."""
    recs = [p for p in per_seed if "excess_rank" in p]
    if not recs:
        return ""
    shares = [sum(t["excess"] for t in p["excess_rank"]["top"]) / p["excess_rank"]["total"]
              for p in recs if p["excess_rank"]["total"]]
    worst = [max(p["excess_rank"]["top"], key=lambda t: t["excess"]) for p in recs if p["excess_rank"]["top"]]
    if not shares:
        return ""
    return (f"Where the mean rank comes from (`excess_rank` per seed): mean rank = 1 + Σ(rank − 1) / queries, and on "
            f"seeds {[p['seed'] for p in recs]} the {EXCESS_TOP} subjects (of ~{recs[0]['excess_rank']['n_subjects']}) "
            f"with the most Σ(rank − 1) carry {np.mean(shares):.0%} of it (per seed {min(shares):.0%}–{max(shares):.0%});"
            f" the single worst subject per seed: " + ", ".join(
                f"{w['subject']} ({w['n_queries']} queries, mean rank {1 + w['excess'] / w['n_queries']:.1f})"
                for w in worst) + ". A seed's mean rank mostly says whether such subjects fell into its test set.")


def pooled_sessions(per_seed: Sequence[dict]) -> str:
    """One sentence: same-session vs cross-session queries (biomatch.hands.sessions), pooled over
    the seeds that recorded it; "" where none did."""
    recs = [p for p in per_seed if "sessions" in p]
    if not recs:
        return ""
    parts, pooled = [], {}
    for group in ("same_session", "cross_session"):
        n = sum(p["sessions"][group]["n_queries"] for p in recs)
        if not n:
            parts.append(f"{group.replace('_', '-')}: no query")
            continue
        with_n = [p["sessions"][group] for p in recs if p["sessions"][group]["n_queries"]]
        r1, mr = (sum(g[key] * g["n_queries"] for g in with_n) / n for key in ("recall@1", "mean_rank"))
        pooled[group] = (n, mr)
        chance = ""
        if all(g.get("chance_mean_rank") is not None for g in with_n):  # recorded since 2026-11-28
            chance = f" (a random gallery order: {sum(g['chance_mean_rank'] * g['n_queries'] for g in with_n) / n:.2f})"
        parts.append(f"{group.replace('_', '-')}: {n} queries, R@1 {r1:.3f}, mean rank {mr:.2f}{chance}")
    seeds = [p["seed"] for p in recs if p["sessions"]["cross_session"]["n_queries"]]
    n_all = sum(p["n_queries"] for p in recs)
    mr_all = sum(p["mean_rank"] * p["n_queries"] for p in recs) / n_all
    need = ""
    if len(pooled) == 2:  # what the goal asks of the same-session queries, the cross-session ones as they are
        (n_same, mr_same), (n_cross, mr_cross) = pooled["same_session"], pooled["cross_session"]
        need = (f" With the cross-session queries at their ranks, a pooled mean rank of {MEAN_RANK_GOAL:g} (issue #14) "
                f"needs the same-session ones at {(MEAN_RANK_GOAL * n_all - mr_cross * n_cross) / n_same:.2f} "
                f"(now {mr_same:.2f}).")
    return ("Capture sessions (biomatch.hands.sessions: a subject's photos more than 1,000 image numbers apart are "
            "another session; 8 of the 188 subjects here have two): a cross-session query has no palm of its subject "
            f"from its own session. Pooled over seeds {[p['seed'] for p in recs]} (all {n_all} queries: mean rank "
            f"{mr_all:.2f}) — " + "; ".join(parts)
            + (f" (cross-session queries on seeds {seeds})." if seeds else ".") + need
            + " A diagnostic only: the protocol and the headline columns keep every query.")


def same_run_notes(results: dict[str, dict[str, dict]], key: str, step: str, protocol: str = "",
                   after: tuple[str, str] | None = None) -> list[str]:
    """Per row whose seeds all recorded `key`:recall@1 / `key`:mean_rank (the same run scored
    before a step that runs last: the query-set step, the translation): those numbers pooled as the
    columns are (mean over seeds), per role, beside the row's own. With `after` = (key2, the step
    after it) and seeds that recorded key2:… (that later step ran too: the query-set step after the
    translation), the numbers right after this step are key2's, not the row's final ones, so the
    note isolates the one step."""
    notes = []
    for name, recs in sorted(results.items()):
        parts = []
        for role in ROLE_SEEDS:
            rec = recs.get(role)
            if rec is None or not all(f"{key}:mean_rank" in p for p in rec["per_seed"]):
                continue
            seeds = rec["per_seed"]
            r1, mr = (float(np.mean([p[f"{key}:{m}"] for p in seeds])) for m in ("recall@1", "mean_rank"))
            then = f"{after[0]}:" if after and all(f"{after[0]}:mean_rank" in p for p in seeds) else ""
            r1_with, mr_with = (float(np.mean([p[f"{then}{m}"] for p in seeds])) for m in ("recall@1", "mean_rank"))
            lower = sum(p[f"{then}mean_rank"] < p[f"{key}:mean_rank"] for p in seeds)
            label = f" (before the {after[1]})" if after and then else ""
            parts.append(f"{role} seeds {rec['seeds']}: {r1:.3f} / {mr:.2f} (with it{label} "
                         f"{r1_with:.3f} / {mr_with:.2f}, mean rank lower on {lower} of {len(seeds)})")
        if parts:
            notes.append(f"{name} without its {step}, the very same runs ({protocol}R@1 / mean rank): "
                         + "; ".join(parts) + ".")
    return notes


def single_query_notes(results: dict[str, dict[str, dict]]) -> list[str]:
    """Per query-set row (`query_neighbours`): the same runs' numbers before the query-set step."""
    return same_run_notes(results, "single_query", "query-set step", "single-query protocol, ")


def translation_notes(results: dict[str, dict[str, dict]]) -> list[str]:
    """Per translation row (`translation_weight`): the same runs' numbers before the translation,
    beside those right after it (before the query-set step, where one followed)."""
    return same_run_notes(results, "before_translation", "dorsal-to-palm translation",
                          after=("single_query", "query-set step"))


def validation_notes(results: dict[str, dict[str, dict]]) -> list[str]:
    """One sentence for the rows with a validation record (seeds 5–9): the check a candidate passed
    or failed between its tuning row and its report run, per seed, beside the rows it was checked against."""
    recs = {name: r["validation"] for name, r in sorted(results.items()) if "validation" in r}
    if not recs:
        return []
    parts = [f"{name} {rec['metrics']['recall@1']['mean']:.3f} / {rec['metrics']['mean_rank']['mean']:.3f} "
             f"(mean rank per seed {', '.join(format(p['mean_rank'], '.2f') for p in rec['per_seed'])})"
             + ("" if rec.get("complete", True) else f" ({len(rec['seeds'])} seeds)") for name, rec in recs.items()]
    return [f"Validation seeds {list(VALIDATION_SEEDS)} (neither tuning nor report: a candidate picked among many probes "
            "must also win there, under a rule fixed before, before its one report run), R@1 / mean rank: "
            + "; ".join(parts) + "."]


def head_draw_notes(results: dict[str, dict[str, dict]], draws: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    """Per method and role with head draws: every draw's R@1 / mean rank on the seeds draw 0 (the
    row) shares with it, their mean ± std, and the mean over seeds of the per-seed std across draws."""
    notes = []
    for (name, role), extra in sorted(draws.items()):
        row = results.get(name, {}).get(role)
        if row is None:
            continue
        recs = {0: row, **extra}
        common = sorted(set.intersection(*({p["seed"] for p in r["per_seed"]} for r in recs.values())))
        if not common:
            continue
        table = {d: {p["seed"]: p for p in r["per_seed"] if p["seed"] in common} for d, r in sorted(recs.items())}
        mr = {d: np.mean([table[d][s]["mean_rank"] for s in common]) for d in table}
        r1 = {d: np.mean([table[d][s]["recall@1"] for s in common]) for d in table}
        per_seed_sd = np.mean([np.std([table[d][s]["mean_rank"] for d in table]) for s in common])
        notes.append(f"{name}, head-seed draws (the same method and splits, every head from other seeds; "
                     f"`--head-draw`, draw 0 is the row), {role} seeds {common}, R@1 / mean rank: "
                     + ", ".join(f"draw {d} {r1[d]:.3f} / {mr[d]:.3f}" for d in table)
                     + f"; over the {len(table)} draws {np.mean(list(mr.values())):.3f} ± "
                     f"{np.std(list(mr.values())):.3f} (per seed, the std across draws averages {per_seed_sd:.3f}).")
    return notes


def measured_on(results: dict[str, dict[str, dict]]) -> str:
    """The distinct machines of the result files (without the load they were written at)."""
    machines = sorted({rec["machine"].split("; load")[0] for recs in results.values() for rec in recs.values()})
    return "; ".join(machines) or "–"


def write_section() -> None:
    """The BENCHMARKS.md section from every result file whose config still exists."""
    results: dict[str, dict[str, dict]] = {}
    draws: dict[tuple[str, str], dict[int, dict]] = {}  # (method, role) -> {head draw > 0: record}
    for path in sorted(RESULTS_DIR.glob("hands_dorsal_palmar_*.json")):
        record = json.loads(path.read_text())
        name, role = record["config"]["name"], record.get("seed_role")
        if role in ROLE_SEEDS and (REPO_ROOT / "configs" / f"{name}.yaml").is_file():
            if record.get("head_draw", 0):
                draws.setdefault((name, role), {})[record["head_draw"]] = record
            else:
                results.setdefault(name, {})[role] = record
    derived_notes = _derive_tuning(results)
    rows = []
    for name, recs in sorted(results.items(), key=lambda kv: (kv[0] != BEST_METHOD, kv[0])):
        t, r = recs.get("tuning"), recs.get("report")
        commits = sorted({p["commit"][:7] + ("*" if p["commit"].endswith("dirty") else "")
                          for rec in recs.values() for p in rec["per_seed"]})
        fta = (r or t or recs["validation"])["metrics"].get("fta_rate")  # a row may have a validation run only
        rows.append([f"**{name}**" if name == BEST_METHOD else name, row_kind(name),
                     _cell(t, "recall@1"), _cell(t, "mean_rank"), _cell(r, "recall@1"), _cell(r, "mean_rank"),
                     _cell(r, "recall@5"), _cell(r, "map"), f"{fta['mean']:.3f}" if fta else "–",
                     ", ".join(commits), load_method(REPO_ROOT / "configs" / f"{name}.yaml").verdict or "–"])
    for path in sorted((REPO_ROOT / "configs").glob("hands_*.yaml")):
        if path.stem not in results:  # a variant kept with its verdict, not rerun at this protocol
            cfg = load_method(path)
            rows.append([path.stem, row_kind(path.stem), "not rerun", "–", "–", "–", "–", "–", "–", "–",
                         cfg.verdict or "–"])
    for ref_name, ref in REFERENCES.values():
        rows.append([f"reference: {ref_name}", "published, 1 split", "–", "–", f"{ref['recall@1']:.3f}",
                     f"{ref['mean_rank']:.2f}", f"{ref['recall@5']:.3f}", "–", "–", "–", "–"])
    notes = (list(derived_notes) + validation_notes(results) + single_query_notes(results) + translation_notes(results)
             + head_draw_notes(results, draws))
    ort = sorted(n for n, recs in results.items()
                 if any(p.get("feature_runtime") == "onnxruntime" for rec in recs.values() for p in rec["per_seed"]))
    if ort:
        notes.append(f"Frozen features of {', '.join(ort)} were computed with ONNX Runtime "
                     "(biomatch.models.onnx_features, ~3× faster than eager PyTorch on this CPU, features within ~2e-7); "
                     "every other row with PyTorch (`feature_runtime` in each result file).")
    for role in ("tuning", "report"):
        a, b = (results.get(n, {}).get(role) for n in ("hands_a_twin_contrastive", "hands_b_triplet_batch_hard"))
        if a and b:
            notes.append(f"{role}: (b) beats (a) at R@1 on {beats(a, b)}.")
    best = results.get(BEST_METHOD, {})
    tail = []
    for role in ("report", "tuning"):
        rec = best.get(role)
        if rec and "rank_histogram_all_seeds" in rec["metrics"]:
            hist = rec["metrics"]["rank_histogram_all_seeds"]
            tail.append(f"First-correct-rank histogram of {BEST_METHOD} over all queries of its {role} seeds "
                        f"{rec['seeds']}: " + ", ".join(f"rank {k}: {v}" for k, v in hist.items()) + ".")
            by_identity = [p["identity_mean_rank"] for p in rec["per_seed"] if "identity_mean_rank" in p]
            if len(by_identity) == len(rec["per_seed"]):
                tail.append(f"Mean rank with each gallery subject counted once, at its best palm "
                            f"(`biomatch.metrics.retrieval.identity_first_ranks`; not the protocol's metric, which counts "
                            f"palms): {np.mean(by_identity):.2f} ± {np.std(by_identity):.2f} over the same seeds, vs "
                            f"{rec['metrics']['mean_rank']['mean']:.2f} counting palms. The difference is impostor "
                            f"subjects' extra palms above the true one.")
            excess = pooled_excess(rec["per_seed"])
            if excess:
                tail.append(excess)
            sessions = pooled_sessions(rec["per_seed"])
            if sessions:
                pics = sorted(PLOTS.glob("sessions_*.png"))
                tail.append(sessions + "".join(f"\n\n![sessions of subject {p.stem.split('_')[1]}]"
                                               f"({p.relative_to(REPO_ROOT)})" for p in pics))
            worst = sorted((w for p in rec["per_seed"][:1] for w in p["worst_queries"]), key=lambda w: -w["rank"])
            lines = [f"- {w['query']} (subject {w['subject']}): true palm {w['true_palm']['file'] if w['true_palm'] else '–'}"
                     f" at rank {w['rank']}; top-5 " + ", ".join(f"{t['file']}{' ✓' if t['same'] else ''}"
                                                                for t in w["top"]) for w in worst]
            seed0 = rec["per_seed"][0]["seed"]
            pic = PLOTS / f"{BEST_METHOD}_{role}_seed{seed0}_worst.png"
            tail.append(f"10 worst queries of seed {seed0} ({role}):\n" + "\n".join(lines)
                        + (f"\n\n![worst queries]({pic.relative_to(REPO_ROOT)})" if pic.is_file() else ""))
            break
    md = "\n\n".join([
        "## Hands: dorsal query → palmar gallery (11k Hands)",
        "`python benchmarks/hands_dorsal_palmar.py --role tuning|validation|report [--configs ...]`. "
        f"**Seed rule:** every choice is made on the tuning split seeds {list(TUNING_SEEDS)}; a candidate picked "
        f"among many probes is checked on the validation seeds {list(VALIDATION_SEEDS)} first; the report split "
        f"seeds {list(REPORT_SEEDS)} are run once, after the choices are frozen, for the best method "
        f"(**{BEST_METHOD}**), (a), (b) and the controls — the headline numbers are the report columns. "
        f"Mean ± std over seeds. {PROTOCOL}. FTA = share of images where MediaPipe found no hand (those fall "
        "back to the un-aligned path; none is dropped). Commit: where each seed was measured (* = uncommitted "
        f"changes in the tree). Machines the rows were measured on: {measured_on(results)}; shared with other "
        "jobs, so timings are upper bounds (each result file names its machine and per-seed load).",
        markdown_table(["method", "kind", "tuning R@1 (0–4)", "tuning mean rank", "report R@1 (10–19)",
                        "report mean rank", "report R@5", "report mAP", "FTA", "commit", "verdict (tuning seeds)"],
                       rows),
        " ".join(notes) + " References were measured on 1600×1200 originals with ResNet50 / DINOv2 ViT-B/14, "
        "which are not available here; our images are 100–180 px squares. Random R@1 ≈ 1/38 test subjects. "
        "Per-seed numbers, bootstrap CIs, rank histograms and worst queries: "
        "benchmarks/results/hands_dorsal_palmar_*_{tuning,validation,report}.json.",
        *tail,
    ])
    update_benchmarks_section("hands_dorsal_palmar", md)


if __name__ == "__main__":
    main()
