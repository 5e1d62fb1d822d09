"""The hand-matching report: a results table, CMC curve, training curves and retrieval pictures,
written as Markdown and HTML side by side in one folder."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from biomatch.hands.methods import RunResult
from biomatch.metrics.retrieval import bootstrap_ci
from biomatch.results import machine_description, markdown_table
from biomatch.viz.retrieval_plots import plot_cmc, plot_training_curves, retrieval_strip

COLUMNS = ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank", "map")


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
