"""The hand-matching report: a results table, CMC curve, training curves and retrieval pictures,
written as Markdown and HTML side by side in one folder."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biomatch.hands.methods import RunResult
from biomatch.metrics.retrieval import bootstrap_ci
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


def write_hands_report(results: Sequence[RunResult], out_dir: Path, title: str = "biomatch: dorsal → palmar",
                       notes: str = "") -> Path:
    """Write report.md, report.html and the PNGs they show; return the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        ci = bootstrap_ci(r.ranks, n_boot=500, seed=r.seed)["recall@1"]
        rows.append([r.method, r.seed, len(r.queries), len(r.gallery)]
                    + [r.metrics[c] for c in COLUMNS] + [f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                                                         f"{r.timing.get('train_s', 0):.1f}"])
    header = ["method", "seed", "queries", "gallery", *COLUMNS, "R@1 95% CI", "train s"]
    table = markdown_table(header, rows)
    cmc = plot_cmc({r.method: r.ranks.first_rank for r in results}, out_dir / "cmc.png",
                   chance_gallery=len({s.identity for s in results[0].gallery}))
    curves = plot_training_curves({r.method: r.history for r in results}, out_dir / "training_curves.png")
    best = max(results, key=lambda r: r.metrics["recall@1"])
    strip = retrieval_strip(best.queries, best.gallery, best.query_emb, best.gallery_emb,
                            out_dir / "retrieval_examples.png", seed=best.seed)
    md = "\n\n".join([
        f"# {title}", notes or "", f"Machine: {machine_description()}.", "## Results", table,
        "Ranks are 1-based ranks of the first correct palmar image (ties counted against us); "
        "CI = 95 % bootstrap over queries.",
        "## CMC", f"![CMC]({cmc.name})", "## Training", f"![curves]({curves.name})",
        f"## Retrieval examples ({best.method})",
        "Each row: a dorsal query, then the top-5 palmar images; green = same person, red = someone else.",
        f"![examples]({strip.name})",
    ])
    (out_dir / "report.md").write_text(md + "\n")
    html_rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p><p>Machine: {html.escape(machine_description())}</p>
<h2>Results</h2><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr>{html_rows}</table>
<h2>CMC</h2><img src="{cmc.name}"><h2>Training</h2><img src="{curves.name}">
<h2>Retrieval examples ({html.escape(best.method)})</h2>
<p>Each row: a dorsal query, then the top-5 palmar images; green = same person, red = someone else.</p>
<img src="{strip.name}"></body></html>"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
