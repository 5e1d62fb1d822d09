"""CLI commands for verification: evaluate score files, plot them, run the palmprint protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}"


def evaluate_scores(
    file: Annotated[Path, typer.Argument(help="score file: one 'score label' pair per line (label 1 genuine, 0/-1 impostor)")],
    distances: Annotated[bool, typer.Option("--distances", help="scores are distances (lower = same), as CCNet writes")] = False,
    plots: Annotated[Optional[Path], typer.Option(help="folder for histogram / ROC / DET PNGs")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the EER 95% CI (0 = none)")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
) -> None:
    """Print EER (with bootstrap CI), TAR@FAR and d' of a score file from any system."""
    from rich.console import Console
    from rich.table import Table

    from biomatch.metrics.score_files import read_score_file
    from biomatch.metrics.verification import validate_pairs, verification_report

    scores, labels = read_score_file(file, distances=distances)
    validate_pairs(scores, labels)  # both classes present, else a clear InputError
    report = verification_report(scores, labels, n_boot=n_boot, seed=seed)
    table = Table(title=f"{file.name}: {report['n_genuine']} genuine / {report['n_impostor']} impostor pairs")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, _fmt(value))
    Console().print(table)
    if plots is not None:
        _write_plots({file.stem: (scores, labels)}, plots, file.stem)


def _write_plots(curves, folder: Path, prefix: str) -> None:
    """Histograms, ROC and DET of the named (scores, labels) sets; print each file written."""
    from rich.console import Console

    from biomatch.viz.verification_plots import plot_det, plot_histograms, plot_roc

    for draw, kind in ((plot_histograms, "hist"), (plot_roc, "roc"), (plot_det, "det")):
        Console().print(f"wrote {draw(curves, folder / f'{prefix}_{kind}.png')}", markup=False)


def plot(
    files: Annotated[list[Path], typer.Argument(help="one or more score files to compare (e.g. plain and RSM)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("plots"),
    distances: Annotated[bool, typer.Option("--distances", help="scores are distances (lower = same)")] = False,
    prefix: Annotated[str, typer.Option(help="file name prefix")] = "scores",
) -> None:
    """Write genuine/impostor histograms, ROC and DET curves comparing score files."""
    from biomatch.errors import InputError
    from biomatch.metrics.score_files import read_score_file

    curves = {f.stem: read_score_file(f, distances=distances) for f in files}
    if len(curves) != len(files):
        raise InputError("score files must have distinct names (they label the curves)")
    _write_plots(curves, out, prefix)


def palmprint(
    dataset: Annotated[str, typer.Option(help="tongji, polyu or tongji_full (600 palms)")] = "tongji",
    root: Annotated[Optional[Path], typer.Option(
        help="your own ROIs instead of --dataset: DIR/<palm>/<session>_<n>.<ext> (session 1 = enrol, 2 = test), "
        "or a CSV (or DIR/palms.csv) with columns path,palm,session")] = None,
    matcher: Annotated[str, typer.Option(help="compcode, compcode-noshift, palmnet or compnet")] = "compcode",
    pairs: Annotated[str, typer.Option(help="all-vs-all or test-vs-enrolled")] = "all-vs-all",
    m: Annotated[int, typer.Option(help="RSM references (0 = all session-1 images)")] = 30,
    alpha: Annotated[float, typer.Option(help="RSM weight of the direct dissimilarity")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the reference draw and of training")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="folder for score files and plots")] = None,
    allow_training_refs: Annotated[bool, typer.Option(
        "--allow-training-refs", help="let a trained matcher (palmnet, compnet) use its session-1 training images as RSM references")] = False,
) -> None:
    """Palmprint verification (session 1 enrol / session 2 test) with and without RSM."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from biomatch.errors import InputError
    from biomatch.matching.rsm import RSM
    from biomatch.metrics.verification import verification_report
    from biomatch.palmprint.protocol import PAIR_SETS, compute_session_scores, make_matcher

    if pairs not in PAIR_SETS:
        raise InputError(f"--pairs must be one of {list(PAIR_SETS)}, got {pairs!r}")
    if m < 0:
        raise InputError(f"--m must be >= 0 (0 = all references), got {m}")
    torch.set_num_threads(1)
    samples = None
    if root is not None:
        from biomatch.palmprint.data import load_layout

        samples, dataset = load_layout(root), root.name
    ss = compute_session_scores(make_matcher(matcher, seed), dataset, samples=samples, allow_training_refs=allow_training_refs)
    rsm = RSM(m=m or None, alpha=alpha, seed=seed)
    plain, labels = ss.scores(pairs)  # type: ignore[arg-type]
    rescored, _ = ss.scores(pairs, rsm)  # type: ignore[arg-type]
    reports = {"plain": verification_report(plain, labels), "RSM": verification_report(rescored, labels)}
    table = Table(title=f"{ss.matcher} on {dataset}, {pairs} (RSM M={m or 'all'}, alpha={alpha:g}, seed={seed})")
    table.add_column("metric")
    for name in reports:
        table.add_column(name, justify="right")
    for key in reports["plain"]:
        table.add_row(key, *(_fmt(r[key]) for r in reports.values()))
    console = Console()
    console.print(table)
    if out is not None:
        from biomatch.metrics.score_files import write_score_file
        from biomatch.palmprint.report import write_plots

        prefix = f"{dataset}_{matcher}_{pairs}"
        write_score_file(out / f"{prefix}_plain.txt", plain, labels)
        write_score_file(out / f"{prefix}_rsm.txt", rescored, labels)
        for path in write_plots(ss, pairs, rsm, out, prefix):  # type: ignore[arg-type]
            console.print(f"wrote {path}", markup=False)
        console.print(f"wrote score files {out / (prefix + '_plain.txt')} and {out / (prefix + '_rsm.txt')}",
                      markup=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("evaluate-scores")(evaluate_scores)
    app.command("plot")(plot)
    app.command("palmprint")(palmprint)
