"""Benchmark: 11k Hands dorsal → palmar, every configs/hands_*.yaml method over 5 split seeds.

Writes benchmarks/results/hands_dorsal_palmar_<method>.json (DESIGN.md schema) and the
hands_dorsal_palmar section of BENCHMARKS.md with the published reference numbers beside ours.

    python benchmarks/hands_dorsal_palmar.py [--seeds 0,1,2,3,4] [--configs configs/hands_b*.yaml]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

from biomatch.config import load_method
from biomatch.data.transforms import eval_transform
from biomatch.embeddings import extract
from biomatch.hands.methods import run_method
from biomatch.hands.protocol import load_hands, make_split
from biomatch.metrics.retrieval import bootstrap_ci
from biomatch.models.backbones import create_backbone
from biomatch.paths import REPO_ROOT
from biomatch.results import machine_description, markdown_table, summarize, update_benchmarks_section, write_result

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


def embed_throughput(backbone_name: str, n: int = 64) -> float:
    """Images per second through the backbone (decode + preprocess + forward), no cache."""
    samples = load_hands()[:n]
    bb = create_backbone(backbone_name).eval()
    tf = eval_transform(bb.input_size, bb.mean, bb.std)
    extract(bb, samples[:8], tf, progress=False)  # warm-up
    start = time.perf_counter()
    extract(bb, samples, tf, batch_size=32, progress=False)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--configs", nargs="*", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.configs or sorted(glob.glob(str(REPO_ROOT / "configs" / "hands_*.yaml")))
    samples = load_hands()
    splits = {s: make_split(samples, s) for s in seeds}
    throughput = embed_throughput("efficientnet_lite0")
    rows, per_seed_r1, bench_start = [], {}, time.perf_counter()
    for path in configs:
        cfg = load_method(path)
        start = time.perf_counter()
        runs = [run_method(cfg, splits[s], device=args.device, progress=False) for s in seeds]
        elapsed = time.perf_counter() - start
        per_seed_r1[cfg.name] = [r.metrics["recall@1"] for r in runs]
        metrics = {m: summarize([r.metrics[m] for r in runs]) for m in METRICS}
        cis = [bootstrap_ci(r.ranks, n_boot=1000, seed=r.seed)["recall@1"] for r in runs]
        metrics["recall@1_ci95_per_seed"] = [list(c) for c in cis]
        gallery_ids = [len({g.identity for g in r.gallery}) for r in runs]
        metrics["random_recall@1"] = summarize([1 / n for n in gallery_ids])
        ref_name, ref_metrics = REFERENCES.get(cfg.name, ("", {}))
        write_result(
            f"hands_dorsal_palmar_{cfg.name}", benchmark="hands_dorsal_palmar", method=f"{cfg.name}: {cfg.description}",
            dataset="11k Hands (bundled subset: 181 subjects with both views, 100–180 px squares)",
            protocol=PROTOCOL, seeds=seeds, metrics=metrics,
            reference={"source": REFERENCE_SOURCE, "method": ref_name, "metrics": ref_metrics} if ref_name else {},
            timing={"embed_img_per_s": throughput, "total_s_all_seeds": elapsed,
                    "train_s_mean": float(np.mean([r.timing["train_s"] for r in runs]))},
            extra={"config": cfg.model_dump(), "per_seed": [{"seed": r.seed, **r.metrics} for r in runs],
                   "n_queries": [len(r.queries) for r in runs], "n_gallery": [len(r.gallery) for r in runs]},
        )
        rows.append([cfg.name] + [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in METRICS]
                    + [f"{elapsed:.0f}"])
        print(rows[-1], flush=True)
    for name, (ref_name, ref) in REFERENCES.items():
        rows.append([f"reference: {ref_name}"] + [f"{ref[m]:.3f}" if m in ref else "–" for m in METRICS] + ["–"])
    n_ids = len({s.identity for s in splits[seeds[0]].test})
    rows.append([f"random (1/{n_ids} test subjects)", f"{1 / n_ids:.3f}"] + ["–"] * (len(METRICS) - 1) + ["–"])
    b_beats_a = ""
    if {"hands_a_twin_contrastive", "hands_b_triplet_batch_hard"} <= set(per_seed_r1):
        wins = [b > a for a, b in zip(per_seed_r1["hands_a_twin_contrastive"], per_seed_r1["hands_b_triplet_batch_hard"])]
        b_beats_a = f"(b) beats (a) at R@1 on {sum(wins)} of {len(wins)} seeds."
    md = "\n\n".join([
        "## Hands: dorsal query → palmar gallery (11k Hands)",
        f"`python benchmarks/hands_dorsal_palmar.py` — seeds {seeds}, mean ± std over seeds. {PROTOCOL}. "
        f"Machine: {machine_description()}; embed throughput (EfficientNet-Lite0, 224 px, decode+forward): "
        f"{throughput:.1f} img/s; whole benchmark {time.perf_counter() - bench_start:.0f} s with cached features.",
        markdown_table(["method", *METRICS, "s (5 seeds)"], rows),
        f"{b_beats_a} References were measured on 1600×1200 originals with ResNet50 / DINOv2 ViT-B/14 weights, "
        "which are not available here; our images are 100–180 px squares and our backbone is ImageNet "
        "EfficientNet-Lite. Per-seed numbers and bootstrap CIs are in benchmarks/results/hands_dorsal_palmar_*.json.",
    ])
    update_benchmarks_section("hands_dorsal_palmar", md)


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    main()
