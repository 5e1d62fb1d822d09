"""Late-fusion screens for the hands method: does an extra score, added to the best method's final
scores, lower its mean rank on the tuning seeds?

Why a screen: a full candidate (a config, its tuning row, the validation seeds, the demo's time, then
one report run) costs hours on a 2-core CPU. A new feature source is first added, late, to the best
method's own final scores - `S + w · extra` - on the tuning seeds, over three head-seed draws of S
(the heads' seed noise is about the size of the gains looked for). Only a source that passes the
screen's rule becomes a candidate. The screen chooses on tuning seeds only; report seeds are refused.

Sources (each rule was fixed before its numbers were seen; session 22):
- `palm_detector`: MediaPipe's palm detector (`biomatch.hands.handnet.PALM_DETECTOR`), a second network
  trained on hands, read from the inside on the landmark-aligned crop (224 → 192 px); XQDA and the
  dorsal→palm translation on its mean/std taps (`P-A`) or those and its channel covariances (`P-AC`),
  fused as the method fuses them, rowz(rowz(XQDA) + rowz(translation) / 3).
- `skin_colour`: the hand's colour with the sheet's colour divided out (white balance): statistics of its
  log-chromaticities and brightness (`C1`), or those and a chromaticity histogram (`C2`); XQDA + translation.
- `width_profile`: the hand's silhouette widths (`biomatch.hands.landmarks.mask_run`) across each finger
  at 4 points from MCP to tip and across the palm at 3 heights, over the palm length (`Q1`), or those
  with the method's geometry features (`Q2`); scored by the method's `GeometryScorer`.

Rule (as the best method's own tuning rule, probe N4 of session 20): the best (variant, w) must lower
the three-draw mean rank by >= 0.03, on >= 4 of 5 seeds, with R@1 no more than 0.005 below.

`python benchmarks/hands_fusion_screen.py [--method NAME] [--sources palm_detector,width_profile]`: ~75 s per
(seed, draw) for S the first time (cached under .cache/hands_screen/), ~35 s for the palm-detector pass. The
recorded screens ran against `--method hands_e8xpl1_xcov_trh_hn`, the best method before skin colour passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.config import MethodConfig, load_method
from biomatch.data.datasets import Sample
from biomatch.errors import InputError
from biomatch.hands.geometry import GeometryScorer
from biomatch.hands.protocol import (BEST_METHOD, GALLERY_VIEW, REPORT_SEEDS, TUNING_SEEDS, HandsSplit, load_hands,
                                     make_split)
from biomatch.hands.xqda import row_zscore
from biomatch.metrics.retrieval import ranks_from_scores, retrieval_summary
from biomatch.paths import REPO_ROOT, cache_dir
from biomatch.progress import CountProgress
from biomatch.results import git_commit, machine_description, markdown_table, update_benchmarks_section, write_result

DRAWS = (0, 1, 2)
MIN_GAIN, MIN_SEEDS, R1_SLACK = 0.03, 4, 0.005  # the screen's rule (see the module docstring)
FINGER_POINTS = (0.15, 0.35, 0.55, 0.75)  # along MCP → tip
PALM_POINTS = (0.25, 0.5, 0.75)  # along wrist → middle MCP


# ---- the rule ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScreenPoint:
    """One (variant, weight) of a source: its three-draw mean per seed."""

    variant: str
    weight: float
    mean_rank: tuple[float, ...]
    recall1: tuple[float, ...]


def screen_verdict(base: ScreenPoint, points: Sequence[ScreenPoint]) -> tuple[ScreenPoint, bool, str]:
    """(the point with the lowest mean rank, passed?, why): it passes when its mean rank is at least
    MIN_GAIN below the base's, lower on at least MIN_SEEDS seeds, and its R@1 at most R1_SLACK below.

    >>> b = ScreenPoint("base", 0.0, (2.0,) * 5, (0.8,) * 5)
    >>> screen_verdict(b, [ScreenPoint("x", 0.1, (1.9, 1.95, 1.95, 1.96, 2.0), (0.8,) * 5)])[1:]
    (True, 'all met')
    >>> screen_verdict(b, [ScreenPoint("x", 0.1, (1.9, 1.95, 1.95, 1.96, 2.1), (0.8,) * 5)])[1:]
    (False, 'mean rank 1.9720, needs <= 1.9700')
    """
    best = min(points, key=lambda p: float(np.mean(p.mean_rank)))
    mr, base_mr = float(np.mean(best.mean_rank)), float(np.mean(base.mean_rank))
    r1, base_r1 = float(np.mean(best.recall1)), float(np.mean(base.recall1))
    lower = int(sum(a < b for a, b in zip(best.mean_rank, base.mean_rank)))
    checks = [(mr <= base_mr - MIN_GAIN, f"mean rank {mr:.4f}, needs <= {base_mr - MIN_GAIN:.4f}"),
              (lower >= MIN_SEEDS, f"lower on {lower} seeds, needs >= {MIN_SEEDS}"),
              (r1 >= base_r1 - R1_SLACK, f"R@1 {r1:.4f}, needs >= {base_r1 - R1_SLACK:.4f}")]
    failed = [why for ok, why in checks if not ok]
    return best, not failed, ("; ".join(failed) if failed else "all met")


# ---- feature sources: (N, D) rows over `samples`, one array per variant ------------------------------

def palm_detector_rows(samples: Sequence[Sample], points: np.ndarray) -> dict[str, np.ndarray]:
    """P-A: mean/std taps of the palm detector's maps on the aligned crop; P-AC: those + covariances."""
    from biomatch.hands.handnet import PALM_DETECTOR, HandNet
    from biomatch.hands.landmarks import AlignedLoader

    net, loader, size = HandNet(spec=PALM_DETECTOR), AlignedLoader(samples, points), PALM_DETECTOR.input_size
    heads, covs = [], []
    with CountProgress(len(samples), "palm-detector maps", 500) as bar:
        for i in range(len(samples)):
            crop = loader(i).convert("RGB").resize((size, size), Image.BILINEAR)
            head, cov = net.taps(np.asarray(crop))
            heads.append(head)
            covs.append(cov)
            bar.update(1)
    a = np.stack(heads)
    return {"P-A": a, "P-AC": np.concatenate([a, np.stack(covs)], axis=1)}


def width_profile(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Silhouette widths across index … little finger at FINGER_POINTS of MCP → tip and across the
    palm at PALM_POINTS of wrist → middle MCP, over the palm length (NaN without landmarks)."""
    from biomatch.hands.landmarks import FINGERS, MIDDLE_MCP, WRIST, mask_run

    width = len(FINGER_POINTS) * 4 + len(PALM_POINTS)
    if points is None or not np.isfinite(points).all():
        return np.full(width, np.nan)
    p = points.astype(np.float64)
    palm = float(np.linalg.norm(p[MIDDLE_MCP] - p[WRIST]))
    segments = [(p[FINGERS[f][0]], p[FINGERS[f][3]], FINGER_POINTS) for f in ("index", "middle", "ring", "little")]
    segments.append((p[WRIST], p[MIDDLE_MCP], PALM_POINTS))
    return np.array([mask_run(mask, a + t * (b - a), b - a) / palm for a, b, ts in segments for t in ts])


def width_profile_rows(samples: Sequence[Sample], points: np.ndarray) -> dict[str, np.ndarray]:
    """Q1: the width profile; Q2: the method's geometry features and the width profile."""
    from concurrent.futures import ThreadPoolExecutor

    from biomatch.hands.landmarks import cached_geometry
    from biomatch.hands.masking import hand_mask

    def one(i: int) -> np.ndarray:
        return width_profile(hand_mask(np.asarray(Image.open(samples[i].path).convert("RGB"))), points[i])

    with ThreadPoolExecutor(max_workers=2) as pool:  # OpenCV and decoding release the GIL
        q = np.stack(list(pool.map(one, range(len(samples)))))
    return {"Q1": q, "Q2": np.concatenate([cached_geometry(samples, points), q], axis=1)}


def skin_colour_rows(samples: Sequence[Sample], points: np.ndarray) -> dict[str, np.ndarray]:
    """C1: the colour statistics; C2: those and the (u, v) histogram (biomatch.hands.colour)."""
    from biomatch.hands.colour import PERCENTILES, cached_skin_colour

    c = cached_skin_colour(samples)
    return {"C1": c[:, :3 * (2 + len(PERCENTILES))], "C2": c}


# ---- extra scores: (queries, gallery) of one split, from the rows of its images ----------------------

# each takes (train rows, query rows, gallery rows), the training samples and the method's config

def xqda_translation_extra(rows: Sequence[np.ndarray], train: Sequence[Sample], cfg: MethodConfig) -> np.ndarray:
    """rowz(rowz(XQDA) + rowz(translation) / 3) with the method's PCA width and lambdas: its own
    fusion of the two (`biomatch.hands.colour.colour_scores`)."""
    from biomatch.hands.colour import colour_scores

    return colour_scores(rows[0], [s.identity for s in train], np.array([s.view == GALLERY_VIEW for s in train]),
                         rows[1], rows[2], cfg.xqda_pca, cfg.xqda_lambda, cfg.translation_lambda)


def geometry_extra(rows: Sequence[np.ndarray], train: Sequence[Sample], cfg: MethodConfig) -> np.ndarray:
    """rowz of the method's geometry scorer (LDA on the training subjects, cosine)."""
    return row_zscore(GeometryScorer.fit(rows[0], [s.identity for s in train]).scores(rows[1], rows[2]))


@dataclass(frozen=True)
class Source:
    rows: Callable[[Sequence[Sample], np.ndarray], dict[str, np.ndarray]]
    extra: Callable[[Sequence[np.ndarray], Sequence[Sample], MethodConfig], np.ndarray]
    weights: tuple[float, ...]
    what: str


SOURCES = {
    "palm_detector": Source(palm_detector_rows, xqda_translation_extra, (0.1, 0.2, 0.3),
                            "MediaPipe palm detector's inner maps on the aligned crop, XQDA + translation"),
    "width_profile": Source(width_profile_rows, geometry_extra, (0.05, 0.1, 0.2),
                            "silhouette widths across fingers and palm, the geometry scorer"),
    "skin_colour": Source(skin_colour_rows, xqda_translation_extra, (0.05, 0.1, 0.2),
                          "white-balanced skin colour (statistics; + a chromaticity histogram), XQDA + translation"),
}


# ---- the base: the best method's final scores, per (seed, draw), cached ------------------------------

def base_scores(method: str, seed: int, draw: int, samples: Sequence[Sample], directory: Path) -> dict[str, np.ndarray]:
    """S of `method` on `seed` with head draw `draw` (`run_method(..., head_draw=draw)`), cached as
    `scores_s{seed}_d{draw}.npz` in `directory` (`base_directory`)."""
    path = directory / f"scores_s{seed}_d{draw}.npz"
    if not path.is_file():
        from biomatch.hands.methods import run_method

        cfg = load_method(str(REPO_ROOT / "configs" / f"{method}.yaml"))
        start = time.perf_counter()
        r = run_method(cfg, make_split(samples, seed), progress=False, head_draw=draw)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, scores=r.scores, q=[str(s.path) for s in r.queries], g=[str(s.path) for s in r.gallery],
                 commit=git_commit())
        tmp.replace(path)
        print(f"base seed {seed} draw {draw}: {r.metrics['recall@1']:.4f} / {r.metrics['mean_rank']:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return dict(np.load(path, allow_pickle=False))


def base_directory(method: str) -> Path:
    """Where `method`'s S is cached: a change to any field that can move S (its hash; the `verdict` and
    `description` texts excluded) starts a new folder."""
    path = REPO_ROOT / "configs" / f"{method}.yaml"
    if not path.is_file():
        raise InputError(f"no config {path.name} in configs/ for --method {method!r}")
    fields = load_method(str(path)).model_dump(exclude={"verdict", "description"})
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir() / "hands_screen" / f"{method}-{key}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--seeds", default=",".join(map(str, TUNING_SEEDS)))
    parser.add_argument("--method", default=BEST_METHOD, help="the config whose final scores S the sources join")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if set(seeds) & set(REPORT_SEEDS):
        raise InputError(f"a screen chooses, so it never reads the report seeds {list(REPORT_SEEDS)}")
    names = [n for n in args.sources.split(",") if n]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise InputError(f"unknown source(s) {unknown}; known: {list(SOURCES)}")
    from biomatch.hands.landmarks import cached_landmarks

    samples = load_hands()
    points, _ = cached_landmarks(samples, progress=False)
    row_of = {s.path: i for i, s in enumerate(samples)}
    method = args.method
    directory = base_directory(method)
    cfg = load_method(str(REPO_ROOT / "configs" / f"{method}.yaml"))
    # per seed: the split's (train, queries, gallery) as the method trains and tests, and S of each draw
    parts, bases = {}, {}
    # (seed, draw, variant, w) → (R@1, mean rank); variant "base" at w 0
    scores: dict[tuple[int, int, str, float], tuple[float, float]] = {}
    for seed in seeds:
        split = make_split(samples, seed)
        q, g = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
        parts[seed] = (split.train + split.val if cfg.train_on_val else split.train, q, g)
        for draw in DRAWS:
            base = bases[(seed, draw)] = base_scores(method, seed, draw, samples, directory)
            if list(base["q"]) != [str(s.path) for s in q] or list(base["g"]) != [str(s.path) for s in g]:
                raise RuntimeError(f"cached base scores of seed {seed} do not match its split: delete {directory}")
            m = retrieval_summary(ranks_from_scores(base["scores"], [s.identity for s in q], [s.identity for s in g]))
            scores[(seed, draw, "base", 0.0)] = (m["recall@1"], m["mean_rank"])
    alone: dict[tuple[int, str], float] = {}
    timing: dict[str, float] = {}
    variants: dict[str, list[str]] = {}
    for name in names:
        start = time.perf_counter()
        rows = SOURCES[name].rows(samples, points)
        timing[f"{name} features s"] = round(time.perf_counter() - start, 1)
        variants[name] = list(rows)
        for seed in seeds:
            train, q, g = parts[seed]
            qid, gid = [s.identity for s in q], [s.identity for s in g]
            for variant, f in rows.items():
                extra = SOURCES[name].extra([f[[row_of[s.path] for s in part]] for part in parts[seed]], train, cfg)
                alone[(seed, variant)] = retrieval_summary(ranks_from_scores(extra, qid, gid))["mean_rank"]
                for draw in DRAWS:
                    for w in SOURCES[name].weights:
                        m = retrieval_summary(ranks_from_scores(bases[(seed, draw)]["scores"] + w * extra, qid, gid))
                        scores[(seed, draw, variant, w)] = (m["recall@1"], m["mean_rank"])
            print(f"{name}: seed {seed} done", flush=True)

    def point(variant: str, w: float) -> ScreenPoint:
        per_seed = [[scores[(s, d, variant, w)] for d in DRAWS] for s in seeds]
        return ScreenPoint(variant, w, tuple(float(np.mean([x[1] for x in ps])) for ps in per_seed),
                           tuple(float(np.mean([x[0] for x in ps])) for ps in per_seed))

    base = point("base", 0.0)
    metrics, table = {"base": {"recall@1": float(np.mean(base.recall1)), "mean_rank": float(np.mean(base.mean_rank)),
                               "per_seed_mean_rank": base.mean_rank}}, []
    table.append([f"{method} (S, base)", "–", f"{np.mean(base.recall1):.4f}", f"{np.mean(base.mean_rank):.4f}",
                  " / ".join(f"{x:.2f}" for x in base.mean_rank), "–", "–", "–"])
    verdicts = {}
    for name in names:
        pts = [point(v, w) for v in variants[name] for w in SOURCES[name].weights]
        best, passed, why = screen_verdict(base, pts)
        verdicts[name] = {"passed": passed, "best": f"{best.variant} w={best.weight}", "why": why}
        for p in pts:
            lower = sum(a < b for a, b in zip(p.mean_rank, base.mean_rank))
            mark = (("**passes**" if passed else f"source's best point: **rejected** ({why})") if p == best else "")
            metrics[f"{p.variant} w={p.weight}"] = {"recall@1": float(np.mean(p.recall1)),
                                                   "mean_rank": float(np.mean(p.mean_rank)),
                                                   "per_seed_mean_rank": p.mean_rank, "lower_on": lower}
            table.append([f"{name}: {p.variant}", f"{p.weight}", f"{np.mean(p.recall1):.4f}", f"{np.mean(p.mean_rank):.4f}",
                          " / ".join(f"{x:.2f}" for x in p.mean_rank), f"{lower} of {len(seeds)}",
                          f"{np.mean([alone[(s, p.variant)] for s in seeds]):.1f}", mark])
    commits = sorted({str(base["commit"]) for base in bases.values()})
    write_result("hands_fusion_screen", benchmark="hands_fusion_screen",
                 method=f"{method} final scores S + w · extra (late fusion)",
                 dataset="11k Hands (bundled subset)", protocol="dorsal→palmar, as hands_dorsal_palmar; tuning seeds",
                 seeds=seeds, metrics=metrics, timing=timing,
                 reference={"rule": f"best (variant, w): three-draw mean rank <= base - {MIN_GAIN}, lower on >= "
                                    f"{MIN_SEEDS} of {len(seeds)} seeds, R@1 >= base - {R1_SLACK}"},
                 extra={"seed_role": "tuning", "head_draws": list(DRAWS), "base_scores_commits": commits,
                        "verdicts": verdicts, "sources": {n: SOURCES[n].what for n in names}})
    md = "\n\n".join([
        "## Hands: late-fusion screens on the tuning seeds (`benchmarks/hands_fusion_screen.py`)",
        f"`--method {method}`. Each source's score is added to that method's final scores S (head draws "
        f"{list(DRAWS)}, S computed at {', '.join(commits)}): S + w · extra. Numbers are three-draw means on the "
        f"tuning seeds {seeds}; the screen chooses, so it never reads the report seeds. Rule, fixed before each "
        f"source was looked at: the best (variant, w) lowers the mean rank by >= {MIN_GAIN}, on >= {MIN_SEEDS} "
        f"seeds, with R@1 at most {R1_SLACK} lower; a source that passes becomes a candidate (its config, tuning "
        "row, the validation seeds, the demo's time, then one report run). \"alone\" is the extra score's own mean "
        f"rank. Machine: {machine_description()}.",
        markdown_table(["source: variant", "w", "R@1", "mean rank", "mean rank per seed", "lower than S",
                        "alone: mean rank", "verdict"], table),
        "Sources: " + "; ".join(f"`{n}` - {SOURCES[n].what}: " + ("passed" if verdicts[n]["passed"] else
                                f"rejected ({verdicts[n]['why']})") for n in names) + ".",
    ])
    update_benchmarks_section("hands_fusion_screen", md)
    print(json.dumps(verdicts, indent=1))


if __name__ == "__main__":
    main()
