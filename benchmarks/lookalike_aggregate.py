"""Look-alikes: which per-identity score ranks identities best (nearest image, mean of top 3, centroid).

LFW62 (62 people, 20-530 images each), MobileFaceNet float on detected, aligned faces (the
look-alike pipeline). Per seed, 25 % of each person's images are queries and the rest the
gallery (stratified). For each query every identity gets a score from its gallery images'
cosine similarities, aggregated three ways (``biomatch.lookalike.aggregate_scores``).
Reported: identification top-1 with the query's own identity in the gallery (does the score
rank the right person first?) and, with the own identity excluded (the look-alike use),
the share of top-1 look-alikes that go to the 5 people with the most photos (bias towards
identities with many photos; 5/61 = 0.082 if none). The default is chosen on the tuning
seeds 0-2: among aggregates whose top-1 is within ``TOP1_MARGIN`` of the best, the one with the
least bias (top-1 alone is saturated near 1.0 on LFW62: a first run picked "nearest" by 2 of
~2,200 tuning queries while its bias was 2.4x the centroid's; that run is kept in the JSON).
Reported on the fresh seeds 10-14.

Usage: python benchmarks/lookalike_aggregate.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from biomatch.faces.embedder import FaceEmbedder  # noqa: E402
from biomatch.lookalike import AGGREGATES, aggregate_scores  # noqa: E402
from biomatch.results import markdown_table, summarize, update_benchmarks_section, write_result  # noqa: E402

TUNING, REPORT = [0, 1, 2], [10, 11, 12, 13, 14]
TOP1_MARGIN = 0.005


def _enrolment_module():
    spec = importlib.util.spec_from_file_location("enrolment_policy", Path(__file__).with_name("enrolment_policy.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["enrolment_policy"] = mod
    spec.loader.exec_module(mod)
    return mod


def run_seed(x: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    n_ids = int(labels.max()) + 1
    ok = np.isfinite(x).all(1)
    query = np.zeros(len(labels), bool)
    for c in range(n_ids):
        idx = rng.permutation(np.flatnonzero(labels == c))
        query[idx[: max(1, len(idx) // 4)]] = True
    gal = ~query & ok
    sizes = np.bincount(labels[gal], minlength=n_ids)
    xe, gl = np.nan_to_num(x[gal]), labels[gal]
    out = {}
    for how in AGGREGATES:
        hits, big, n = 0, 0, 0
        for q in np.flatnonzero(query & ok):
            s = aggregate_scores(xe @ x[q], gl, n_ids, how, xe, x[q])
            hits += int(np.argmax(s) == labels[q])
            s[labels[q]] = -np.inf
            top5 = set(np.argsort(-sizes)[:5]) - {labels[q]}
            big += int(np.argmax(s) in top5)
            n += 1
        out[how] = {"top1": hits / n, "lookalike_top1_to_5_largest": big / n, "n_queries": n}
    return out


def main() -> None:
    ep = _enrolment_module()
    embedder = FaceEmbedder.default()
    x, labels, people, found = ep.lfw62_embeddings(embedder)
    tuning = [run_seed(x, labels, s) for s in TUNING]
    top1 = {h: float(np.mean([r[h]["top1"] for r in tuning])) for h in AGGREGATES}
    bias = {h: float(np.mean([r[h]["lookalike_top1_to_5_largest"] for r in tuning])) for h in AGGREGATES}
    pick = min((h for h in AGGREGATES if top1[h] >= max(top1.values()) - TOP1_MARGIN), key=lambda h: bias[h])
    report = [run_seed(x, labels, s) for s in REPORT]
    rows, metrics = [], {}
    for how in AGGREGATES:
        t = summarize([r[how]["top1"] for r in tuning])
        m = {k: summarize([r[how][k] for r in report]) for k in ("top1", "lookalike_top1_to_5_largest")}
        metrics[how] = {"tuning_top1": t, "tuning_lookalike_top1_to_5_largest": bias[how], **m}
        rows.append([how + (" (default)" if how == pick else ""), f"{t['mean']:.4f}",
                     f"{m['top1']['mean']:.4f} ± {m['top1']['std']:.4f}",
                     f"{m['lookalike_top1_to_5_largest']['mean']:.3f} ± {m['lookalike_top1_to_5_largest']['std']:.3f}"])
        print(rows[-1], flush=True)
    write_result(
        "lookalike_aggregate", benchmark="lookalike_aggregate",
        method=f"per-identity score for look-alikes: {', '.join(AGGREGATES)} (chosen: {pick})",
        dataset=f"LFW62 ({len(people)} people, {len(labels)} images; FTA {found.count('none') / len(found):.4f})",
        protocol="per identity 25 % queries / 75 % gallery (seeded); top-1 identification with own identity in the "
                 "gallery; with it excluded, share of top-1 look-alikes among the 5 people with most photos; "
                 "choice on tuning seeds 0-2, report seeds 10-14",
        seeds=REPORT, metrics=metrics,
        extra={"chosen": pick, "tuning_seeds": TUNING, "seed_role": "report",
               "rule": f"least tuning bias among aggregates within {TOP1_MARGIN} of the best tuning top-1",
               "first_run_rule_top1_only": {"chosen": "nearest", "tuning_top1": {"nearest": 1.0, "top3": 0.9986,
                                            "centroid": 0.9986}}},
    )
    md = "\n".join([
        "## Look-alikes: per-identity aggregate (`benchmarks/lookalike_aggregate.py`)",
        "",
        "LFW62, MobileFaceNet float on detected, aligned faces; 25 % of each person's images are queries. "
        "top-1: the right person ranked first with their gallery images present. Bias: with the query's own "
        "person excluded, share of top-1 look-alikes that are one of the 5 people with the most photos "
        f"(0.082 if size did not matter). Chosen on tuning seeds 0-2 (least bias among aggregates within "
        f"{TOP1_MARGIN} of the best top-1; top-1 alone is saturated and picked nearest by 2 of ~2,200 queries in a "
        f"first run): **{pick}**; reported on seeds 10-14.",
        "",
        markdown_table(["aggregate", "top-1 (tuning)", "top-1 (report)", "look-alike to 5 largest (report)"], rows),
    ])
    update_benchmarks_section("lookalike_aggregate", md)
    print(md)


if __name__ == "__main__":
    main()
