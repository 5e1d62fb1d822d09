"""The hand-matching report: a results table, CMC curve, training curves and retrieval pictures,
written as Markdown and HTML side by side in one folder."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biomatch.data.datasets import Sample
from biomatch.hands.methods import RunResult
from biomatch.metrics.retrieval import bootstrap_ci, excess_rank_by_identity, top_identity_share
from biomatch.results import machine_description, markdown_table
from biomatch.viz.retrieval_plots import plot_cmc, plot_training_curves, retrieval_strip

COLUMNS = ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank", "map")
RANK_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 10**9))


def rank_histogram(first_ranks: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Count of queries per first-correct-rank bin ("1", "2", "3", "4-5", "6-10", "11-20", ">20"):
    shows whether a mean rank comes from many near misses or a few far-off queries."""
    r = np.asarray(first_ranks)
    out = {}
    for lo, hi in RANK_BINS:
        label = str(lo) if lo == hi else (f">{lo - 1}" if hi >= 10**9 else f"{lo}-{hi}")
        out[label] = int(((r >= lo) & (r <= hi)).sum())
    return out


def excess_sentence(first_rank: Sequence[int] | np.ndarray, query_labels: Sequence[str], n: int = 5) -> str:
    """Where a mean rank above 1 comes from: Σ(first rank − 1) and the share of it that the `n`
    subjects with the most carry (`biomatch.metrics.retrieval.excess_rank_by_identity`)."""
    parts = excess_rank_by_identity(first_rank, query_labels)
    total = sum(p.excess for p in parts)
    if not total:
        return "Every query ranks a correct palm first."
    top = [p for p in parts[:n] if p.excess]
    return (f"Where the mean rank comes from: mean rank = 1 + Σ(rank − 1) / queries, and Σ(rank − 1) = {total} here. "
            f"The {len(top)} subjects (of {len(parts)}) with the most of it carry "
            f"{top_identity_share(first_rank, query_labels, n):.0%}: "
            + "; ".join(f"{p.identity} ({p.n_queries} queries, mean rank {p.mean_rank:.1f})" for p in top)
            + ". So a split's mean rank mostly says whether such subjects fell into its test set.")


def worst_queries(result: RunResult, n: int = 10, k: int = 5) -> list[dict]:
    """The `n` queries whose first correct palm ranks lowest: query file, its rank, the top-`k`
    gallery files with their scores and whether each is the same subject, and the true palm
    (the best-ranked correct gallery image) with its score."""
    scores = result.score_matrix()
    order = np.argsort(-result.ranks.first_rank, kind="stable")[:n]
    out = []
    for qi in order:
        q, s = result.queries[qi], scores[qi]
        top = np.argsort(-s, kind="stable")[:k]
        same = [gi for gi, g in enumerate(result.gallery) if g.identity == q.identity]
        true = max(same, key=lambda gi: s[gi]) if same else None
        out.append({"query": q.path.name, "subject": q.identity, "rank": int(result.ranks.first_rank[qi]),
                    "top": [{"file": result.gallery[gi].path.name, "score": float(s[gi]),
                             "same": result.gallery[gi].identity == q.identity} for gi in top],
                    "true_palm": None if true is None else {"file": result.gallery[true].path.name,
                                                            "score": float(s[true])}})
    return out


def plot_worst_queries(result: RunResult, path: Path, n: int = 10, k: int = 5, tile: int = 96) -> Path:
    """Rows of [dorsal query | top-k palms | the true palm]; green = same subject, red = not;
    each tile is labelled with its cosine-based score (higher = more alike)."""
    from PIL import Image, ImageDraw, ImageOps

    from biomatch.data.images import load_image

    records = worst_queries(result, n, k)
    by_name = {g.path.name: g for g in result.gallery}
    pad, label_h = 6, 28
    width = (k + 2) * (tile + pad) + 4 * pad
    canvas = Image.new("RGB", (width, max(1, len(records)) * (tile + label_h + pad) + pad + 18), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), f"{result.method}, seed {result.seed}: query | top-{k} palms | true palm "
                        "(score = similarity, higher = more alike)", fill="black")
    q_by_name = {q.path.name: q for q in result.queries}
    for row, rec in enumerate(records):
        y = 18 + pad + row * (tile + label_h + pad)
        canvas.paste(load_image(q_by_name[rec["query"]].path).resize((tile, tile)), (pad, y))
        draw.text((pad, y + tile + 2), f"query rank {rec['rank']}", fill="black")
        draw.text((pad, y + tile + 14), f"subj {rec['subject']}", fill="black")
        cells = [(t["file"], t["score"], t["same"], f"#{j + 1}") for j, t in enumerate(rec["top"])]
        if rec["true_palm"]:
            cells.append((rec["true_palm"]["file"], rec["true_palm"]["score"], True, f"true #{rec['rank']}"))
        for col, (name, score, same, label) in enumerate(cells, start=1):
            x = pad * (3 if col <= k else 5) + col * (tile + pad)
            framed = ImageOps.expand(load_image(by_name[name].path).resize((tile - 8, tile - 8)), border=4,
                                     fill=(0, 160, 0) if same else (200, 0, 0))
            canvas.paste(framed, (x, y))
            draw.text((x, y + tile + 2), f"{label} s={score:.2f}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def plot_subject_sessions(samples: Sequence[Sample], identity: str, path: Path, tile: int = 88) -> Path:
    """One row per capture session of one subject (biomatch.hands.sessions), its photos in
    number order, each labelled with file number and view: shows what a cross-session query
    must bridge (lighting, accessories, which views were taken)."""
    from PIL import Image, ImageDraw

    from biomatch.data.images import load_image
    from biomatch.hands.sessions import capture_sessions, image_number

    mine = sorted((s for s in samples if s.identity == identity), key=lambda s: image_number(s.path))
    if not mine:
        raise ValueError(f"no images of subject {identity!r}")
    sessions = capture_sessions(mine)
    rows = [[s for s in mine if sessions[s.path] == k] for k in range(max(sessions.values()) + 1)]
    pad, label_h, head = 4, 26, 18
    width = max(len(r) for r in rows) * (tile + pad) + pad
    canvas = Image.new("RGB", (width, head + len(rows) * (tile + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), f"subject {identity}: one row per capture session", fill="black")
    for k, row in enumerate(rows):
        y = head + k * (tile + label_h + pad)
        for j, s in enumerate(row):
            x = pad + j * (tile + pad)
            canvas.paste(load_image(s.path).resize((tile, tile)), (x, y))
            draw.text((x, y + tile + 1), f"#{image_number(s.path)}", fill="black")
            draw.text((x, y + tile + 12), f"s{k} {s.view}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


COLUMN_HELP = {
    "method": "configs/<method>.yaml",
    "seed": "split seed (subject-disjoint train/val/test split)",
    "queries": "dorsal test images (one query each)",
    "gallery": "palmar test images searched for each query",
    "recall@1": "share of queries whose best-scoring palm is the same person (= CMC@1)",
    "recall@5": "share of queries with a same-person palm among the 5 best",
    "recall@10": "share with a same-person palm among the 10 best",
    "mean_rank": "mean over queries of the 1-based rank of the first same-person palm (ties counted against us)",
    "median_rank": "median of that rank",
    "map": "mean average precision: per query, the precision at each same-person palm's rank, averaged over "
           "those palms, then over queries (1.0 = all of a person's palms ranked first)",
    "fta": "failure to acquire: share of this split's images where MediaPipe found no hand (they use the "
           "un-aligned path; none is dropped)",
    "R@1 95% CI": "95 % bootstrap interval of recall@1 over queries (500 resamples)",
    "train s": "seconds for training and embedding the test images, backbone features excluded (read from the "
               "cache or computed before; the first method pays for them)",
}


def plot_aligned_examples(split, path: Path, n_subjects: int = 4, tile: int = 112) -> Path | None:
    """For a few test subjects: dorsal photo, its canonical crop and parts mosaic, then the same
    for a palmar photo (middle finger up, palm scale fixed, thumb left: the dorsal/palmar mirror
    undone; in the mosaic every finger straightened, so the finger spread no longer shows)."""
    from PIL import Image, ImageDraw

    from biomatch.data.images import load_image
    from biomatch.hands.landmarks import align_hand, cached_landmarks
    from biomatch.hands.parts import parts_mosaic
    from biomatch.hands.protocol import HandsSplit

    q, g = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
    pairs = []
    for ident in sorted({s.identity for s in q})[:n_subjects]:
        dq = next(s for s in q if s.identity == ident)
        dg = next((s for s in g if s.identity == ident), None)
        if dg is not None:
            pairs.append((dq, dg))
    if not pairs:
        return None
    flat = [s for pair in pairs for s in pair]
    points, ok = cached_landmarks(flat, progress=False)
    pad, label_h, per_view = 6, 14, 3
    canvas = Image.new("RGB", (2 * per_view * (tile + pad) + pad, len(pairs) * (tile + label_h + pad) + pad + 16),
                       "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), "dorsal photo | aligned crop | parts mosaic | palmar photo | aligned crop | parts mosaic",
              fill="black")
    for row, (a, b) in enumerate(pairs):
        y = 16 + pad + row * (tile + label_h + pad)
        for col, (s, pts, found) in enumerate(((a, points[2 * row], ok[2 * row]), (b, points[2 * row + 1], ok[2 * row + 1]))):
            img = load_image(s.path)
            x = pad + per_view * col * (tile + pad)
            views = (img, align_hand(img, pts if found else None), parts_mosaic(img, pts if found else None))
            labels = (f"{s.view} {s.side}", "aligned" if found else "no hand: unaligned",
                      "parts" if found else "no hand: photo")
            for k, (view, label) in enumerate(zip(views, labels)):
                canvas.paste(view.resize((tile, tile)), (x + k * (tile + pad), y))
                draw.text((x + k * (tile + pad), y + tile + 1), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_hands_report(results: Sequence[RunResult], out_dir: Path, title: str = "biomatch: dorsal → palmar",
                       notes: str = "", run_info: dict | None = None, split=None) -> Path:
    """Write report.md, report.html and the PNGs they show; return the HTML path. `run_info`
    (command, commit, packages, load during the run, seconds) is printed in a "Run" section;
    with `split`, a figure of landmark-aligned crops of a few test subjects is added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_info = run_info or {}
    rows = []
    for r in results:
        ci = bootstrap_ci(r.ranks, n_boot=500, seed=r.seed)["recall@1"]
        fta = r.metrics.get("fta_rate")
        rows.append([r.method, r.seed, len(r.queries), len(r.gallery)]
                    + [r.metrics[c] for c in COLUMNS] + ["–" if fta is None else f"{fta:.3f}",
                                                         f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                                                         f"{r.timing.get('train_s', 0):.1f}"])
    header = ["method", "seed", "queries", "gallery", *COLUMNS, "fta", "R@1 95% CI", "train s"]
    table = markdown_table(header, rows)
    legend = "\n".join(f"- **{h}**: {COLUMN_HELP[h]}" for h in header if h in COLUMN_HELP)
    cmc = plot_cmc({r.method: r.ranks.first_rank for r in results}, out_dir / "cmc.png",
                   chance_gallery=len({s.identity for s in results[0].gallery}))
    curves = plot_training_curves({r.method: r.history for r in results}, out_dir / "training_curves.png")
    best = max(results, key=lambda r: r.metrics["recall@1"])
    own_scores = best.scores is not None  # geometry / gallery normalization: rank by the method's own scores
    strip = retrieval_strip(best.queries, best.gallery, best.query_emb, best.gallery_emb,
                            out_dir / "retrieval_examples.png", seed=best.seed,
                            score_matrix=best.score_matrix(),
                            score_name="the method's score" if own_scores else "cosine similarity")
    worst = plot_worst_queries(best, out_dir / "worst_queries.png")
    hist = {r.method: rank_histogram(r.ranks.first_rank) for r in results}
    bins = list(next(iter(hist.values())))
    hist_table = markdown_table(["method", *[f"rank {b}" for b in bins]], [[m, *h.values()] for m, h in hist.items()])
    excess = f"{best.method}: " + excess_sentence(best.ranks.first_rank, [q.identity for q in best.queries])
    aligned = plot_aligned_examples(split, out_dir / "aligned_crops.png") if split is not None else None
    budgets = run_info.get("budgets", {})
    load = run_info.get("load_during_run")
    run_lines = []
    if run_info:
        run_lines = [f"- command: `{run_info.get('command', '')}`", f"- commit: {run_info.get('commit', '')}",
                     "- packages: " + ", ".join(f"{k} {v}" for k, v in run_info.get("packages", {}).items()),
                     f"- machine: {run_info.get('machine', machine_description())}",
                     f"- feature/landmark cache: {run_info.get('cache', '')}"]
        if "feature_runtime" in run_info:
            run_lines.append(f"- frozen backbone features computed with: {run_info['feature_runtime']}")
        if load:
            run_lines.append(f"- 1-min load average during the run ({load['n']} samples, every 5 s): min "
                             f"{load['min']:.1f}, mean {load['mean']:.1f}, max {load['max']:.1f}")
        if "seconds_before_report" in run_info:
            run_lines.append(f"- wall clock until the report: {run_info['seconds_before_report']:.0f} s")
        run_lines += [f"- {k}: {v}" for k, v in budgets.items()]
    strip_caption = ("Each row: a dorsal query, then the top-5 palmar images by "
                     + ("the method's final score (the number under each, higher = more alike; the ranking the "
                        "results table measures)" if own_scores else
                        "the cosine similarity of the embeddings (the number under each, higher = more alike)")
                     + "; green = same person, red = someone else.")
    worst_caption = ("The 10 queries whose first correct palm ranks lowest: query, top-5 palms and the true palm "
                     "(its rank under the picture). They show why the mean rank lags recall@1: a few queries far "
                     "down the list (different lighting, sleeves, failed landmarks) weigh on the mean.")
    footnote = ("Ranks are 1-based ranks of the first correct palmar image (ties counted against us); "
                "CI = 95 % bootstrap over queries. One split only — seed-to-seed spread is ±0.05 R@1 "
                "(BENCHMARKS.md). " + (f"The best method ({run_info['best']}) trains on train + val for a fixed "
                                       "budget (no validation curve; its training loss is shown)." if
                                       run_info.get("best") else "")
                + "".join(f" {r.method} re-ranks each query with its mutual nearest test queries (a separate "
                          f"protocol: a query's ranking reads the other test queries, never their labels); the same "
                          f"run without that step: R@1 {r.metrics['single_query:recall@1']:.3f}, mean rank "
                          f"{r.metrics['single_query:mean_rank']:.2f}." for r in results
                          if "single_query:recall@1" in r.metrics))
    md_parts = [
        f"# {title}", notes or "", f"Machine: {machine_description()}.", "## Results", table, footnote,
        "Columns:\n" + legend,
        "## Where the first correct palm lands (queries per rank)", hist_table, excess,
        "## CMC", f"![CMC]({cmc.name})", "## Training", f"![curves]({curves.name})",
        f"## Retrieval examples ({best.method})", strip_caption, f"![examples]({strip.name})",
        f"## 10 worst queries ({best.method})", worst_caption, f"![worst]({worst.name})",
    ]
    if aligned is not None:
        md_parts += ["## Landmark-aligned crops and parts mosaics",
                     ("MediaPipe hand landmarks → rotate so the middle finger points up, scale by palm length, crop; "
                      "palmar images are mirrored where needed so the thumb is always on the left (the "
                      "dorsal/palmar mirror undone). The parts mosaic cuts every finger along its own axis "
                      "(upright, thumb … little finger) above the palm centre, so the finger spread no longer "
                      "shows."), f"![aligned]({aligned.name})"]
    if run_lines:
        md_parts += ["## Run", "\n".join(run_lines)]
    (out_dir / "report.md").write_text("\n\n".join(md_parts) + "\n")
    esc = html.escape

    def cells(row, tag="td"):
        return "".join(f"<{tag}>{esc(_fmt(v))}</{tag}>" for v in row)

    html_rows = "".join(f"<tr>{cells(row)}</tr>" for row in rows)
    hist_rows = "".join(f"<tr>{cells([m, *h.values()])}</tr>" for m, h in hist.items())
    legend_html = "".join(f"<li><b>{esc(h)}</b>: {esc(COLUMN_HELP[h])}</li>" for h in header if h in COLUMN_HELP)
    aligned_html = (f"<h2>Landmark-aligned crops and parts mosaics</h2><p>MediaPipe hand landmarks → middle finger "
                    f"up, palm scale fixed, thumb on the left (the dorsal/palmar mirror undone); the parts mosaic "
                    f"straightens every finger (thumb … little finger) above the palm centre, so the finger spread "
                    f"no longer shows.</p><img src=\"{aligned.name}\">" if aligned is not None else "")
    run_html = ("<h2>Run</h2><ul>" + "".join(f"<li>{esc(line[2:])}</li>" for line in run_lines) + "</ul>"
                if run_lines else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{esc(title)}</h1><p>{esc(notes)}</p><p>Machine: {esc(machine_description())}</p>
<h2>Results</h2><table><tr>{cells(header, "th")}</tr>{html_rows}</table><p>{esc(footnote)}</p>
<p>Columns:</p><ul>{legend_html}</ul>
<h2>Where the first correct palm lands (queries per rank)</h2>
<table><tr>{cells(["method", *[f"rank {b}" for b in bins]], "th")}</tr>{hist_rows}</table><p>{esc(excess)}</p>
<h2>CMC</h2><img src="{cmc.name}"><h2>Training</h2><img src="{curves.name}">
<h2>Retrieval examples ({esc(best.method)})</h2><p>{esc(strip_caption)}</p><img src="{strip.name}">
<h2>10 worst queries ({esc(best.method)})</h2><p>{esc(worst_caption)}</p><img src="{worst.name}">
{aligned_html}{run_html}</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
