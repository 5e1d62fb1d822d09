"""Benchmark: what image resolution is worth for dorsal → palmar matching (issue #14 §3).

A separate protocol row, not a split seed of hands_dorsal_palmar: the test subjects are the 59
subjects of the 640×480 subset (../shared/data/hands11k_hires) with both views; the heads of the
best method (configs/hands_e_lite0_aligned_geo05.yaml, frozen on the tuning seeds 0–4 of the main
benchmark — nothing is tuned here) train on the 125 low-resolution subjects (both views) that are
not test subjects. Each trained method then scores the SAME test photos (dorsal queries → palmar
gallery) at several resolutions (biomatch.hands.resolution.VARIANTS): the 640×480 photo, the
photo squashed to 480×480 (the low-res set's geometry at high resolution), and the low-res set's
processing at 180×180 and 100×100 (its own file where it holds that photo at that size). The
backbone input (224 px) is the method's in every row: resolution changes what the landmarks,
the aligned crop, the photo features and the geometry are computed from. Repeats: head seeds
(the split is fixed by the hires subjects), mean ± std; each seed is written when it finishes.

    python benchmarks/hands_resolution.py [--seeds 10,11,12,13,14] [--variants 640x480,180x180]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from biomatch.config import load_method
from biomatch.hands.methods import FeatureBank, run_method
from biomatch.hands.protocol import (
    HandsSplit,
    load_hands,
    load_hires_hands,
    resolution_split,
)
from biomatch.hands.resolution import (
    PROCESSING_VERSION,
    VARIANTS,
    make_variant,
    paired_subject_bootstrap,
    score_variant,
)
from biomatch.metrics.retrieval import bootstrap_ci
from biomatch.paths import REPO_ROOT, cache_dir, dataset_dir
from biomatch.results import (
    RESULTS_DIR,
    git_commit,
    machine_description,
    markdown_table,
    summarize,
    update_benchmarks_section,
    write_result,
)

# the method this resolution study measured (the best on tuning seeds when it ran; hands_e_aligned_geo05 came later)
MEASURED_METHOD = "hands_e_lite0_aligned_geo05"

NAME = "hands_resolution"
METRICS = ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank", "map")
LOWRES_OWN = "low-res set's own images"
PROTOCOL = ("test = the hires set's subjects with both views (dorsal queries → palmar gallery of every image "
            "of them); train = the low-res set's subjects with both views not among them (train+val, the "
            "method's fixed budget); repeats = head seeds on this one fixed split; ranks pessimistic on ties")


def aggregate(per_seed: list[dict], rows: list[str], query_subjects: list[str] | None = None) -> dict:
    """mean ± std over seeds of every metric of every row, plus paired deltas against 180×180
    (per seed, and a subject-level bootstrap CI over the same queries, ranks averaged over seeds)."""
    out: dict = {}
    for row in rows:
        recs = [p["rows"][row] for p in per_seed if row in p["rows"]]
        if not recs:
            continue
        out[row] = {m: summarize([r["metrics"][m] for r in recs]) for m in METRICS}
        for k in ("fta_rate", "fta_rate_dorsal", "fta_rate_palmar"):
            if all(k in r["metrics"] for r in recs):
                out[row][k] = summarize([r["metrics"][k] for r in recs])
    ref = "180x180"
    for row in rows:
        if row == ref or row == LOWRES_OWN:
            continue
        pairs = [(p["rows"][row]["metrics"], p["rows"][ref]["metrics"]) for p in per_seed
                 if row in p["rows"] and ref in p["rows"]]
        if pairs:
            out[f"delta {row} - {ref}"] = {
                m: summarize([a[m] - b[m] for a, b in pairs]) for m in ("recall@1", "mean_rank")}
            out[f"delta {row} - {ref}"]["r1_higher_on_seeds"] = sum(a["recall@1"] > b["recall@1"] for a, b in pairs)
            both = [p for p in per_seed if row in p["rows"] and ref in p["rows"]]
            if query_subjects and all("first_rank" in p["rows"][row] for p in both):
                out[f"delta {row} - {ref}"]["subject_bootstrap_ci95"] = paired_subject_bootstrap(
                    np.array([p["rows"][row]["first_rank"] for p in both]),
                    np.array([p["rows"][ref]["first_rank"] for p in both]), query_subjects)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="10,11,12,13,14", help="head seeds (the split is fixed)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {list(VARIANTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--resume", action="store_true", help="keep seeds already in the result file")
    parser.add_argument("--section-only", action="store_true", help="only rewrite the BENCHMARKS.md section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.section_only:
        write_section(json.loads((RESULTS_DIR / f"{NAME}.json").read_text()))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variant(s) {bad}: choose from {list(VARIANTS)}")
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    cfg = load_method(REPO_ROOT / "configs" / f"{MEASURED_METHOD}.yaml")
    lowres, hires = load_hands(), load_hires_hands()
    split = resolution_split(lowres, hires)
    assert not {s.identity for s in split.train} & set(split.test_subjects)
    exact = {s.path.name: s.path for s in lowres}
    tests: dict[str, list] = {}
    n_exact: dict[str, int] = {}
    for v in variants:
        tests[v.name], n_exact[v.name] = make_variant(split.hires_test, v, cache_dir() / "hands11k_hires_variants", exact)
    rows = [LOWRES_OWN, *tests]
    out = RESULTS_DIR / f"{NAME}.json"
    per_seed: list[dict] = []
    if args.resume and out.is_file():
        old = json.loads(out.read_text())
        if old.get("config") == cfg.model_dump():
            per_seed = [p for p in old["per_seed"] if p["seed"] in seeds]
    done = {p["seed"] for p in per_seed}
    info = {"n_train_subjects": len({s.identity for s in split.train}), "n_train_images": len(split.train),
            "n_test_subjects": len(split.test_subjects), "n_test_images_hires": len(split.hires_test),
            "n_test_queries_hires": len(HandsSplit.queries(split.hires_test)),
            "n_test_gallery_hires": len(HandsSplit.gallery(split.hires_test)),
            "n_lowres_own_test_subjects": len({s.identity for s in split.lowres_test}),
            "n_lowres_own_test_images": len(split.lowres_test), "exact_lowres_files": n_exact,
            "processing_version": PROCESSING_VERSION,
            "query_subjects": [s.identity for s in HandsSplit.queries(split.hires_test)]}
    for seed in seeds:
        if seed in done:
            continue
        load_before = os.getloadavg()
        r = run_method(cfg, HandsSplit(split.train, [], split.lowres_test, seed), device=args.device)
        rec: dict = {"seed": seed, "commit": git_commit(), "train_s": r.timing["train_s"],
                     "train_features_s": r.timing["features_s"], "rows": {}}
        rec["rows"][LOWRES_OWN] = {"metrics": {m: r.metrics[m] for m in METRICS if m in r.metrics}
                                   | {k: v for k, v in r.metrics.items() if k.startswith("fta")}}
        train_bank = FeatureBank(cfg, split.train + split.lowres_test, args.device, progress=False)
        if seed == seeds[0]:  # score_variant must give run_method's own ranks on run_method's test set
            check = score_variant(cfg, r.model, train_bank, split.train, split.lowres_test, args.device)
            rec["score_variant_reproduces_run_method"] = bool(
                np.array_equal(check.ranks.first_rank, r.ranks.first_rank))
        for name, test in tests.items():
            vs = score_variant(cfg, r.model, train_bank, split.train, test, args.device, progress=True)
            ci = bootstrap_ci(vs.ranks, n_boot=1000, seed=seed)["recall@1"]
            rec["rows"][name] = {"metrics": {**vs.metrics, "recall@1_ci95": list(ci)}, "timing": vs.timing,
                                 "n_queries": len(vs.queries), "n_gallery": len(vs.gallery),
                                 "first_rank": vs.ranks.first_rank.tolist()}
            print(f"seed {seed} {name}: R@1 {vs.metrics['recall@1']:.3f} mean rank {vs.metrics['mean_rank']:.2f} "
                  f"FTA {vs.metrics.get('fta_rate', 0):.3f}", flush=True)
        rec["load_before"], rec["load_after"] = list(load_before), list(os.getloadavg())
        per_seed = sorted([p for p in per_seed if p["seed"] != seed] + [rec], key=lambda p: p["seed"])
        _write(cfg, per_seed, rows, info)
        print(f"seed {seed}: {LOWRES_OWN} R@1 {r.metrics['recall@1']:.3f}; written {out}", flush=True)
    if per_seed:
        _write(cfg, per_seed, rows, info)  # refresh the aggregate (e.g. after --resume)
        write_section(json.loads(out.read_text()))


def _write(cfg, per_seed: list[dict], rows: list[str], info: dict) -> None:
    first = per_seed[0]
    timing = {f"{row}:{k}": v for row in rows if row != LOWRES_OWN
              for k, v in first["rows"].get(row, {}).get("timing", {}).items()}
    timing["train_s_mean"] = float(np.mean([p["train_s"] for p in per_seed]))
    write_result(
        NAME, benchmark=NAME, method=f"{cfg.name}: {cfg.description}",
        dataset="11k Hands: hands11k_hires (640×480, test) + hands11k (100–180 px, train)", protocol=PROTOCOL,
        seeds=[p["seed"] for p in per_seed], metrics=aggregate(per_seed, rows, info.get("query_subjects")),
        timing=timing,
        extra={"seed_role": "report", "seed_note": "head seeds on one fixed split; the method was frozen on the "
               "main benchmark's tuning seeds 0-4 and nothing is chosen here", "rows": rows, **info,
               "config": cfg.model_dump(), "per_seed": per_seed, "machine": machine_description(),
               "timing_note": "timing of the first seed's pass (later seeds read the caches); landmarks_s = "
                              "MediaPipe over the 518 test images, features_s = both Lite0 tap passes"},
    )


PLOT = RESULTS_DIR / "hands_resolution_plots" / "resolution.png"


def _ci_words(ci: dict) -> str:
    """Which of the paired differences a subject-level 95 % CI separates from zero."""
    clear = [k for k, (_, lo, hi) in ci.items() if lo > 0 or hi < 0]
    return "the CI excludes 0 for " + " and ".join(clear) if clear else "both CIs include 0"


def plot(record: dict, example: str = "Hand_0000005.jpg") -> Path | None:
    """One test photo as each row sees it (left) and R@1 / mean rank per row, mean ± std (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = [r for r in record["rows"] if r in record["metrics"]]
    if not rows:
        return None
    folder = cache_dir() / "hands11k_hires_variants"
    pics = []
    for r in rows[1:]:
        for cand in (folder / f"{record['processing_version']}-{r}" / example,
                     dataset_dir("hands11k") / "images" / example):
            if cand.is_file() and (r == "640x480" or Image.open(cand).size == tuple(map(int, r.split("x")))):
                pics.append((r, Image.open(cand).convert("RGB")))
                break
    fig = plt.figure(figsize=(13, 4.6))
    grid = fig.add_gridspec(2, len(pics) + 2, width_ratios=[1] * len(pics) + [1.6, 1.6])
    box = (0.35, 0.2, 0.6, 0.45)  # the same relative region (fingers) of every copy, enlarged
    for i, (r, im) in enumerate(pics):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(im)
        ax.set_title(f"{r} (its pixels)", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        w, h = im.size
        crop = im.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(crop.resize((200, round(200 * crop.size[1] / crop.size[0])), Image.Resampling.NEAREST))
        ax.set_title(f"zoom: {crop.size[0]}×{crop.size[1]} px", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    labels = [r if r != LOWRES_OWN else "low-res own\n(other photos)" for r in rows]
    for j, (key, title) in enumerate((("recall@1", "R@1 (higher is better)"),
                                      ("mean_rank", "mean rank (lower is better)"))):
        ax = fig.add_subplot(grid[:, len(pics) + j])
        mean = [record["metrics"][r][key]["mean"] for r in rows]
        std = [record["metrics"][r][key]["std"] for r in rows]
        ax.barh(range(len(rows)), mean, xerr=std, color=["#999"] + ["#4c72b0"] * (len(rows) - 1))
        ax.set_yticks(range(len(rows)), labels if j == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        for y, (m_, s_) in enumerate(zip(mean, std)):
            ax.text(m_ + s_, y, f" {m_:.3f}" if key == "recall@1" else f" {m_:.2f}", va="center", fontsize=7)
    fig.suptitle(f"{record['config']['name']} on the same {record['n_test_subjects']} test subjects at each "
                 f"resolution (head seeds {record['seeds']})", fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return PLOT


def write_section(record: dict) -> None:
    """BENCHMARKS.md section hands_resolution from the result record."""
    m, rows = record["metrics"], record["rows"]
    per_seed = record["per_seed"]

    def cell(row: str, key: str, fmt: str = "{:.3f}") -> str:
        s = m.get(row, {}).get(key)
        return "–" if s is None else (fmt + " ± " + fmt).format(s["mean"], s["std"])

    table = []
    for row in rows:
        if row not in m:
            continue
        t = per_seed[0]["rows"][row].get("timing", {})
        n_img = record["n_test_images_hires"] if row != LOWRES_OWN else record["n_lowres_own_test_images"]
        timing = (f"{1000 * t['landmarks_s'] / n_img:.0f} / {1000 * t['features_s'] / n_img:.0f}"
                  if t.get("landmarks_s", 0) > 1 else "cached")
        exact = record["exact_lowres_files"].get(row)
        label = (f"{row} ({exact} of {n_img} the low-res set's own files)" if exact else row)
        if row == LOWRES_OWN:
            label = (f"{LOWRES_OWN} of {record['n_lowres_own_test_subjects']} of these subjects "
                     f"({n_img} images, 100/180 px; other photos)")
        fta = m[row].get("fta_rate")
        ftad = m[row].get("fta_rate_dorsal")
        table.append([label, cell(row, "recall@1"), cell(row, "recall@5"), cell(row, "mean_rank", "{:.2f}"),
                      cell(row, "map"), "–" if fta is None else f"{fta['mean']:.3f}",
                      "–" if ftad is None else f"{ftad['mean']:.3f} / {m[row]['fta_rate_palmar']['mean']:.3f}",
                      timing])
    deltas = [f"{k}: R@1 {v['recall@1']['mean']:+.3f} ± {v['recall@1']['std']:.3f}, mean rank "
              f"{v['mean_rank']['mean']:+.2f} ± {v['mean_rank']['std']:.2f} (higher R@1 on "
              f"{v['r1_higher_on_seeds']} of {v['recall@1']['n']} seeds"
              + (", subject-bootstrap 95 % CI R@1 [{:+.3f}, {:+.3f}], mean rank [{:+.2f}, {:+.2f}]; {})".format(
                  *v["subject_bootstrap_ci95"]["recall@1"][1:], *v["subject_bootstrap_ci95"]["mean_rank"][1:],
                  _ci_words(v["subject_bootstrap_ci95"])) if "subject_bootstrap_ci95" in v else ")")
              for k, v in m.items() if k.startswith("delta ")]
    commits = sorted({p["commit"][:7] + ("*" if p["commit"].endswith("dirty") else "") for p in per_seed})
    md = "\n\n".join([
        "## Hands: what resolution is worth (11k Hands 640×480 subset)",
        (f"`python benchmarks/hands_resolution.py`. A separate protocol row: {record['protocol']}. "
        f"Method: the frozen best method **{record['config']['name']}** (nothing is tuned here). "
        f"Train: {record['n_train_subjects']} low-res subjects ({record['n_train_images']} images); test: "
        f"{record['n_test_subjects']} subjects, {record['n_test_queries_hires']} dorsal queries → "
        f"{record['n_test_gallery_hires']} palmar gallery images of the hires set (random R@1 ≈ "
        f"1/{record['n_test_subjects']}). Every row but the first scores the **same photos with the same "
        "trained heads**; only the resolution the landmarks, the aligned crop, the photo features and the "
        "geometry are computed from changes (the backbone input stays 224 px). The low-res set's processing, "
        "measured on the 127 photos it shares with the hires set: rotated 180°, squashed to a square "
        "(180 or 100 px), JPEG quality 75; 180×180 / 100×100 rebuild it (using the low-res set's own file "
        "where it holds that photo at that size), 480×480 is the same squash at high resolution, 640×480 "
        "keeps the photo's aspect. "
        f"Mean ± std over head seeds {record['seeds']} (one fixed split: the std is head randomness only, "
        "not subject sampling; per-seed bootstrap CIs over queries are in the JSON). FTA = share of images "
        "without MediaPipe landmarks (un-aligned fallback, none dropped). Timing: ms per image for "
        f"landmarks / both Lite0 tap passes, first seed, 1 thread on a shared machine ({record['machine']}). "
        f"Commit: {', '.join(commits)}."),
        markdown_table(["test images", "R@1", "R@5", "mean rank", "mAP", "FTA", "FTA dorsal / palmar",
                        "ms/img landmarks / features"], table),
        ("Paired against 180×180 (same heads, same photos): " + "; ".join(deltas) + ".") if deltas else "",
        ("Caveat: the heads were trained on 100–180 px images, so the high-resolution rows measure what "
         "better test images give a low-resolution-trained method; 59 hires subjects with both views are too "
         "few to train a high-resolution method on (SOURCE.md). "
         "These numbers are not comparable with the hands_dorsal_palmar table (other test subjects, 59 instead "
        "of 38, and 125 training subjects instead of ≈ 143). Per-seed results and per-query ranks: "
        "benchmarks/results/hands_resolution.json."),
    ])
    pic = plot(record)
    if pic is not None:
        md += f"\n\n![resolution rows]({pic.relative_to(REPO_ROOT)})"
    update_benchmarks_section(NAME, md)


if __name__ == "__main__":
    main()
