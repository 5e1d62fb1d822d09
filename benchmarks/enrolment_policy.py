"""Enrolment policy: match a probe to a user by the max or the mean similarity over their templates.

LFW62 (62 people, >= 20 images each), MobileFaceNet face embedder (float, images already framed
like LFW pairs). Per seed and per person: E images enrolled as templates, the rest are probes.
Closed-set identification accuracy (top-1 over all 62 users; micro over probes and macro over
people, since one person has 530 images), and unlock at the calibrated threshold (FAR 1e-3 on
LFW pairs): TAR = probe accepted for its own user, FAR = accepted for another user.

    python benchmarks/enrolment_policy.py [--seeds 5] [--enrol 3 5 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from biomatch.data.images import load_image
from biomatch.faces.embedder import FaceEmbedder
from biomatch.paths import cache_dir, dataset_dir
from biomatch.results import markdown_table, summarize, update_benchmarks_section, write_result


def lfw62_embeddings(embedder: FaceEmbedder) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, 128) embeddings and person labels of every LFW62 image, cached by model hash."""
    root = dataset_dir("lfw62")
    paths = sorted(p for p in root.glob("*/*.jpg"))
    people = sorted({p.parent.name for p in paths})
    labels = np.array([people.index(p.parent.name) for p in paths])
    cache = cache_dir() / f"lfw62_{embedder.model_hash[:16]}_{len(paths)}.npy"
    if cache.is_file():
        return np.load(cache), labels, people
    x = np.concatenate([embedder.embed([load_image(p) for p in paths[i : i + 64]]) for i in range(0, len(paths), 64)])
    np.save(cache, x)
    return x, labels, people


def evaluate(x: np.ndarray, labels: np.ndarray, n_enrol: int, seed: int, threshold: float) -> dict[str, dict[str, float]]:
    """Metrics for both policies on one seeded split."""
    rng = np.random.default_rng(seed)
    n_people = int(labels.max()) + 1
    enrol_idx, probe_idx = [], []
    for person in range(n_people):
        idx = rng.permutation(np.flatnonzero(labels == person))
        enrol_idx.append(idx[:n_enrol])
        probe_idx.append(idx[n_enrol:])
    probes = np.concatenate(probe_idx)
    truth = labels[probes]
    sims = x[probes] @ x[np.concatenate(enrol_idx)].T  # (P, people * E), grouped by person
    sims = sims.reshape(len(probes), n_people, n_enrol)
    out = {}
    for policy, agg in (("max", sims.max(axis=2)), ("mean", sims.mean(axis=2))):
        correct = agg.argmax(axis=1) == truth
        own = agg[np.arange(len(probes)), truth]
        others = np.ones_like(agg, dtype=bool)
        others[np.arange(len(probes)), truth] = False
        out[policy] = {
            "accuracy": float(correct.mean()),
            "macro_accuracy": float(np.mean([correct[truth == p].mean() for p in range(n_people)])),
            "tar@threshold": float((own >= threshold).mean()),
            "far@threshold": float((agg[others] >= threshold).mean()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--enrol", type=int, nargs="+", default=[3, 5, 10])
    args = parser.parse_args()
    embedder = FaceEmbedder.default()
    threshold = embedder.load_threshold().threshold
    t0 = time.perf_counter()
    x, labels, people = lfw62_embeddings(embedder)
    embed_s = time.perf_counter() - t0
    seeds = list(range(args.seeds))
    rows, summary = [], {}
    for e in args.enrol:
        runs = [evaluate(x, labels, e, s, threshold) for s in seeds]
        for policy in ("max", "mean"):
            metrics = {m: summarize([r[policy][m] for r in runs]) for m in runs[0][policy]}
            summary[f"{policy}_e{e}"] = metrics
            rows.append([policy, e] + [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in metrics])
    wins = sum(summary[f"max_e{e}"]["accuracy"]["mean"] > summary[f"mean_e{e}"]["accuracy"]["mean"] for e in args.enrol)
    best = "max" if wins * 2 > len(args.enrol) else "mean"
    write_result(
        "enrolment_policy",
        benchmark="enrolment_policy",
        method=f"MobileFaceNet float + GalleryService policy max vs mean (default chosen: {best})",
        dataset=f"LFW62 ({len(people)} people, {len(labels)} images)",
        protocol="per person: E enrolled (seeded), rest probes; closed-set top-1 over 62 users; "
        f"TAR/FAR at the calibrated threshold {threshold:.4f} (cosine similarity)",
        seeds=seeds,
        metrics=summary,
        timing={"embed_s": embed_s},
        extra={"best_policy": best},
    )
    md = (
        "## Enrolment policy (max vs mean similarity), LFW62\n\n"
        f"`python benchmarks/enrolment_policy.py` — MobileFaceNet float, {len(seeds)} seeds, E templates "
        f"per user, all other images of the 62 people are probes. Threshold {threshold:.4f} (calibrated "
        f"for FAR 1e-3 on LFW pairs). Default policy chosen: **{best}**.\n\n"
        + markdown_table(["policy", "E", "top-1 accuracy", "macro accuracy", "TAR@thr", "FAR@thr"], rows)
    )
    update_benchmarks_section("enrolment_policy", md)
    print(md)


if __name__ == "__main__":
    main()
