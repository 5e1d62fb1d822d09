"""Benchmark: 11k Hands dorsal → palmar, every configs/hands_*.yaml method over 5 split seeds.

Writes benchmarks/results/hands_dorsal_palmar_<method>.json (DESIGN.md schema) and the
hands_dorsal_palmar section of BENCHMARKS.md with the published reference numbers beside ours.

    python benchmarks/hands_dorsal_palmar.py [--seeds 0,1,2,3,4] [--configs configs/hands_b*.yaml]
"""

from __future__ import annotations

import argparse
import glob
import json
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
from biomatch.results import (
    RESULTS_DIR,
    machine_description,
    markdown_table,
    summarize,
    update_benchmarks_section,
    write_result,
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
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (1 is far faster when the CPU is shared with other jobs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.configs or sorted(glob.glob(str(REPO_ROOT / "configs" / "hands_*.yaml")))
    samples = load_hands()
    splits = {s: make_split(samples, s) for s in seeds}
    throughput = embed_throughput("efficientnet_lite0")
    bench_start = time.perf_counter()
    for path in configs:
        cfg = load_method(path)
        start = time.perf_counter()
        runs = [run_method(cfg, splits[s], device=args.device, progress=False) for s in seeds]
        elapsed = time.perf_counter() - start
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
                    "features_s_first_seed": runs[0].timing["features_s"],
                    "train_s_mean": float(np.mean([r.timing["train_s"] for r in runs]))},
            extra={"config": cfg.model_dump(), "per_seed": [{"seed": r.seed, **r.metrics} for r in runs],
                   "n_queries": [len(r.queries) for r in runs], "n_gallery": [len(r.gallery) for r in runs]},
        )
        print(cfg.name, {m: round(metrics[m]["mean"], 3) for m in METRICS}, f"{elapsed:.0f} s", flush=True)
    write_section(throughput, time.perf_counter() - bench_start)


def row_kind(name: str) -> str:
    """What a row is: a reference method (a–c), a method (d), a control, or another protocol."""
    if name.startswith("hands_control_"):
        return "control, not a method"
    if "side_aware" in name:
        return "separate protocol: uses left/right labels"
    if name.startswith("hands_d_"):
        return "method d"
    return f"method {name.split('_')[1]}"


def write_section(throughput: float, run_s: float) -> None:
    """The BENCHMARKS.md table from every result file whose config still exists (so rerunning one
    method refreshes its row without rerunning the others)."""
    results = {}
    for path in sorted(RESULTS_DIR.glob("hands_dorsal_palmar_*.json")):
        record = json.loads(path.read_text())
        name = record["config"]["name"]
        if (REPO_ROOT / "configs" / f"{name}.yaml").is_file():
            results[name] = record
    rows = []
    for name, rec in results.items():
        m = rec["metrics"]
        rows.append([f"{name} ({row_kind(name)})"] + [f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" for k in METRICS]
                    + [f"{rec['timing']['total_s_all_seeds'] - rec['timing'].get('features_s_first_seed', 0):.0f}",
                       rec["machine"].split("load ")[-1] if "load " in rec["machine"] else "–"])
    for name, (ref_name, ref) in REFERENCES.items():
        rows.append([f"reference: {ref_name}"] + [f"{ref[k]:.3f}" if k in ref else "–" for k in METRICS] + ["–", "–"])
    any_rec = next(iter(results.values()))
    n_ids = round(1 / any_rec["metrics"]["random_recall@1"]["mean"])  # mean test-subject count
    rows.append([f"random (≈ 1/{n_ids} test subjects)", f"{1 / n_ids:.3f}"] + ["–"] * (len(METRICS) + 1))
    notes = []
    a, b = results.get("hands_a_twin_contrastive"), results.get("hands_b_triplet_batch_hard")
    if a and b:
        wins = [pb["recall@1"] > pa["recall@1"] for pa, pb in zip(a["per_seed"], b["per_seed"])]
        notes.append(f"(b) beats (a) at R@1 on {sum(wins)} of {len(wins)} seeds.")
    seeds = any_rec["seeds"]
    md = "\n\n".join([
        "## Hands: dorsal query → palmar gallery (11k Hands)",
        f"`python benchmarks/hands_dorsal_palmar.py [--configs ...]` — seeds {seeds}, mean ± std over seeds. "
        f"{PROTOCOL}. Machine: {machine_description()}; embed throughput (EfficientNet-Lite0, 224 px, "
        f"decode + forward, 2 threads): {throughput:.1f} img/s; last run {run_s:.0f} s. "
        "Seconds: all 5 seeds, training + evaluation, first backbone feature pass excluded; the machine was shared "
        "with other jobs (load average in the last column), so seconds and img/s are upper/lower bounds.",
        markdown_table(["method", *METRICS, "s (5 seeds)", "machine load"], rows),
        " ".join(notes) + " References were measured on 1600×1200 originals with ResNet50 / DINOv2 ViT-B/14 "
        "weights, which are not available here; our images are 100–180 px squares and our backbones are ImageNet "
        "EfficientNet-Lite. Per-seed numbers and bootstrap CIs: benchmarks/results/hands_dorsal_palmar_*.json.",
    ])
    update_benchmarks_section("hands_dorsal_palmar", md)


if __name__ == "__main__":
    main()
