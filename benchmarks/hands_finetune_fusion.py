"""Score the GPU-finetuned Lite0 embeddings (scripts/gpu_hands_finetune.py) alone and fused with the
best frozen method, under the issue #14 seed rule.

For each split seed the GPU run finished: the finetuned embeddings' ranks alone, and the score fusion
(1 - a) * S_best + a * S_ft, where S_best is the best method's (query x gallery) score matrix
(configs/hands_e_lite0_aligned_geo05.yaml, recomputed here with `run_method` from cached features and
cached per seed under <cache>/hands_ft_fusion/, since one seed takes minutes on a 2-core CPU) and S_ft
the finetuned cosine. The recipe (A/B) and the weight a are chosen on the TUNING seeds 0-4 only
(highest mean R@1; within 0.005 of it, lowest mean rank), then the report seeds 10-19 are scored
once with the frozen choice. Rows go to benchmarks/results/hands_dorsal_palmar_<name>_{tuning,report}.json
and the BENCHMARKS.md hands section (benchmarks/hands_dorsal_palmar.py's helpers).

    python benchmarks/hands_finetune_fusion.py OUT_DIR [--threads 1]
    python benchmarks/hands_finetune_fusion.py --scores-only --seeds 0,1   # fill the S_best cache
    python benchmarks/hands_finetune_fusion.py OUT_DIR --results-dir /tmp/x --no-section   # a dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hands_dorsal_palmar as hdp

from biomatch.config import MethodConfig, load_method
from biomatch.errors import InputError
from biomatch.hands.methods import RunResult, run_method
from biomatch.hands.protocol import (
    REPORT_SEEDS,
    TUNING_SEEDS,
    HandsSplit,
    load_hands,
    make_split,
    role_record,
    seed_role,
)
from biomatch.metrics.retrieval import (
    bootstrap_ci,
    ranks_from_scores,
    retrieval_summary,
)
from biomatch.paths import REPO_ROOT, cache_dir
from biomatch.results import RESULTS_DIR, git_commit, write_result
from biomatch.viz.hands_report import rank_histogram, worst_queries

# the frozen method the GPU run was fused with (the best on tuning seeds when it ran; hands_e_aligned_geo05 came later)
FUSED_WITH = "hands_e_lite0_aligned_geo05"

ALONE, FUSED = "hands_f_lite0_aligned_finetune", "hands_f_lite0_aligned_finetune_fusion"
WEIGHTS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
R1_TOLERANCE = 0.005


def best_config() -> MethodConfig:
    return load_method(REPO_ROOT / "configs" / f"{FUSED_WITH}.yaml")


def best_scores(cfg: MethodConfig, samples, seed: int, cache: Path | None = None) -> RunResult:
    """The best method's RunResult on split `seed`; its score matrix and sample names are cached
    (keyed on the config), so a second call returns at once (the head training is not redone)."""
    folder = (cache or cache_dir()) / "hands_ft_fusion"
    key = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"{cfg.name}-{key}-seed{seed}.npz"
    split = make_split(samples, seed)
    queries, gallery = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
    if path.is_file():
        z = np.load(path)
        if list(z["queries"]) != [s.path.name for s in queries] or list(z["gallery"]) != [s.path.name for s in gallery]:
            raise InputError(f"{path} was made for another split; delete it")
        scores = z["scores"]
        ranks = ranks_from_scores(scores, [s.identity for s in queries], [s.identity for s in gallery])
        metrics = {**retrieval_summary(ranks), **json.loads(str(z["extra"]))}
        return RunResult(cfg.name, seed, ranks, metrics, None, queries, gallery, np.zeros((0, 0)), np.zeros((0, 0)),
                         json.loads(str(z["timing"])), scores=scores)
    r = run_method(cfg, split, progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {k: v for k, v in r.metrics.items() if k.startswith("fta")}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, scores=r.score_matrix(), queries=[s.path.name for s in r.queries],
             gallery=[s.path.name for s in r.gallery], extra=json.dumps(extra), timing=json.dumps(r.timing),
             commit=git_commit())
    os.replace(tmp, path)
    return r


def finetuned_scores(z, seed: int, recipe: str, r: RunResult) -> np.ndarray:
    """Cosine scores of the finetuned embeddings, checked to be in the order of `r`'s queries/gallery."""
    names = z["names"]
    if [names[i] for i in z[f"s{seed}_query"]] != [s.path.name for s in r.queries] or \
            [names[i] for i in z[f"s{seed}_gallery"]] != [s.path.name for s in r.gallery]:
        raise InputError(f"seed {seed}: the GPU run's queries/gallery are not this split's (re-export?)")
    return z[f"s{seed}_{recipe}_q"].astype(np.float32) @ z[f"s{seed}_{recipe}_g"].astype(np.float32).T


def fused_result(r: RunResult, s_ft: np.ndarray, a: float) -> RunResult:
    scores = (1 - a) * r.score_matrix() + a * s_ft
    ranks = ranks_from_scores(scores, [s.identity for s in r.queries], [s.identity for s in r.gallery])
    return dataclasses.replace(r, ranks=ranks, scores=scores, metrics={**r.metrics, **retrieval_summary(ranks)})


def choose(table: dict[tuple[str, float], list[dict]]) -> tuple[str, float]:
    """(recipe, weight) with the highest mean tuning R@1; within R1_TOLERANCE of it, lowest mean rank."""
    means = {k: (np.mean([m["recall@1"] for m in v]), np.mean([m["mean_rank"] for m in v])) for k, v in table.items()}
    top = max(r1 for r1, _ in means.values())
    near = [k for k, (r1, _) in means.items() if r1 >= top - R1_TOLERANCE]
    return min(near, key=lambda k: (means[k][1], -means[k][0]))


def seed_record(r: RunResult, seed: int, log: dict, recipe: str, a: float) -> dict:
    run = next(x for x in log["runs"] if x["seed"] == seed and x["recipe"] == recipe)
    ci = bootstrap_ci(r.ranks, n_boot=1000, seed=seed)["recall@1"]
    return {"seed": seed, **{m: r.metrics[m] for m in hdp.METRICS},
            **{k: v for k, v in r.metrics.items() if k.startswith("fta")}, "recall@1_ci95": list(ci),
            "n_queries": len(r.queries), "n_gallery": len(r.gallery),
            "n_gallery_subjects": len({g.identity for g in r.gallery}), "rank_histogram": rank_histogram(r.ranks.first_rank),
            "worst_queries": worst_queries(r, 10), "train_s": run["warmup_s"] + run["finetune_s"],
            "features_s": float(log.get("load_s", 0.0)), "commit": git_commit(), "recipe": recipe, "fusion_weight": a,
            "finetune_device": log["device"], "finetune_steps": run["steps"], "warm_only_gpu": run["warm_only"],
            "finetuned_gpu": run["finetuned"]}


def write_row(name: str, role: str, per_seed: list[dict], log: dict, choice: dict, results_dir: Path = RESULTS_DIR) -> Path:
    cfg = load_method(REPO_ROOT / "configs" / f"{name}.yaml")
    return write_result(
        hdp.result_name(name, role), benchmark="hands_dorsal_palmar", method=f"{name}: {cfg.description}",
        dataset=hdp.DATASET, protocol=hdp.PROTOCOL, seeds=[p["seed"] for p in per_seed],
        metrics=hdp.aggregate(per_seed),
        timing={"train_s_mean": float(np.mean([p["train_s"] for p in per_seed])),
                "features_s_first_seed": per_seed[0]["features_s"], "gpu_wall_s": log.get("wall_s")},
        extra={**role_record(role, [p["seed"] for p in per_seed]),
               "config": cfg.model_dump(), "verdict": cfg.verdict, "per_seed": per_seed,
               "finetune_device": log["device"], "finetune_torch": log.get("torch"), "recipes": log["recipes"],
               "steps_scale": log.get("steps_scale"), "probe_step_s": log.get("probe_step_s"),
               "choice_on_tuning_seeds": choice, "load": list(os.getloadavg())},
        results_dir=results_dir,
    )


def evaluate(out_dir: Path, samples, results_dir: Path = RESULTS_DIR, cache: Path | None = None,
             section: bool = True) -> dict:
    """Choose on the tuning seeds the GPU run finished, score its report seeds, write both rows."""
    z = np.load(out_dir / "hands_ft.npz")
    log = json.loads((out_dir / "hands_ft_log.json").read_text())
    done = sorted({x["seed"] for x in log["runs"]})
    recipes = sorted({x["recipe"] for x in log["runs"]})
    cfg = best_config()
    by_seed = {}
    for seed in done:
        t = time.perf_counter()
        r = best_scores(cfg, samples, seed, cache)
        have = [x for x in recipes if any(u["seed"] == seed and u["recipe"] == x for u in log["runs"])]
        by_seed[seed] = (r, {x: finetuned_scores(z, seed, x, r) for x in have})
        print(f"seed {seed}: best-method scores in {time.perf_counter() - t:.0f} s", flush=True)
    tuning = [s for s in done if s in TUNING_SEEDS]
    report = [s for s in done if s in REPORT_SEEDS]
    if not tuning:
        raise InputError("no tuning seed in the GPU run: nothing to choose the recipe and weight on")
    sweep: dict[tuple[str, float], list[dict]] = {}
    for x in recipes:
        if not all(x in by_seed[s][1] for s in tuning):
            continue
        for a in WEIGHTS:
            sweep[(x, a)] = [retrieval_summary(fused_result(by_seed[s][0], by_seed[s][1][x], a).ranks) for s in tuning]
    alone = {k: v for k, v in sweep.items() if k[1] == 1.0}
    recipe_alone, _ = choose(alone)
    recipe_fused, weight = choose(sweep)
    table = {f"{x} a={a:g}": {"recall@1": float(np.mean([m["recall@1"] for m in v])),
                              "mean_rank": float(np.mean([m["mean_rank"] for m in v]))} for (x, a), v in sweep.items()}
    choice = {"tuning_seeds": tuning, "alone_recipe": recipe_alone, "fusion_recipe": recipe_fused,
              "fusion_weight": weight, "rule": f"max mean R@1, within {R1_TOLERANCE} of it min mean rank",
              "sweep_tuning_means": table}
    print(f"chosen on tuning seeds {tuning}: alone recipe {recipe_alone}; fusion recipe {recipe_fused}, weight {weight}",
          flush=True)
    written = {}
    for role, seeds in (("tuning", tuning), ("report", report)):
        if not seeds or seed_role(seeds) != role:
            continue
        for name, x, a in ((ALONE, recipe_alone, 1.0), (FUSED, recipe_fused, weight)):
            per_seed = [seed_record(fused_result(by_seed[s][0], by_seed[s][1][x], a), s, log, x, a)
                        for s in seeds if x in by_seed[s][1]]
            if per_seed:
                written[(name, role)] = write_row(name, role, per_seed, log, choice, results_dir)
                m = hdp.aggregate(per_seed)
                print(f"{name} [{role}] seeds {[p['seed'] for p in per_seed]}: R@1 {m['recall@1']['mean']:.3f} ± "
                      f"{m['recall@1']['std']:.3f}, mean rank {m['mean_rank']['mean']:.2f} ± {m['mean_rank']['std']:.2f}",
                      flush=True)
        base = [retrieval_summary(by_seed[s][0].ranks) for s in seeds]
        print(f"{FUSED_WITH} [{role}] same seeds: R@1 {np.mean([b['recall@1'] for b in base]):.3f}, mean rank "
              f"{np.mean([b['mean_rank'] for b in base]):.2f}", flush=True)
    print(f"for the configs' verdicts: finetuned on {log['device']} (torch {log.get('torch')}), recipe/weight chosen "
          f"on tuning seeds {tuning}: alone {recipe_alone}, fusion {recipe_fused} at a={weight:g}", flush=True)
    if section:
        hdp.write_section()
    return {"choice": choice, "written": {f"{k[0]}_{k[1]}": str(v) for k, v in written.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="the GPU run's $OUT (hands_ft.npz, hands_ft_log.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scores-only", action="store_true", help="only fill the best method's score cache")
    parser.add_argument("--seeds", default=",".join(str(s) for s in [*TUNING_SEEDS, *REPORT_SEEDS]))
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="(tests) write the rows elsewhere")
    parser.add_argument("--no-section", action="store_true", help="(tests) leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = load_hands()
    if args.scores_only:
        cfg = best_config()
        for seed in (int(s) for s in args.seeds.split(",")):
            t = time.perf_counter()
            r = best_scores(cfg, samples, seed)
            print(f"seed {seed}: R@1 {r.metrics['recall@1']:.3f} mean rank {r.metrics['mean_rank']:.2f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        return
    if not args.out_dir or not (Path(args.out_dir) / "hands_ft.npz").is_file():
        sys.exit(f"no hands_ft.npz in {args.out_dir!r}: pass the GPU run's output folder")
    evaluate(Path(args.out_dir), samples, Path(args.results_dir), section=not args.no_section)


if __name__ == "__main__":
    main()
